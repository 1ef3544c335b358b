"""The API key block: who pays for images, and where the API lives."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prefect.blocks.abstract import CredentialsBlock
from pydantic import Field, SecretStr, field_validator

from prefect_gpt_image.api import DEFAULT_BASE_URL, AsyncImagesClient, ClientConfig, ImagesClient
from prefect_gpt_image.api.config import check_key_transport, normalize_base_url

from ._meta import DOCUMENTATION_URL, LOGO_URL

if TYPE_CHECKING:
    from .settings import GptImageSettings

__all__ = ["GptImageCredentials"]


class GptImageCredentials(CredentialsBlock):
    """The gpt-image-2 API key and base URL, stored as a Prefect block.

    The key is a ``SecretStr``: the Prefect UI and API mask it, its ``repr`` never shows it, and
    nothing in this package writes it to a log, an artifact, a cache record or a manifest.
    The block pairs its key with its base URL explicitly: the key goes to that URL only (the
    gateway unless changed; for an OpenAI key set OpenAI's ``https://api.openai.com/v1``), and
    never over plain http to a host that is not loopback.

    Example:
        Save once, then load in any flow::

            from prefect_gpt_image.blocks import GptImageCredentials

            GptImageCredentials(api_key="sk-...").save("gpt-image")

            credentials = GptImageCredentials.load("gpt-image")
            with credentials.get_client() as client:
                images = client.generate("a lighthouse at dawn", size="1024x1024")
    """

    _block_type_name = "GPT Image Credentials"
    _logo_url = LOGO_URL  # type: ignore[assignment]
    _documentation_url = DOCUMENTATION_URL  # type: ignore[assignment]
    _description = (
        "API key and base URL for the gpt-image-2 Images API (Crazyrouter or any OpenAI-compatible gateway)."
    )

    api_key: SecretStr = Field(
        description="The API key, sent as 'Authorization: Bearer <key>'. Usually starts with 'sk-'.",
        title="API key",
    )
    base_url: str = Field(
        default=DEFAULT_BASE_URL,
        description="The API's base URL, ending in /v1, where this key (and only this key) is sent: "
        "the gateway by default; https://api.openai.com/v1 for an OpenAI key. https only, "
        "but for a local server (127.0.0.1, ::1, localhost).",
        title="Base URL",
    )

    @field_validator("base_url")
    @classmethod
    def _check_base_url(cls, value: str) -> str:
        url = normalize_base_url(value)
        check_key_transport(url)
        return url

    def client_config(self, settings: GptImageSettings | None = None) -> ClientConfig:
        """The API client's configuration: this key and base URL, with the timeouts, retry
        policy and media hosts of ``settings`` (defaults when None)."""
        config = ClientConfig(api_key=self.api_key, base_url=self.base_url)
        if settings is None:
            from .settings import GptImageSettings

            settings = GptImageSettings()
        return settings.configure(config)

    def get_client(self, settings: GptImageSettings | None = None) -> ImagesClient:
        """A synchronous client (close it, or use it in a ``with`` block)."""
        return ImagesClient(config=self.client_config(settings))

    def get_async_client(self, settings: GptImageSettings | None = None) -> AsyncImagesClient:
        """An asynchronous client (close it with ``await client.aclose()`` or ``async with``)."""
        return AsyncImagesClient(config=self.client_config(settings))
