"""The bill over a period: real paid calls through the sandbox on two days (each dated by
``use_clock``: yesterday, and today even past midnight), one of them a deployment's run, summed
from the store's records and checked against the sandbox's ledger; served reruns add nothing; the
chart is a PNG that decodes, and the report works without matplotlib."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import io
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.flow_engine import run_flow

from prefect_gpt_image.blocks import GptImageSettings
from prefect_gpt_image.calls import use_clock
from prefect_gpt_image.cli import bill as cli_bill
from prefect_gpt_image.flows import BillReport, batch_generate, bill_report, collect_bill
from prefect_gpt_image.flows.bill_chart import CHART_HINT
from prefect_gpt_image.storage import resolve_store
from prefect_gpt_image.tasks import ImageRef, generate_image, read_manifest
from tests.support.prefect import flow_run_artifacts
from tests.support.sandbox import ledger

from .conftest import KEY, run, saved_settings

TODAY = dt.datetime.now(dt.UTC).date()
YESTERDAY = TODAY - dt.timedelta(days=1)


@pytest.fixture
def dated_today() -> Iterator[None]:
    """Records and manifests of the test say TODAY even if the test runs past midnight (UTC)."""
    with use_clock(dt.datetime.combine(TODAY, dt.time(0, 0, 1), tzinfo=dt.UTC)):
        yield


def billed(sandbox: Any) -> tuple[float, int]:
    """What the sandbox's ledger billed so far: USD and images."""
    stats = ledger(sandbox)["stats"]
    return float(stats["billed_cost"]), int(stats["billed_images"])


def paid_run(sandbox: Any, make: Callable[[], Any]) -> tuple[str, float, int]:
    """Run a batch with ``make``; its flow run id and what the ledger billed for it."""
    cost, images = billed(sandbox)
    state = run(make())
    assert state.is_completed(), state.message
    after_cost, after_images = billed(sandbox)
    return str(state.state_details.flow_run_id), after_cost - cost, after_images - images


def deployment_run(prompts: list[str], storage: str) -> tuple[str, str, str]:
    """A flow run of a deployment of ``batch_generate``, created on the server as the UI's Run
    does and executed here as a worker's process executes it; its flow run id, the deployment's
    id and name."""
    name = f"bill-{TODAY:%Y%m%d}-nightly"
    deployment_id = batch_generate.to_deployment(name=name).apply()
    with get_client(sync_client=True) as client:
        created = client.create_flow_run_from_deployment(
            deployment_id, parameters={"prompts": prompts, "storage": storage}
        )
        flow_run = client.read_flow_run(created.id)
    state = asyncio.run(run_flow(batch_generate, flow_run=flow_run, return_type="state"))  # type: ignore[arg-type]
    assert state.is_completed(), state.message
    return str(flow_run.id), str(deployment_id), name


@flow
def one_image(prompt: str, storage: str) -> list[ImageRef]:
    """The image task in a flow of its own (a rerun of it is the engine's cache hit)."""
    return generate_image(prompt, storage=storage, settings=GptImageSettings(size="1024x640", quality="low"))


def by_key(lines: list[Any]) -> dict[str, tuple[int, float]]:
    return {line.key: (line.images, round(line.paid, 6)) for line in lines if line.images}


def chart_in(markdown: str) -> bytes:
    match = re.search(r"\(data:image/png;base64,([A-Za-z0-9+/=]+)\)", markdown)
    assert match, markdown[:300]
    return base64.b64decode(match.group(1))


