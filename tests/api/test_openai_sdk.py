"""The official ``openai`` SDK (max_retries=0), used as a client, works against the sandbox."""

from __future__ import annotations

import base64
import io
from typing import Any

import httpx
import openai
import pytest

from tests.support.images import decode, mask_bytes, png_bytes
from tests.support.sandbox import billed_images, sandbox_requests


@pytest.fixture
def sdk(make_sandbox: Any) -> Any:
    sandbox = make_sandbox()
    client = openai.OpenAI(api_key="sk-sdk-test", base_url=sandbox.base_url, max_retries=0)
    yield sandbox, client
    client.close()


def test_sdk_generate(sdk: Any) -> None:
    sandbox, client = sdk
    response = client.images.generate(
        model="gpt-image-2", prompt="a red square", size="1024x1024", quality="low"
    )
    url = response.data[0].url
    assert url and url.startswith(sandbox.url)
    assert decode(httpx.get(url).content).size == (1024, 1024)
    assert response.size == "1024x1024" and response.usage is not None
    assert billed_images(sandbox) == 1


def test_sdk_edit_with_image_list_and_mask(sdk: Any) -> None:
    sandbox, client = sdk
    base = io.BytesIO(png_bytes((1024, 1024), "white"))
    base.name = "base.png"
    ref = io.BytesIO(png_bytes((1024, 1024), "orange"))
    ref.name = "ref.png"
    mask = io.BytesIO(mask_bytes((1024, 1024), (0, 0, 512, 512)))
    mask.name = "mask.png"
    response = client.images.edit(
        model="gpt-image-2", image=[base, ref], mask=mask, prompt="add a sun", size="1024x1024"
    )
    assert decode(httpx.get(response.data[0].url).content).size == (1024, 1024)
    files = sandbox_requests(sandbox)[0]["files"]
    assert [f["field"] for f in files] == ["image[]", "image[]", "mask"]


def test_sdk_stream(sdk: Any) -> None:
    sandbox, client = sdk
    stream = client.images.generate(
        model="gpt-image-2", prompt="a blue icon", size="1024x1024", stream=True, partial_images=2
    )
    events = list(stream)
    assert [e.type for e in events] == [
        "image_generation.partial_image",
        "image_generation.partial_image",
        "image_generation.completed",
    ]
    assert [e.partial_image_index for e in events[:2]] == [0, 1]
    final = decode(base64.b64decode(events[-1].b64_json))
    assert final.size == (1024, 1024)
    assert billed_images(sandbox) == 1


def test_sdk_sees_vendor_errors(sdk: Any) -> None:
    sandbox, client = sdk
    with pytest.raises(openai.BadRequestError) as info:
        client.images.generate(model="gpt-image-2", prompt="x", size="1000x1000")
    assert "request id:" in str(info.value)
    sandbox.script_faults(["429"])
    with pytest.raises(openai.RateLimitError):
        client.images.generate(model="gpt-image-2", prompt="x")
    assert len(sandbox_requests(sandbox)) == 2  # max_retries=0: no hidden retries
