"""``prefect-gpt-image bill``: what the store's records say was paid over a period, per day, per
deployment and per flow run (``python -m prefect_gpt_image.cli.bill`` runs it alone).

It only reads the store (a folder, an ``s3://`` URI, or a saved block's slug; default
``$GPT_IMAGE_STORAGE`` or ./gpt-image-output); the ``bill_report`` flow also publishes artifacts
and keeps the report in the store. ``--chart PATH`` writes the PNG (the ``chart`` extra).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from prefect_gpt_image.flows import Bill

__all__ = ["add_arguments", "main", "run"]


def _date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {text!r}") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the bill's flags to ``parser``."""
    add = parser.add_argument
    add(
        "--since",
        type=_date,
        default=None,
        help="first day (UTC, YYYY-MM-DD); default: 29 days before --until",
    )
    add("--until", type=_date, default=None, help="last day (UTC, YYYY-MM-DD), included; default: today")
    add(
        "--storage",
        default=None,
        help="a folder, an s3://bucket/prefix URI, or a saved block's slug (gpt-image-storage/NAME, "
        "s3-bucket/NAME); default: $GPT_IMAGE_STORAGE or ./gpt-image-output",
    )
    add("--json", action="store_true", help="print the bill as JSON")
    add("--chart", type=Path, default=None, metavar="PATH", help="write a PNG chart there (the chart extra)")


def _plain(text: str) -> str:
    """``text`` safe to print on a terminal (names come from the records: no control characters)."""
    return "".join(ch if ch.isprintable() else "?" for ch in text)


def _print_table(bill: Bill) -> None:
    print(f"gpt-image bill {_plain(bill.summary())}")
    print(f"store: {_plain(bill.store)} ({bill.records} record(s) read)")
    for title, lines in (
        ("per day", bill.days),
        ("per deployment", bill.deployments),
        ("per flow run", bill.flow_runs),
    ):
        print(f"\n{title}:")
        shown = [line for line in lines if line.images] if title == "per day" else lines
        if not shown:
            print("  (nothing paid)")
        for line in shown:
            where = f"  [{_plain(line.deployment)}]" if line.deployment and title == "per flow run" else ""
            print(f"  {_plain(line.name):<40} {line.images:>6} image(s)  ${line.paid:>10.4f}{where}")


def run(args: argparse.Namespace) -> int:
    """Print the bill (a table, or JSON with ``--json``), write the chart with ``--chart``.
    Returns 0, 1 when the store cannot be read or the chart cannot be drawn, 2 for bad dates."""
    from prefect_gpt_image.flows import collect_bill
    from prefect_gpt_image.flows.bill import chart_of, period
    from prefect_gpt_image.flows.bill_chart import CHART_HINT
    from prefect_gpt_image.flows.params import load_storage

    try:
        start, end = period(args.since, args.until)
    except ValueError as exc:
        print(f"bill: {exc}", file=sys.stderr)
        return 2
    try:
        store = asyncio.run(load_storage(args.storage))
        bill = collect_bill(store, start, end)
    except Exception as exc:
        print(f"bill: reading the store failed ({type(exc).__name__}: {exc})", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(bill.model_dump(mode="json"), indent=2))
    else:
        _print_table(bill)
    if args.chart is None:
        return 0
    chart = chart_of(bill)
    if chart is None:
        print(f"bill: {CHART_HINT}", file=sys.stderr)
        return 1
    args.chart.parent.mkdir(parents=True, exist_ok=True)
    args.chart.write_bytes(chart)
    print(f"chart: {args.chart}", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Stand-alone entry point: parse ``argv`` and :func:`run`."""
    parser = argparse.ArgumentParser(
        prog="python -m prefect_gpt_image.cli.bill",
        description="What the store's records say was paid, per day, deployment and flow run.",
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
