"""``prefect-gpt-image edit PROMPT IMAGE...``: one edit, as the ``edit_image`` task makes it
(the first image is edited, the others and ``--reference`` go with it; a mask file or a region
applies to the first image)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from .exits import UsageError
from .regions import parse_region
from .report import Outcome
from .session import Session, add_image_options, add_session_options, image_options, open_session
from .single import make_call, plan_call

if TYPE_CHECKING:
    from prefect_gpt_image.api import EditRequest

__all__ = ["add_arguments", "run"]

HELP = "edit images (paths, URLs, s3://), optionally within a mask or a region"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The verb's arguments (also those of ``plan edit``)."""
    parser.add_argument("prompt", help="how to change the image")
    parser.add_argument("images", nargs="+", help="the image to edit (then more images sent with it)")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--mask", default=None, help="a PNG with alpha, the image's size; alpha 0 = edit")
    where.add_argument(
        "--region",
        default=None,
        metavar="L,T,R,B",
        help="the box to edit, pixels or fractions (0,0,1,0.35 = the top 35%%); a mask is built",
    )
    parser.add_argument(
        "--reference",
        action="append",
        default=[],
        metavar="IMAGE",
        help="a reference image sent after the images (repeatable; 16 images at most in all)",
    )
    add_image_options(parser, generation=False)
    add_session_options(parser)


def run(args: argparse.Namespace) -> Outcome:
    """Edit (or plan the edit)."""
    options = image_options(args)
    region = parse_region(args.region)
    with open_session(args, needs_key=not args.plan) as session:
        request = _request(args, session, options, region)
        if args.plan:
            return plan_call("plan edit", request, session, variant=args.variant)
        return make_call("edit", request, session, variant=args.variant, as_json=args.json)


def _request(
    args: argparse.Namespace, session: Session, options: dict[str, object], region: object
) -> EditRequest:
    """The edit request: every input read and checked (nothing is sent yet)."""
    from prefect_gpt_image.api.images import MAX_MASK_BYTES, InputImage
    from prefect_gpt_image.calls import edit_request, read_input
    from prefect_gpt_image.flows import MaskRegion, build_mask

    sources = [*args.images, *args.reference]
    if len(sources) > 16:
        raise UsageError(f"{len(sources)} images given; an edit takes 1..16 (the image and references)")
    policy = session.settings.input_policy()
    images = [
        read_input(source, session.store, what=f"images[{i}]", policy=policy)
        for i, source in enumerate(sources)
    ]
    mask = None
    if args.mask:
        mask = read_input(args.mask, session.store, what="mask", policy=policy, max_bytes=MAX_MASK_BYTES)
    elif isinstance(region, MaskRegion):
        first = images[0]
        try:
            data = build_mask(first.width, first.height, region)
        except ValueError as exc:
            raise UsageError(f"--region: {exc}") from None
        mask = InputImage.from_bytes(data, "mask.png")
    return edit_request(args.prompt, images, mask, session.settings, n=args.n, **options)
