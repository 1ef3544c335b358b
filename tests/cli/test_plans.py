"""``plan batch``, ``plan batch-edit`` and ``plan pipeline``: the flows' own plans, made at once,
with no key and no Prefect server, paying nothing, and seeing what the store already holds."""

from __future__ import annotations

import json

from prefect_gpt_image.sandbox.config import CONTRACT_PRICE_PER_IMAGE

from .conftest import Cli
from .test_single import OPTIONS, _png


def _user_env(cli: Cli) -> dict[str, str]:
    """The environment of a user with no key and no Prefect API, Prefect's ephemeral mode left as
    it is (on): a plan that reached for Prefect's API would start a server, not fail. Python
    lists every module it imports on stderr (``PYTHONPROFILEIMPORTTIME``)."""
    drop = ("GPT_IMAGE_API_KEY", "OPENAI_API_KEY", "PREFECT_SERVER_ALLOW_EPHEMERAL_MODE", "PREFECT_API_URL")
    env = {k: v for k, v in cli.env.items() if k not in drop}
    env["PYTHONPROFILEIMPORTTIME"] = "1"
    return env


def _no_prefect_server(cli: Cli, stderr: str) -> None:
    imported = [line for line in stderr.splitlines() if line.startswith("import time:")]
    assert imported, "the import list is missing: the check below would prove nothing"
    server = [line for line in imported if "prefect.server" in line]
    assert not server, f"the plan imported Prefect's server: {server[:3]}"
    assert not list((cli.root / "prefect-home").rglob("*.db")), "a Prefect server's database was made"


def test_batch_plans_need_no_key_and_no_prefect_server_and_see_the_store(cli: Cli) -> None:
    """Rows already in the store are cache hits, an invalid row is listed with its error, the
    others are calls at the endpoint's price; nothing is sent, no server is started."""
    made = cli.run("generate", "a red kite", *OPTIONS, "--json")
    assert made.returncode == 0, made.tail()
    assert len(cli.sandbox.ledger.requests) == 1
    env = _user_env(cli)

    manifest = cli.root / "kites.csv"
    manifest.write_text("id,prompt\nk,a red kite\nh,a green hill\nl,a blue lake\nx,\n")
    run = cli.run("plan", "batch", str(manifest), *OPTIONS, "--json", env=env)
    assert run.returncode == 0, run.tail()
    plan = json.loads(run.stdout)["plan"]
    assert (plan["calls"], plan["images"], plan["cache_hits"], plan["invalid"]) == (2, 2, 1, 1)
    assert plan["estimated_cost"] == round(2 * CONTRACT_PRICE_PER_IMAGE, 6)
    statuses = {row["id"]: (row["status"], row["error"]) for row in plan["rows"]}
    assert statuses["k"] == ("cached", "") and statuses["h"] == ("call", "")
    assert statuses[""][0] == "invalid" and "prompt" in statuses[""][1]
    _no_prefect_server(cli, run.stderr)

    text = cli.run("plan", "batch", str(manifest), *OPTIONS, env=env)
    assert text.returncode == 0, text.tail()
    assert text.stdout.strip() == plan["summary"]

    photos = cli.root / "photos"
    photos.mkdir()
    for shade, name in enumerate(("a", "b")):
        _png(photos / f"{name}.png", (1024, 1024), shade=shade)
    edit = cli.run("plan", "batch-edit", str(photos), "a white wall", "--quality", "low", "--json", env=env)
    assert edit.returncode == 0, edit.tail()
    planned = json.loads(edit.stdout)["plan"]
    assert (planned["calls"], planned["cache_hits"]) == (2, 0)
    assert sorted(row["source"] for row in planned["rows"]) == [str(photos / "a.png"), str(photos / "b.png")]
    _no_prefect_server(cli, edit.stderr)

    steps = cli.root / "steps.json"
    steps.write_text(
        json.dumps([{"kind": "generate", "prompt": "{prompt}"}, {"kind": "edit", "prompt": "at dusk"}])
    )
    chain = cli.run("plan", "pipeline", str(manifest), str(steps), *OPTIONS, "--json", env=env)
    assert chain.returncode == 0, chain.tail()
    rows = json.loads(chain.stdout)["plan"]["rows"]
    assert [(r["id"], r["step"], r["status"]) for r in rows if r["id"] == "k"] == [
        ("k", "generate", "cached"),
        ("k", "edit", "call"),
    ]
    assert any(r["status"] == "invalid" for r in rows)
    _no_prefect_server(cli, chain.stderr)

    assert len(cli.sandbox.ledger.requests) == 1, "a plan sent a request"
