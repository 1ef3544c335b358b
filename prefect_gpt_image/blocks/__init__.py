"""Prefect blocks: the API key (:class:`GptImageCredentials`), shared model defaults and policy
(:class:`GptImageSettings`) and where images go (:class:`GptImageStorage`).

Register them on a Prefect server with ``prefect block register -m prefect_gpt_image.blocks``
(a fresh server also finds them through the ``prefect.collections`` entry point).
"""

from .credentials import GptImageCredentials
from .settings import GptImageSettings
from .storage import GptImageStorage

__all__ = ["GptImageCredentials", "GptImageSettings", "GptImageStorage"]