def decodes_as_png(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "PNG"
        image.load()
        return image.size


def test_the_bill_of_two_days_matches_the_ledger_and_a_rerun_adds_nothing(
    prefect_env: Path,
    dated_today: None,
    make_sandbox: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    sandbox = make_sandbox(latency=0.05)
    monkeypatch.setenv("GPT_IMAGE_API_KEY", KEY)
    monkeypatch.setenv("GPT_IMAGE_BASE_URL", sandbox.base_url)
    storage = str(tmp_path / "store")
    yesterday = ["a red kite", "a blue kite"]
    with use_clock(dt.datetime.combine(YESTERDAY, dt.time(15, 30), tzinfo=dt.UTC)):
        run_a, paid_a, images_a = paid_run(
            sandbox, lambda: batch_generate(prompts=yesterday, storage=storage, return_state=True)
        )
        run_t, paid_t, images_t = paid_run(  # the image task, in a flow of its own
            sandbox, lambda: one_image("a kite on a string", storage, return_state=True)
        )
    cost_b, count_b = billed(sandbox)
    run_b, deployment_id, deployment_name = deployment_run(
        ["a green kite", "a kite at dusk", "a box kite"], storage
    )
    paid_b, images_b = billed(sandbox)[0] - cost_b, billed(sandbox)[1] - count_b
    # today, served from the store (a batch's lookups, the image task's cache hit): nothing paid
    run_c, paid_c, images_c = paid_run(
        sandbox, lambda: batch_generate(prompts=yesterday, storage=storage, return_state=True)
    )
    run_e, paid_e, images_e = paid_run(
        sandbox, lambda: one_image("a kite on a string", storage, return_state=True)
    )
    assert (images_a, images_t, images_b, images_c, images_e, paid_c, paid_e) == (2, 1, 3, 0, 0, 0.0, 0.0)
    assert paid_a > 0 and paid_b > 0
    images_a, paid_a = images_a + images_t, paid_a + paid_t  # yesterday's runs

    store = resolve_store(storage)
    names = store.list_names("images", at_most=100) or set()
    manifests = [read_manifest(store, *name.split(".")) or {} for name in names]
    assert len(manifests) == images_a + images_b
    # the deployment's run wrote its deployment into each manifest; the others None
    assert (
        sorted((m["deployment_id"], m["deployment_name"]) for m in manifests if m["deployment_id"])
        == [(deployment_id, deployment_name)] * images_b
    )
    assert sum(m["deployment_id"] is None and m["deployment_name"] is None for m in manifests) == images_a

    state = run(bill_report(start=YESTERDAY, end=TODAY, storage=storage, return_state=True))
    assert state.is_completed(), state.message
    report: BillReport = state.result()  # type: ignore[assignment]
    bill = report.bill
    assert by_key(bill.days) == {
        YESTERDAY.isoformat(): (images_a, round(paid_a, 6)),
        TODAY.isoformat(): (images_b, round(paid_b, 6)),
    }
    assert by_key(bill.flow_runs) == {
        run_a: (images_a - images_t, round(paid_a - paid_t, 6)),
        run_t: (images_t, round(paid_t, 6)),
        run_b: (images_b, round(paid_b, 6)),
    }
    assert not {run_c, run_e} & {line.key for line in bill.flow_runs}  # the served reruns are on no line
    assert by_key(bill.deployments) == {
        "": (images_a, round(paid_a, 6)),
        deployment_id: (images_b, round(paid_b, 6)),
    }
    assert {line.name for line in bill.deployments} == {"(no deployment)", deployment_name}
    assert round(bill.paid, 6) == round(billed(sandbox)[0], 6) and bill.images == billed(sandbox)[1]

    # a period of today alone leaves yesterday's run out
    today_only = collect_bill(store, TODAY, TODAY)
    assert (today_only.images, round(today_only.paid, 6)) == (images_b, round(paid_b, 6))

    # the report beside the images: JSON, CSV and the PNG, which decodes
    stored = json.loads(store.read_bytes(report.json_uri))
    assert stored["paid"] == pytest.approx(bill.paid) and stored["images"] == bill.images
    csv_text = store.read_bytes(report.csv_uri).decode()
    assert f"flow run,{run_b},{deployment_name},{images_b}," in csv_text
    assert report.chart_uri is not None and report.chart_uri.endswith(f"reports/bill-{YESTERDAY}-{TODAY}.png")
    width, height = decodes_as_png(store.read_bytes(report.chart_uri))
    assert width > 300 and height > 200

    # the artifacts: the table (every name escaped) and the chart shown inline
    artifacts = {a["key"]: a for a in flow_run_artifacts(state.state_details.flow_run_id)}
    table = json.loads(artifacts["gpt-image-bill"]["data"])
    assert {
        "group": "deployment",
        "name": deployment_name.replace("-", "\\-"),
        "deployment": "",
        "images": images_b,
        "paid_usd": round(paid_b, 4),
    } in table
    assert (
        f"paid ${bill.paid:.4f}".replace(".", "\\.").replace("$", "\\$")
        in artifacts["gpt-image-bill"]["description"]
    )
    assert chart_in(artifacts["gpt-image-bill-chart"]["data"]) == store.read_bytes(report.chart_uri)

    # the CLI: run() directly, and as a program
    args = argparse_args("--storage", storage, "--since", str(YESTERDAY), "--until", str(TODAY), "--json")
    capsys.readouterr()
    assert cli_bill.run(args) == 0
    assert json.loads(capsys.readouterr().out)["paid"] == pytest.approx(bill.paid)
    chart = tmp_path / "bill.png"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "prefect_gpt_image.cli.bill",
            "--storage",
            storage,
            "--since",
            str(YESTERDAY),
            "--chart",
            str(chart),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert f"paid ${bill.paid:.4f} for {bill.images} image(s) in 3 flow run(s)" in done.stdout
    assert deployment_name in done.stdout and run_b in done.stdout
    decodes_as_png(chart.read_bytes())


def argparse_args(*argv: str) -> Any:
    import argparse

    parser = argparse.ArgumentParser()
    cli_bill.add_arguments(parser)
    return parser.parse_args(list(argv))


def no_matplotlib(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every import of matplotlib fail, as where it is not installed."""
    for name in list(sys.modules):
        if name == "matplotlib" or name.startswith("matplotlib."):
            monkeypatch.delitem(sys.modules, name)
    for name in ("matplotlib", "matplotlib.figure", "matplotlib.backends", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, name, None)


def test_on_s3_the_report_works_without_matplotlib_and_a_large_chart_is_linked(
    env: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    sandbox, _local_s3, storage = env
    run_a, paid_a, images_a = paid_run(
        sandbox,
        lambda: batch_generate(prompts=["a kite over the sea"], n=2, storage=storage, return_state=True),
    )
    assert images_a == 2
    # an answer of 3 whose third result URL never serves: 2 stored, 1 billed and not delivered
    sandbox.script_faults(["media_flaky:404:50@2"])
    before, _ = billed(sandbox)
    partly = batch_generate(
        prompts=["three kites over a dune"],
        n=3,
        storage=storage,
        settings_block=saved_settings(media_retry_seconds=0.5),
        return_state=True,
    )
    assert not partly.is_completed()
    paid_partly, price = billed(sandbox)[0] - before, sandbox.ledger.price_per_image
    assert paid_partly == pytest.approx(3 * price)

    # with matplotlib, a chart too large to show inline is linked, presigned, and loads
    import prefect_gpt_image.flows.bill as bill_module

    monkeypatch.setattr(bill_module, "INLINE_CHART_BYTES", 10)
    state = run(bill_report(storage=storage, return_state=True))
    assert state.is_completed(), state.message
    report: BillReport = state.result()  # type: ignore[assignment]
    run_p = str(partly.state_details.flow_run_id)
    assert by_key(report.bill.flow_runs) == {run_a: (2, round(paid_a, 6)), run_p: (2, round(2 * price, 6))}
    assert (report.bill.undelivered, report.bill.undelivered_paid) == (1, pytest.approx(price))
    assert report.bill.paid + report.bill.undelivered_paid == pytest.approx(billed(sandbox)[0])
    markdown = next(
        a["data"]
        for a in flow_run_artifacts(state.state_details.flow_run_id)
        if a["key"] == "gpt-image-bill-chart"
    )
    link = re.search(r"!\[[^\]]*\]\((http://127\.0\.0\.1:[^)]+X-Amz-Signature=[^)]+)\)", markdown)
    assert link, markdown
    decodes_as_png(httpx.get(link.group(1).replace("\\&", "&"), timeout=30).content)
    monkeypatch.setattr(bill_module, "INLINE_CHART_BYTES", 256 * 1024)

    # without matplotlib: the same bill, no chart, and it says how to get one
    no_matplotlib(monkeypatch)
    state = run(bill_report(storage=storage, return_state=True))
    assert state.is_completed(), state.message
    plain: BillReport = state.result()  # type: ignore[assignment]
    assert plain.chart_uri is None
    assert (plain.bill.images, plain.bill.paid) == (report.bill.images, report.bill.paid)
    markdown = next(
        a["data"]
        for a in flow_run_artifacts(state.state_details.flow_run_id)
        if a["key"] == "gpt-image-bill-chart"
    )
    assert "prefect\\-gpt\\-image\\[chart\\]" in markdown and "data:image" not in markdown
    store = resolve_store(storage)
    assert json.loads(store.read_bytes(plain.json_uri))["images"] == 4
    assert cli_bill.run(argparse_args("--storage", storage, "--chart", "unused.png")) == 1
    out, err = capsys.readouterr()
    assert "paid $" in out and CHART_HINT in err


def test_records_last_written_before_the_period_are_not_read(
    prefect_env: Path, dated_today: None, make_sandbox: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A record the store last wrote days before the period holds nothing made in it: it is left
    unread (one listing, no read per old record), and read again for a period that covers it."""
    sandbox = make_sandbox(latency=0.05)
    monkeypatch.setenv("GPT_IMAGE_API_KEY", KEY)
    monkeypatch.setenv("GPT_IMAGE_BASE_URL", sandbox.base_url)
    storage = str(tmp_path / "store")
    ten_days_ago = dt.datetime.combine(TODAY - dt.timedelta(days=10), dt.time(9), tzinfo=dt.UTC)
    with use_clock(ten_days_ago):
        old_run, old_paid, _ = paid_run(
            sandbox, lambda: batch_generate(prompts=["an old kite"], storage=storage, return_state=True)
        )
    new_run, new_paid, _ = paid_run(
        sandbox, lambda: batch_generate(prompts=["a new kite"], storage=storage, return_state=True)
    )
    store = resolve_store(storage)
    # the old call's record as the store would have it had it been written ten days ago
    (old_record,) = [
        name
        for name in store.list_names("cache", at_most=10) or set()
        if json.loads(store.read_bytes(f"cache/{name}"))["created"].startswith(
            ten_days_ago.date().isoformat()
        )
    ]
    os.utime(tmp_path / "store" / "cache" / old_record, (ten_days_ago.timestamp(),) * 2)

    recent = collect_bill(store, TODAY - dt.timedelta(days=2), TODAY)
    assert recent.records == 1 and by_key(recent.flow_runs) == {new_run: (1, round(new_paid, 6))}
    month = collect_bill(store)  # the last 30 days
    assert month.records == 2
    assert by_key(month.flow_runs) == {old_run: (1, round(old_paid, 6)), new_run: (1, round(new_paid, 6))}
