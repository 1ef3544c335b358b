"""Hostile images: decompression bombs are refused from their headers, before any decoding, as
invalid rows naming the input and the cap; the batch's other rows run, and the process running the
batch stays far below the memory a decoded bomb would take."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from prefect_gpt_image.api.images import MAX_INPUT_PIXELS
from prefect_gpt_image.api.inputpolicy import InputPolicy
from prefect_gpt_image.calls.inputs import read_input
from prefect_gpt_image.storage import LocalImageStore
from prefect_gpt_image.tasks import InputImageError
from tests.support.images import png_bytes
from tests.support.sandbox import billed_images, sandbox_requests

from .bombs import write_png_bomb

REPO_ROOT = Path(__file__).resolve().parents[2]
PEAK_LIMIT_MB = 400
"""Most memory the batch process may reach: decoding the 13000x13000 bomb alone takes 676 MB."""


@pytest.fixture(scope="module")
def bombs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A 30000x30000 1-bit PNG (900 million pixels) and a 13000x13000 RGBA one (676 MB decoded,
    under Pillow's own bomb limit)."""
    folder = tmp_path_factory.mktemp("bombs")
    huge, wide = folder / "huge.png", folder / "rgba.png"
    assert write_png_bomb(huge, 30000, 30000, color_type=0, bit_depth=1) < 400_000
    assert write_png_bomb(wide, 13000, 13000, color_type=6, bit_depth=8) < 1_000_000
    return {"huge": huge, "rgba": wide}


def test_the_bombs_are_real(bombs: dict[str, Path]) -> None:
    """Pillow reads the 13000x13000 header without complaint: decoding it would take 676 MB."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with Image.open(bombs["rgba"]) as img:
            assert img.size == (13000, 13000) and img.mode == "RGBA"
            assert img.size[0] * img.size[1] * 4 > 600_000_000
    assert 13000 * 13000 < 2 * Image.MAX_IMAGE_PIXELS  # under Pillow's limit: it would decode it


@pytest.mark.parametrize("name", ["huge", "rgba"])
def test_a_bomb_is_refused_from_its_header(name: str, bombs: dict[str, Path], tmp_path: Path) -> None:
    store = LocalImageStore(tmp_path / "store")
    with pytest.raises(InputImageError) as refused:
        read_input(str(bombs[name]), store, what="images[3]", policy=InputPolicy.build(environ={}))
    message = str(refused.value)
    assert message.startswith("images[3]: ") and f"{MAX_INPUT_PIXELS:,} pixels" in message
    assert "refused without decoding it" in message


def test_a_batch_over_bombs_refuses_them_and_stays_small(
    bombs: dict[str, Path], prefect_env: Path, make_sandbox: Any, tmp_path: Path
) -> None:
    sandbox = make_sandbox()
    good = []
    for colour in ("red", "blue"):
        path = tmp_path / f"{colour}.png"
        path.write_bytes(png_bytes((64, 64), colour))
        good.append(str(path))
    images = [str(bombs["huge"]), good[0], str(bombs["rgba"]), good[1]]
    images_file = tmp_path / "images.json"
    images_file.write_text(json.dumps(images))
    env = {**os.environ, "GPT_IMAGE_API_KEY": "sk-bombs", "GPT_IMAGE_BASE_URL": sandbox.base_url}
    child = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.reliability.bombs",
            "--measure",
            str(images_file),
            str(tmp_path / "store"),
        ],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert child.returncode == 0, child.stderr[-3000:]
    lines = child.stdout.strip().splitlines()
    rows = json.loads(lines[-2])
    peak_mb = int(lines[-1]) / 1024
    assert peak_mb < PEAK_LIMIT_MB, f"the batch process peaked at {peak_mb:.0f} MB"
    assert rows["1"]["status"] == rows["3"]["status"] == "invalid"
    for row, side in (("1", "30000x30000"), ("3", "13000x13000")):
        assert side in rows[row]["error"] and f"{MAX_INPUT_PIXELS:,} pixels" in rows[row]["error"]
    assert rows["2"]["status"] == rows["4"]["status"] == "stored"
    assert len(sandbox_requests(sandbox)) == 2 and billed_images(sandbox) == 2


def _jpeg_declaring(width: int, height: int) -> bytes:
    """A small real JPEG whose frame header (SOF0) is patched to declare ``width`` x ``height``."""
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), "red").save(buf, "JPEG")
    data = bytearray(buf.getvalue())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    return bytes(data)


def _webp_declaring(width: int, height: int) -> bytes:
    """A small real lossless WebP whose VP8L header is patched to declare ``width`` x ``height``."""
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), "red").save(buf, "WEBP", lossless=True)
    data = bytearray(buf.getvalue())
    assert data[12:16] == b"VP8L"
    bits = int.from_bytes(data[21:25], "little") & ~((1 << 28) - 1)
    data[21:25] = (bits | (width - 1) | ((height - 1) << 14)).to_bytes(4, "little")
    return bytes(data)


@pytest.mark.parametrize(
    ("data", "side"),
    [
        (_jpeg_declaring(12000, 12000), "12000x12000"),  # 144 Mpx: Pillow would decode it (432 MB)
        (_webp_declaring(16000, 16000), "16000x16000"),
    ],
    ids=["jpeg", "webp"],
)
def test_jpeg_and_webp_headers_are_checked_before_decoding(data: bytes, side: str, tmp_path: Path) -> None:
    store = LocalImageStore(tmp_path / "store")
    with pytest.raises(InputImageError) as refused:
        read_input(data, store, what="mask", policy=InputPolicy.build(environ={}))
    assert str(refused.value).startswith("mask: ") and f"declares {side}" in str(refused.value)
