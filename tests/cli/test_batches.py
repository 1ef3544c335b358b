"""``batch``, ``batch-edit`` and ``pipeline`` (and their plans): the flows, from the command."""

from __future__ import annotations

import json
from pathlib import Path

from .conftest import Cli
from .test_single import _png


def test_batch_from_a_csv_then_its_repeat_costs_nothing(cli_on_server: Cli) -> None:
    cli = cli_on_server
    manifest = cli.root / "prompts.csv"
    manifest.write_text("id,prompt\nk,a red kite\nh,a green hill\nl,a blue lake\n")
    plan = cli.run("plan", "batch", str(manifest), "--quality", "low", "--json")
    assert plan.returncode == 0, plan.tail()
    assert (plan.json()["plan"]["calls"], plan.json()["plan"]["images"]) == (3, 3)
    assert cli.sandbox.ledger.requests == []

    first = cli.run("batch", str(manifest), "--quality", "low", "--json")
    assert first.returncode == 0, first.tail()
    made = first.json()
    assert cli.billed_images() == 3
    assert sorted(i["id"] for i in made["images"]) == ["h", "k", "l"]
    assert not any(i["cached"] for i in made["images"])
    assert made["cost"]["paid_images"] == 3
    for image in made["images"]:
        assert Path(image["uri"]).parent == cli.store / "images"

    again = cli.run("batch", str(manifest), "--quality", "low", "--json")
    assert again.returncode == 0, again.tail()
    assert cli.billed_images() == 3, "the repeat was billed"
    assert all(i["cached"] for i in again.json()["images"])
    assert again.json()["cost"]["paid"] == 0 and again.json()["cost"]["cached_images"] == 3


def test_batch_edit_of_a_folder_and_a_pipeline_from_a_steps_file(cli_on_server: Cli) -> None:
    cli = cli_on_server
    photos = cli.root / "photos"
    photos.mkdir()
    for shade, name in enumerate(("a", "b")):
        _png(photos / f"{name}.png", (1024, 1024), shade=shade)
    run = cli.run(
        "batch-edit", str(photos), "a white wall", "--region", "0,0,1,0.5", "--quality", "low", "--json"
    )
    assert run.returncode == 0, run.tail()
    assert cli.billed_images() == 2
    masks = [f for r in cli.sandbox.ledger.requests for f in r["files"] if f["field"] == "mask"]
    assert len(masks) == 2

    manifest = cli.root / "rows.csv"
    manifest.write_text("product,surface\na mug,a desk\n")
    steps = cli.root / "steps.json"
    steps.write_text(
        json.dumps(
            [
                {"kind": "generate", "prompt": "{product} on {surface}"},
                {
                    "kind": "edit",
                    "prompt": "a blue backdrop",
                    "region": {"left": 0, "top": 0, "right": 1, "bottom": 0.3},
                },
            ]
        )
    )
    run = cli.run("pipeline", str(manifest), str(steps), "--quality", "low", "--json")
    assert run.returncode == 0, run.tail()
    assert [i["step"] for i in run.json()["images"]] == ["generate", "edit"]
    assert cli.billed_images() == 4
    plan = cli.run("plan", "pipeline", str(manifest), str(steps), "--quality", "low", "--json")
    assert plan.json()["plan"]["cache_hits"] == 2 and plan.json()["plan"]["calls"] == 0
    assert cli.billed_images() == 4
