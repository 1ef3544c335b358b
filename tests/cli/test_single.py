"""``generate``, ``edit`` and their plans: the call engine, the flows' store and cache, no Prefect
server when none is configured, the global limit when one is."""

from __future__ import annotations

import hashlib
import io
import uuid
from pathlib import Path
from typing import Any

from PIL import Image

from prefect_gpt_image.sandbox.config import CONTRACT_PRICE_PER_IMAGE

from .conftest import Cli

OPTIONS = ["--size", "1024x1024", "--quality", "low"]


def _png(path: Path, size: tuple[int, int], alpha: bool = False, shade: int = 90) -> Path:
    """A plain PNG of ``size`` (fully transparent with ``alpha``); ``shade`` tells images apart."""
    image = Image.new("RGBA" if alpha else "RGB", size, (40, shade, 160, 0) if alpha else (40, shade, 160))
    buf = io.BytesIO()
    image.save(buf, "PNG")
    path.write_bytes(buf.getvalue())
    return path


def test_a_repeated_generate_is_served_from_the_store_and_starts_no_prefect_server(cli: Cli) -> None:
    """The first run pays one image into the flows' store layout; the same command again pays
    nothing. No Prefect API is configured and the ephemeral mode is off: the command would fail
    if anything asked Prefect's API (an ephemeral server would be started for it otherwise)."""
    first = cli.run("generate", "a red fox in the snow", *OPTIONS, "--json")
    assert first.returncode == 0, first.tail()
    made = first.json()
    assert cli.billed_images() == 1
    assert [i["cached"] for i in made["images"]] == [False]
    image = made["images"][0]
    assert Path(image["uri"]) == cli.store / "images" / f"{image['sha256']}.png"
    assert Path(image["uri"]).is_file()
    assert made["cost"]["paid_images"] == 1 and made["cost"]["paid"] > 0
    assert image["request_id"] == cli.sandbox.ledger.entries[0]["request_id"]

    again = cli.run("generate", "a red fox in the snow", *OPTIONS, "--json")
    assert again.returncode == 0, again.tail()
    served = again.json()
    assert cli.billed_images() == 1, "the repeat was billed"
    assert [i["sha256"] for i in served["images"]] == [image["sha256"]]
    assert served["images"][0]["cached"] is True
    assert served["cost"]["paid"] == 0 and served["cost"]["cached_images"] == 1
    assert "paid $0 for 0 images; 1 served from the store" in served["cost"]["summary"]
    # No Prefect server's database was made in the command's Prefect home.
    assert not list((cli.root / "prefect-home").rglob("*.db"))


def test_plan_pays_nothing_and_sees_the_store(cli: Cli) -> None:
    before = cli.run("plan", "generate", "a lighthouse", *OPTIONS, "-n", "2", "--json")
    assert before.returncode == 0, before.tail()
    plan = before.json()["plan"]
    assert (plan["calls"], plan["images"], plan["cache_hits"]) == (1, 2, 0)
    # priced as the sandbox (the gateway's contract) bills each image
    assert plan["estimated_cost"] == round(2 * CONTRACT_PRICE_PER_IMAGE, 6)
    assert cli.sandbox.ledger.requests == [], "plan sent a request"

    assert cli.run("generate", "a lighthouse", *OPTIONS, "-n", "2").returncode == 0
    after = cli.run("plan", "generate", "a lighthouse", *OPTIONS, "-n", "2", "--json")
    assert after.json()["plan"]["cache_hits"] == 1 and after.json()["plan"]["calls"] == 0
    assert len(cli.sandbox.ledger.requests) == 1


def _edit_request(cli: Cli) -> Any:
    edits = [r for r in cli.sandbox.ledger.requests if r["endpoint"].endswith("/images/edits")]
    assert len(edits) == 1, cli.sandbox.ledger.requests
    return edits[0]


def test_edit_with_a_mask_file_sends_that_mask(cli: Cli) -> None:
    photo = _png(cli.root / "photo.png", (1024, 1024))
    mask = _png(cli.root / "mask.png", (1024, 1024), alpha=True)
    run = cli.run("edit", "add a rainbow", str(photo), "--mask", str(mask), "--quality", "low", "--json")
    assert run.returncode == 0, run.tail()
    files = {f["field"]: f for f in _edit_request(cli)["files"]}
    assert files["mask"]["sha256"] == hashlib.sha256(mask.read_bytes()).hexdigest()
    assert run.json()["images"][0]["cached"] is False


def test_edit_with_a_region_sends_a_mask_of_the_image_size(cli: Cli) -> None:
    photo = _png(cli.root / "photo.png", (1536, 1024))
    logo = _png(cli.root / "logo.png", (1024, 1024))
    args = ["edit", "a sunset sky", str(photo), "--region", "0,0,1,0.35", "--reference", str(logo)]
    run = cli.run(*args, "--quality", "low")
    assert run.returncode == 0, run.tail()
    request = _edit_request(cli)
    masks = [f for f in request["files"] if f["field"] == "mask"]
    assert len(masks) == 1
    images = [f for f in request["files"] if f["field"] != "mask"]
    assert [f["sha256"] for f in images] == [
        hashlib.sha256(p.read_bytes()).hexdigest() for p in (photo, logo)
    ]
    # The same edit again is served from the store.
    again = cli.run(*args, "--quality", "low", "--json")
    assert again.json()["images"][0]["cached"] is True
    assert cli.billed_images() == 1


def test_generate_on_a_configured_server_holds_the_global_limit(cli_on_server: Cli) -> None:
    """With PREFECT_API_URL set, the call takes a slot of the settings' global limit on that
    server (created there on first use), as a flow's call does."""
    from prefect.client.orchestration import get_client

    from prefect_gpt_image.blocks import GptImageSettings

    limit = f"cli-limit-{uuid.uuid4().hex[:8]}"
    block = f"cli-settings-{uuid.uuid4().hex[:8]}"
    GptImageSettings(concurrency_limit_name=limit, concurrency_limit=3).save(block)
    run = cli_on_server.run("generate", "a kite", *OPTIONS, "--settings-block", block)
    assert run.returncode == 0, run.tail()
    assert cli_on_server.billed_images() == 1
    with get_client(sync_client=True) as client:
        found = client.read_global_concurrency_limit_by_name(limit)
    assert found.limit == 3
