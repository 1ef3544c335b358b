"""Decompression bombs, and a batch run over them in its own process (for its peak memory).

``python -m tests.reliability.bombs IMAGES_JSON STORAGE``: runs ``batch_edit`` over the images
listed in the JSON file against the Prefect server of ``PREFECT_API_URL`` and the key and base URL
of ``GPT_IMAGE_API_KEY`` / ``GPT_IMAGE_BASE_URL``, and prints each row's status and error as JSON.
``python -m tests.reliability.bombs --measure ...`` runs that as its only child process and prints
the child's peak resident memory (``ru_maxrss`` of ``RUSAGE_CHILDREN``, in KiB) on the last line.
"""

from __future__ import annotations

import json
import resource
import struct
import subprocess
import sys
import zlib
from pathlib import Path

ROW_BLOCK = 64
"""Rows compressed per ``compressobj`` call: the bomb never exists uncompressed in memory."""


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def write_png_bomb(path: Path, width: int, height: int, *, color_type: int, bit_depth: int) -> int:
    """A valid PNG of ``width`` x ``height`` zero pixels at ``path``, its IDAT streamed through
    ``zlib.compressobj`` block by block (a few hundred KB on disk, whatever it decodes into);
    its size in bytes. ``color_type`` 0 is grayscale, 6 RGBA."""
    channels = {0: 1, 2: 3, 6: 4}[color_type]
    row = b"\x00" * (1 + (width * channels * bit_depth + 7) // 8)  # filter byte + the row's bytes
    compressor = zlib.compressobj(9)
    with path.open("wb") as out:
        out.write(b"\x89PNG\r\n\x1a\n")
        out.write(_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)))
        done = 0
        while done < height:
            rows = min(ROW_BLOCK, height - done)
            piece = compressor.compress(row * rows)
            if piece:
                out.write(_chunk(b"IDAT", piece))
            done += rows
        out.write(_chunk(b"IDAT", compressor.flush()))
        out.write(_chunk(b"IEND", b""))
    return path.stat().st_size


def measure(argv: list[str]) -> int:
    """Run the batch as this process's only child; print its output, then its peak RSS (KiB)."""
    child = subprocess.run(
        [sys.executable, "-m", "tests.reliability.bombs", *argv], capture_output=True, text=True, check=False
    )
    sys.stdout.write(child.stdout)
    sys.stderr.write(child.stderr)
    print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    return child.returncode


def main(argv: list[str]) -> int:
    if argv and argv[0] == "--measure":
        return measure(argv[1:])
    images_file, storage = argv
    from prefect_gpt_image.flows import ChainResult, batch_edit

    images = json.loads(Path(images_file).read_text())
    state = batch_edit(images=images, prompt="frame it", storage=storage, return_state=True)
    result: ChainResult = state.result(raise_on_failure=False)  # type: ignore[assignment]
    rows = {s.row: {"status": s.status, "error": s.error, "source": s.source} for s in result.steps}
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
