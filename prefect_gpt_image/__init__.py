"""prefect-gpt-image: Prefect 3 tasks, flows and blocks for the gpt-image-2 Images API.

Names are loaded lazily, so ``import prefect_gpt_image.api`` (the HTTP client) does not import
Prefect, while ``prefect block register -m prefect_gpt_image`` still finds every block.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY: dict[str, str] = {
    "AsyncImagesClient": "prefect_gpt_image.api",
    "ImagesClient": "prefect_gpt_image.api",
    "GptImageCredentials": "prefect_gpt_image.blocks",
    "GptImageSettings": "prefect_gpt_image.blocks",
    "GptImageStorage": "prefect_gpt_image.blocks",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'prefect_gpt_image' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
