"""The bill over a period: what the store's records say was paid, per day, per deployment and per
flow run, published as a table artifact with a chart, and kept in the store beside the images.

Every paid image has a manifest in its call's cache record (``cost``: what was paid for it in USD,
``created``, ``flow_run_id``, ``deployment_id``/``deployment_name``); an image served from the
store writes no record, so a rerun that paid nothing adds nothing here. The report (JSON and CSV,
and a PNG chart when matplotlib is installed: the ``chart`` extra) goes to
``{prefix}/reports/bill-{start}-{end}.*`` in the store. :func:`collect_bill` is the sum alone
(the CLI's ``prefect-gpt-image bill``); :func:`bill_report` is the flow.
"""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import io
import json
import math
from collections.abc import Iterable
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import acreate_markdown_artifact, acreate_table_artifact
from pydantic import BaseModel, Field

from prefect_gpt_image.calls import (
    csv_row,
    md_image,
    md_inline_png,
    md_link,
    md_table,
    md_text,
    read_records,
    usd,
)
from prefect_gpt_image.storage import ImageStore
from prefect_gpt_image.tasks import sync_or_async

from .batch_report import REPORT_FOLDER
from .bill_chart import CHART_HINT, draw_chart
from .params import load_storage

__all__ = [
    "DEFAULT_DAYS",
    "INLINE_CHART_BYTES",
    "Bill",
    "BillLine",
    "BillReport",
    "bill_report",
    "chart_of",
    "collect_bill",
    "period",
    "write_bill",
]

DEFAULT_DAYS = 30
"""The period of a bill without dates: the last 30 days, today (UTC) included."""
INLINE_CHART_BYTES = 256 * 1024
"""A chart up to this size is shown inside the artifact (a ``data:`` URI); a larger one is linked."""
NO_DEPLOYMENT = "(no deployment)"
NO_FLOW_RUN = "(no flow run)"


class BillLine(BaseModel):
    """What was paid in one day, by one deployment or in one flow run."""

    key: str = Field(description="The day (YYYY-MM-DD), the deployment id or the flow run id; '' for none.")
    name: str = Field(description="How it reads: the day, the deployment's name (else its id), the run id.")
    images: int = 0
    paid: float = Field(default=0.0, description="USD paid for those images.")
    deployment: str | None = Field(default=None, description="A flow run's deployment (name, else id).")
    by_deployment: dict[str, float] = Field(
        default_factory=dict,
        description="A day's USD paid per deployment id ('' for none): the chart's bars.",
    )


class Bill(BaseModel):
    """What the store's records say was paid from ``start`` to ``end`` (UTC days, both included)."""

    start: dt.date
    end: dt.date
    store: str = Field(description="Where the records were read (no secret).")
    images: int = 0
    paid: float = 0.0
    days: list[BillLine] = Field(default_factory=list, description="Every day of the period, oldest first.")
    deployments: list[BillLine] = Field(default_factory=list, description="Most paid first.")
    flow_runs: list[BillLine] = Field(default_factory=list, description="Most paid first.")
    records: int = Field(default=0, description="Cache records read.")
    unpriced: int = Field(default=0, description="Images in the period whose manifest names no cost.")
    undelivered: int = Field(
        default=0,
        description="Images billed but never delivered (their record, last written in the period, names "
        "fewer images than its request asked for); not in ``paid``: no manifest names their cost.",
    )
    undelivered_paid: float = Field(
        default=0.0, description="Their estimated cost: each at the cost of the images its call delivered."
    )

    def summary(self) -> str:
        """One line: the period and what was paid."""
        line = (
            f"{self.start} to {self.end}: paid {usd(self.paid)} for {self.images} image(s) "
            f"in {len(self.flow_runs)} flow run(s)"
        )
        if self.undelivered:
            line += (
                f"; {self.undelivered} image(s) billed but not delivered "
                f"(about {usd(self.undelivered_paid)}, not in the total)"
            )
        if self.unpriced:
            line += f"; {self.unpriced} image(s) with no cost recorded"
        return line


class BillReport(BaseModel):
    """A bill and where its report is in the store."""

    bill: Bill
    json_uri: str
    csv_uri: str
    chart_uri: str | None = Field(default=None, description="None without matplotlib (the chart extra).")


