"""The README's first command: ``prefect-gpt-image demo`` runs end to end offline."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from prefect_gpt_image.sandbox import SandboxConfig
from prefect_gpt_image.storage import LocalImageStore
from prefect_gpt_image.tasks import read_manifest


def run_demo(tmp_path: Path, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "GPT_IMAGE_", "AWS_"))}
    env.update({"DO_NOT_TRACK": "1", "HOME": str(tmp_path)})
    cli = Path(sys.executable).with_name("prefect-gpt-image")
    done = subprocess.run(
        [str(cli), "demo", *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


@pytest.mark.parametrize("storage", ["local", "s3"])
def test_demo_runs_offline(tmp_path: Path, storage: str) -> None:
    out = run_demo(tmp_path, *(["--s3"] if storage == "s3" else []))
    assert "pipeline (generate → mask edit → reference blend):" in out
    assert "batch of 4 prompts, first run: 4 of 4 rows stored" in out and "paid calls: 4" in out
    assert "rerun (cached): 4 of 4 rows stored" in out and "paid calls: 0" in out
    assert "batch edit of 4 images, plan: 4 call(s) to make for 4 image(s)" in out
    assert "4 of 4 rows stored (4 step(s) made, 0 found in the store" in out
    assert "batch pipeline of 2 rows x 2 steps, plan: 4 call(s) to make" in out
    assert "first run: 2 of 2 rows stored" in out and "rerun (cached): 2 of 2 rows stored" in out
    assert out.count("paid calls: 0") == 2
    # What the demo says the images would have cost is what the sandbox charges for 15 (its own
    # price, the contract's), not a figure of the plugin's: a drift of the plugin's price fails.
    would_cost = 15 * SandboxConfig().price_per_image
    assert "15 images billed by the sandbox" in out and f"would have cost ${would_cost:.4f}" in out
    if storage == "local":
        paths = re.findall(r"(/\S+\.png)", out)
        assert len(paths) == 15
        for path in paths:
            assert Path(path).is_relative_to(tmp_path / "gpt-image-output")
            with Image.open(path) as img:
                assert img.size in ((1536, 1024), (1024, 1024))
            store = LocalImageStore(Path(path).parents[1])  # the folder holding images/ and cache/
            manifest = read_manifest(store, Path(path).stem, "png")
            assert manifest is not None and manifest["sha256"] == Path(path).stem
    else:
        assert len(re.findall(r"s3://gpt-image-demo/demo/images/[0-9a-f]{64}\.png", out)) == 15
        assert not (tmp_path / "gpt-image-output").exists()
