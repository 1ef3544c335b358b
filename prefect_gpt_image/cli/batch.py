"""``prefect-gpt-image batch SOURCE``: ``batch_generate`` over a CSV/JSONL manifest (local or
s3://) or a plain prompts file (one prompt per line)."""

from __future__ import annotations

import argparse
from pathlib import Path

from .exits import UsageError
from .flowrun import flow_options, local_path, run_flow
from .report import Outcome
from .session import add_image_options, add_session_options, image_options

__all__ = ["add_arguments", "run"]

HELP = "generate images for every row of a CSV/JSONL manifest or a prompts file (batch_generate)"
MANIFEST_SUFFIXES = (".csv", ".jsonl", ".ndjson", ".json")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The verb's arguments (also those of ``plan batch``)."""
    parser.add_argument(
        "source",
        help="a CSV (header with 'prompt') or JSONL manifest, local or s3://; or a text file "
        "with one prompt per line",
    )
    parser.add_argument(
        "--template", default=None, help="fill each row's prompt from its columns: '{product} on a {surface}'"
    )
    parser.add_argument("--max-parallel", type=int, default=None, help="rows in progress at once")
    add_image_options(parser, generation=False)
    add_session_options(parser)


def run(args: argparse.Namespace) -> Outcome:
    """Run (or plan) the batch."""
    from prefect_gpt_image.flows import batch_generate, plan_batch

    options = flow_options(image_options(args, presets_only=True))
    source: dict[str, object] = {}
    if args.source.lower().endswith(MANIFEST_SUFFIXES):
        source["manifest"] = local_path(args.source)
        source["prompt_template"] = args.template
    elif "://" in args.source:
        raise UsageError(f"{args.source}: a remote source must be a .csv or .jsonl manifest")
    else:
        if args.template:
            raise UsageError("--template fills prompts from a manifest's columns: give a .csv or .jsonl")
        source["prompts"] = _prompts(Path(local_path(args.source)))
    kwargs = {
        **source,
        "options": options,
        "n": args.n,
    }
    return run_flow("batch", batch_generate, plan_batch, kwargs, args)


def _prompts(path: Path) -> list[str]:
    prompts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not prompts:
        raise UsageError(f"{path}: no prompt in it (one prompt per line)")
    return prompts