def period(
    start: dt.date | None, end: dt.date | None, today: dt.date | None = None
) -> tuple[dt.date, dt.date]:
    """``start`` and ``end`` with their defaults: ``end`` today (UTC), ``start`` the 30 days up to
    ``end``; ValueError when ``start`` is after ``end``."""
    end = end or today or dt.datetime.now(dt.UTC).date()
    start = start or end - dt.timedelta(days=DEFAULT_DAYS - 1)
    if start > end:
        raise ValueError(f"the period starts ({start}) after it ends ({end})")
    return start, end


def _day(created: Any) -> dt.date | None:
    try:
        when = dt.datetime.fromisoformat(str(created))
    except ValueError:
        return None
    return (when if when.tzinfo else when.replace(tzinfo=dt.UTC)).astimezone(dt.UTC).date()


def _cost(manifest: dict[str, Any]) -> float | None:
    cost = manifest.get("cost")
    if isinstance(cost, bool) or not isinstance(cost, int | float) or not math.isfinite(cost):
        return None
    return float(cost)


def collect_bill(store: ImageStore, start: dt.date | None = None, end: dt.date | None = None) -> Bill:
    """Sum what the cache records of ``store`` say was paid for the images made from ``start`` to
    ``end`` (UTC days, both included; see :func:`period` for the defaults)."""
    start, end = period(start, end)
    since = dt.datetime.combine(start, dt.time(), tzinfo=dt.UTC)
    records = read_records(store, since)
    days: dict[str, BillLine] = {}
    day = start
    while day <= end:
        days[day.isoformat()] = BillLine(key=day.isoformat(), name=day.isoformat())
        day += dt.timedelta(days=1)
    deployments: dict[str, BillLine] = {}
    runs: dict[str, BillLine] = {}
    bill = Bill(start=start, end=end, store=store.describe(), records=len(records))
    for record in records:
        manifests = [m for m in record.get("manifests") or [] if isinstance(m, dict)]
        missing = _undelivered(record, manifests, start, end)
        if missing:
            costs = [c for c in map(_cost, manifests) if c is not None]
            bill.undelivered += missing
            bill.undelivered_paid += missing * (sum(costs) / len(costs) if costs else 0.0)
        for manifest in manifests:
            made = _day(manifest.get("created"))
            if made is None or not start <= made <= end:
                continue
            cost = _cost(manifest)
            bill.unpriced += cost is None
            paid = cost or 0.0
            deployment_id = str(manifest.get("deployment_id") or "")
            deployment = str(manifest.get("deployment_name") or deployment_id or NO_DEPLOYMENT)
            run_id = str(manifest.get("flow_run_id") or "")
            lines = (
                days[made.isoformat()],
                deployments.setdefault(deployment_id, BillLine(key=deployment_id, name=deployment)),
                runs.setdefault(
                    run_id, BillLine(key=run_id, name=run_id or NO_FLOW_RUN, deployment=deployment)
                ),
            )
            for line in lines:
                line.images += 1
                line.paid += paid
            split = lines[0].by_deployment
            split[deployment_id] = split.get(deployment_id, 0.0) + paid
            bill.images += 1
            bill.paid += paid
    bill.days = list(days.values())
    bill.deployments = _most_paid_first(deployments.values())
    bill.flow_runs = _most_paid_first(runs.values())
    return bill


def _undelivered(
    record: dict[str, Any], manifests: list[dict[str, Any]], start: dt.date, end: dt.date
) -> int:
    """Images of a partial record (billed, never delivered) when it was last written in the period."""
    written = _day(record.get("created"))
    try:
        wanted = int((record.get("request") or {}).get("n") or 0)
    except (TypeError, ValueError):
        return 0
    return max(0, wanted - len(manifests)) if written is not None and start <= written <= end else 0


def _most_paid_first(lines: Iterable[BillLine]) -> list[BillLine]:
    return sorted(lines, key=lambda line: (-line.paid, -line.images, line.name))


def _rows(bill: Bill) -> list[dict[str, Any]]:
    """The bill's lines as plain rows: per day, per deployment, per flow run, then the total."""
    rows: list[dict[str, Any]] = []
    for group, lines in (("day", bill.days), ("deployment", bill.deployments), ("flow run", bill.flow_runs)):
        rows.extend(
            {
                "group": group,
                "name": line.name,
                "deployment": line.deployment or "",
                "images": line.images,
                "paid_usd": round(line.paid, 4),
            }
            for line in lines
        )
    rows.append(
        {
            "group": "total",
            "name": "",
            "deployment": "",
            "images": bill.images,
            "paid_usd": round(bill.paid, 4),
        }
    )
    return rows


