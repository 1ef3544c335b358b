"""``prefect-gpt-image generate PROMPT``: one call, as the ``generate_image`` task makes it."""

from __future__ import annotations

import argparse

from .report import Outcome
from .session import add_image_options, add_session_options, image_options, open_session
from .single import make_call, plan_call

__all__ = ["add_arguments", "run"]

HELP = "generate images from a prompt into the store (a repeat is served from the store, free)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The verb's arguments (also those of ``plan generate``)."""
    parser.add_argument("prompt", help="what to draw")
    add_image_options(parser, generation=True)
    add_session_options(parser)


def run(args: argparse.Namespace) -> Outcome:
    """Generate (or plan) the images."""
    from prefect_gpt_image.calls import generate_request

    options = image_options(args)
    with open_session(args, needs_key=not args.plan) as session:
        request = generate_request(args.prompt, session.settings, n=args.n, **options)
        if args.plan:
            return plan_call("plan generate", request, session, variant=args.variant)
        return make_call("generate", request, session, variant=args.variant, as_json=args.json)
