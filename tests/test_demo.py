"""The README's first command: ``prefect-gpt-image demo`` runs end to end offline."""

from __future__ import annotations

import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest
from PIL import Image

from prefect_gpt_image.sandbox import SandboxConfig
from prefect_gpt_image.storage import LocalImageStore
from prefect_gpt_image.tasks import read_manifest


def demo_env(tmp_path: Path) -> dict[str, str]:
    """A user's environment: no Prefect, key or AWS settings, DO_NOT_TRACK as the README says."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "GPT_IMAGE_", "AWS_"))}
    env.update({"DO_NOT_TRACK": "1", "HOME": str(tmp_path), "AWS_EC2_METADATA_DISABLED": "true"})
    return env


def run_demo(tmp_path: Path, *args: str) -> str:
    """Run ``prefect-gpt-image demo`` as a user whose own Prefect profile (in ``~/.prefect``)
    names a server: the demo must use neither that server nor that home."""
    cli = Path(sys.executable).with_name("prefect-gpt-image")
    user_home = tmp_path / ".prefect"
    user_home.mkdir(exist_ok=True)
    # The user's server: a port held by this test, never listening (a connection is refused).
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        api = f"http://127.0.0.1:{held.getsockname()[1]}/api"
        (user_home / "profiles.toml").write_text(
            f'active = "mine"\n\n[profiles.mine]\nPREFECT_API_URL = "{api}"\n'
        )
        done = subprocess.run(
            [str(cli), "demo", *args],
            cwd=tmp_path,
            env=demo_env(tmp_path),
            capture_output=True,
            text=True,
            timeout=240,
        )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert sorted(p.name for p in user_home.iterdir()) == ["profiles.toml"]  # nothing of the user's touched
    # No telemetry error (the demo's Prefect servers send none), no database lock race.
    for noise in ("telemetry", "database is locked"):
        assert noise not in (done.stdout + done.stderr).lower(), done.stderr[-3000:]
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
    assert "note:" not in out, "a first run in an empty folder reused nothing"
    assert "gone with the demo" in out and "--keep-server" in out  # how to see the artifacts
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

    if storage == "local":
        # A second run in the same folder says it reuses the earlier output, and how to start clean.
        again = run_demo(tmp_path)
        output = tmp_path / "gpt-image-output"
        held = len(list((output / "images").iterdir()))
        assert f"note: {Path('gpt-image-output')} already holds {held} file(s) from an earlier run" in again
        assert "rm -rf gpt-image-output" in again
        assert "batch of 4 prompts, first run: 4 of 4 rows stored" in again
        assert again.count("paid calls: 0") == 5  # both batches, the edit, both chain runs: all cached


def test_keep_server_keeps_the_ui_up_until_ctrl_c(tmp_path: Path) -> None:
    """``--keep-server``: the demo runs on a Prefect server of its own, prints the UI's URL and
    keeps it up, with the runs and their artifacts, until Ctrl-C; then it stops it."""
    process = subprocess.Popen(
        [sys.executable, "-m", "prefect_gpt_image.demo", "--keep-server"],
        cwd=tmp_path,
        env=demo_env(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: queue.Queue[str | None] = queue.Queue()

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=read, daemon=True).start()
    seen: list[str] = []
    try:
        while not any(line.startswith("Prefect UI: ") for line in seen):
            line = lines.get(timeout=300)  # the demo's own output; a deadline only for a hang
            assert line is not None, "".join(seen)[-4000:]
            seen.append(line)
        ui = re.search(r"Prefect UI: (http://127\.0\.0\.1:\d+)", "".join(seen))
        assert ui is not None
        api = f"{ui.group(1)}/api"
        runs = httpx.post(f"{api}/flow_runs/filter", json={}, timeout=30).json()
        names = {run["name"] for run in runs}
        states = {run["state_type"] for run in runs}
        assert len(runs) >= 7 and states == {"COMPLETED"}, (names, states)  # pipeline, 2+1+2 batches...
        artifacts = httpx.post(f"{api}/artifacts/filter", json={}, timeout=30).json()
        assert any(a["type"] == "image" for a in artifacts) and any(a["type"] == "table" for a in artifacts)
        assert httpx.get(ui.group(1), timeout=30).status_code == 200  # the UI itself
        assert process.poll() is None, "the demo did not keep the server up"

        process.send_signal(signal.SIGINT)  # Ctrl-C
        assert process.wait(timeout=120) == 0
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{api}/health", timeout=5)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