def chart_of(bill: Bill) -> bytes | None:
    """The PNG of ``bill``'s paid amounts per day stacked by deployment, or None without matplotlib."""
    title = f"gpt-image bill {bill.start} to {bill.end}: ${bill.paid:.2f} for {bill.images} image(s)"
    days = [(line.key, line.by_deployment) for line in bill.days]
    return draw_chart(days, [(line.key, line.name) for line in bill.deployments], title)


def _report_name(bill: Bill, ext: str) -> str:
    return f"bill-{bill.start}-{bill.end}.{ext}"


def write_bill(store: ImageStore, bill: Bill) -> tuple[BillReport, bytes | None]:
    """Write the bill's report to ``{prefix}/reports/`` of ``store``: JSON, CSV and, when
    matplotlib is installed, the PNG chart; the report and the chart's bytes (None without it)."""
    json_key = store.key(REPORT_FOLDER, _report_name(bill, "json"))
    csv_key = store.key(REPORT_FOLDER, _report_name(bill, "csv"))
    store.put_bytes(json_key, json.dumps(bill.model_dump(mode="json"), indent=2).encode(), "application/json")
    out = io.StringIO()
    rows = _rows(bill)
    writer = csv.DictWriter(out, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(csv_row(row) for row in rows)
    store.put_bytes(csv_key, out.getvalue().encode(), "text/csv")
    chart = chart_of(bill)
    chart_uri = None
    if chart is not None:
        chart_key = store.key(REPORT_FOLDER, _report_name(bill, "png"))
        store.put_bytes(chart_key, chart, "image/png")
        chart_uri = store.uri_for(chart_key)
    report = BillReport(
        bill=bill, json_uri=store.uri_for(json_key), csv_uri=store.uri_for(csv_key), chart_uri=chart_uri
    )
    return report, chart


def _link(store: ImageStore, bill: Bill, ext: str) -> str | None:
    """A link to the report's ``ext`` file (presigned on S3), or None if signing one fails."""
    try:
        return store.link_for(store.key(REPORT_FOLDER, _report_name(bill, ext)))
    except Exception:
        return None


def _chart_markdown(store: ImageStore, report: BillReport, chart: bytes | None) -> str:
    """The chart shown inline when small, else linked (a presigned link on S3); without matplotlib,
    how to get it."""
    if chart is None or report.chart_uri is None:
        return md_text(CHART_HINT)
    alt = f"Paid per day, {report.bill.start} to {report.bill.end}"
    if len(chart) <= INLINE_CHART_BYTES:
        return md_inline_png(alt, chart)
    link = _link(store, report.bill, "png")
    if link is None or link.startswith("file:"):
        return md_text(f"The chart is in the store at {report.chart_uri}")
    return md_image(alt, link)


@sync_or_async
@flow(name="gpt-image-bill", description="What the store's records say was paid over a period.")
async def bill_report(
    start: dt.date | None = None, end: dt.date | None = None, storage: str | None = None
) -> BillReport:
    """What the store's records say was paid from ``start`` to ``end`` (UTC days, both
    included), per day, per deployment and per flow run: a table artifact and a chart artifact,
    and a report (JSON, CSV, PNG) under ``reports/`` in the store.

    Args:
        start: First day of the period (UTC); default: 29 days before ``end``.
        end: Last day of the period (UTC), included; default: today.
        storage: A folder, an s3://bucket/prefix URI, or a saved block's slug
            (gpt-image-storage/NAME or s3-bucket/NAME); unset: $GPT_IMAGE_STORAGE or ./gpt-image-output.
    """
    logger = get_run_logger()
    store = await load_storage(storage)
    bill = await asyncio.to_thread(collect_bill, store, start, end)
    report, chart = await asyncio.to_thread(write_bill, store, bill)
    if chart is None:
        logger.warning(CHART_HINT)
    written = ["json", "csv"] + (["png"] if report.chart_uri is not None else [])
    links = ", ".join(md_link(ext.upper(), _link(store, bill, ext)) for ext in written)
    title = md_text("gpt-image bill " + bill.summary())
    description = f"{title}; report: {links}"
    await acreate_table_artifact(key="gpt-image-bill", table=md_table(_rows(bill)), description=description)
    await acreate_markdown_artifact(
        key="gpt-image-bill-chart",
        markdown=f"{title}\n\n{_chart_markdown(store, report, chart)}\n",
        description=md_text(f"Paid per day and deployment, {bill.start} to {bill.end}"),
    )
    logger.info("gpt-image bill %s; report in %s", bill.summary(), report.json_uri)
    return report
