"""``prefect-gpt-image batch-edit SOURCE PROMPT``: ``batch_edit`` over a folder, an s3://
prefix or a manifest's image column."""

from __future__ import annotations

import argparse

from .flowrun import flow_options, local_path, run_flow
from .regions import parse_region
from .report import Outcome
from .session import add_image_options, add_session_options, image_options

__all__ = ["add_arguments", "run"]

HELP = "apply one edit to every image of a folder, s3:// prefix or manifest (batch_edit)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The verb's arguments (also those of ``plan batch-edit``)."""
    parser.add_argument("source", help="a folder, s3://bucket/prefix/, or a CSV/JSONL manifest")
    parser.add_argument("prompt", help="how to change each image (a template with a manifest)")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--mask", default=None, help="a mask PNG for every image (or a manifest column)")
    where.add_argument(
        "--region", default=None, metavar="L,T,R,B", help="the box to edit, pixels or fractions"
    )
    parser.add_argument(
        "--reference", action="append", default=[], metavar="IMAGE", help="repeatable, up to 15"
    )
    parser.add_argument("--image-column", default="image", help="the manifest column holding the images")
    parser.add_argument("--max-parallel", type=int, default=None, help="images in progress at once")
    add_image_options(parser, generation=False, count=False)
    add_session_options(parser)


def run(args: argparse.Namespace) -> Outcome:
    """Run (or plan) the batch of edits."""
    from prefect_gpt_image.flows import batch_edit, plan_batch_edit

    options = flow_options(image_options(args, presets_only=True))
    region = parse_region(args.region)
    kwargs = {
        "images": local_path(args.source),
        "prompt": args.prompt,
        "mask_uri": args.mask,
        "region": region,
        "references": args.reference or None,
        "options": options,
        "image_column": args.image_column,
    }
    return run_flow("batch-edit", batch_edit, plan_batch_edit, kwargs, args)
