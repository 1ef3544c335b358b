"""docs/deployments.md's offline steps, run as written: the page and the test cannot drift apart.

The fenced block marked ``<!-- tested: tests/e2e/test_deployments_doc.py ... -->`` is taken from
the page and run in ``bash -e`` (what a user types, one line after the other), from a folder of
its own holding a copy of ``deployments/`` and the project's virtualenv, with a fresh ``HOME`` and
no Prefect, key or AWS variables. Two things differ from the page, and only these: the ports
(4200 and 8099 become free ones, so tests and other servers on the machine never collide) and
the time the test waits. The block starts its own Prefect server, sandbox and worker; the test
stops whatever is left of them by the process group it started.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from prefect_gpt_image.local_process import free_port, stop_process

from .conftest import REPO_ROOT

DOC = REPO_ROOT / "docs" / "deployments.md"
MARKER = "<!-- tested: tests/e2e/test_deployments_doc.py"
_FENCE = re.compile(r"```bash\n(.*?)\n```", re.S)


def offline_steps() -> str:
    """The shell block right after the marker in docs/deployments.md."""
    text = DOC.read_text(encoding="utf-8")
    assert MARKER in text, f"{DOC} lost its tested block marker"
    match = _FENCE.search(text, text.index(MARKER))
    assert match is not None, "no ```bash block after the marker"
    return match.group(1)


def test_the_offline_steps_are_local_only() -> None:
    """Before anything runs: the steps switch off Prefect's usage data and server telemetry (its
    collector is off the machine, and offline its failure prints an error) and name no host
    but loopback."""
    steps = offline_steps()
    assert re.search(r"^export DO_NOT_TRACK=1 PREFECT_SERVER_ANALYTICS_ENABLED=false$", steps, re.M), steps
    hosts = set(re.findall(r"https?://([^/:\s]+)", steps))
    assert hosts <= {"127.0.0.1"}, hosts


def test_the_offline_steps_run_as_written(tmp_path: Path) -> None:
    test_the_offline_steps_are_local_only()
    prefect_port, sandbox_port = free_port(), free_port()
    script = re.sub(r"\b4200\b", str(prefect_port), offline_steps())
    script = re.sub(r"\b8099\b", str(sandbox_port), script)
    work = tmp_path / "clone"
    work.mkdir()
    shutil.copytree(REPO_ROOT / "deployments", work / "deployments")
    (work / ".venv").symlink_to(Path(sys.prefix))
    (tmp_path / "home").mkdir()
    (work / "steps.sh").write_text(script + "\n", encoding="utf-8")
    drop = ("PREFECT_", "GPT_IMAGE_", "AWS_", "OPENAI_", "VIRTUAL_ENV")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    # Safety nets only (the steps set them too): nothing may leave the machine.
    env.update({"HOME": str(tmp_path / "home"), "DO_NOT_TRACK": "1", "AWS_EC2_METADATA_DISABLED": "true"})

    process = subprocess.Popen(
        ["bash", "-e", "steps.sh"],
        cwd=work,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=480)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        pytest.fail(f"the offline steps did not finish in 480 s:\n{output[-4000:]}\n{_logs(work)}")
    finally:
        stop_process(process)  # whatever the block's last step did not stop (a worker may outlive it)

    assert process.returncode == 0, f"{output[-4000:]}\n{_logs(work)}"
    assert "Flow run finished successfully in 'Completed'" in output, output[-4000:]
    assert "'gpt-image-pipeline/pipeline' successfully created" in output
    images = sorted((work / "gpt-image-output" / "images").glob("*.png"))
    assert len(images) == 1, output[-4000:]
    assert images[0].name in output  # `ls gpt-image-output/images` showed it
    with Image.open(images[0]) as image:
        assert image.size == (1536, 1024)  # the pipeline deployment's own options
    server_log = (work / "prefect-server.log").read_text(errors="replace")
    assert "telemetry" not in server_log.lower(), server_log[-2000:]


def _logs(work: Path) -> str:
    parts = []
    for name in ("prefect-server.log", "sandbox.log", "worker.log"):
        path = work / name
        if path.exists():
            parts.append(f"--- {name} ---\n" + path.read_text(errors="replace")[-2000:])
    return "\n".join(parts)
