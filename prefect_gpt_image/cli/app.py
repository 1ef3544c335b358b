"""The parser of ``prefect-gpt-image`` and :func:`main`: parse, run the verb, show its outcome,
and end with the exit code of :mod:`.exits` (errors say what to do, never with a traceback)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from types import ModuleType

from . import batch, batch_edit, bill, edit, generate, pipeline
from .exits import EPILOG, USAGE, UsageError, exit_code
from .parsing import Parser, refuse_api_key, unknown_options

__all__ = ["main"]

PAYING_VERBS: dict[str, ModuleType] = {
    "generate": generate,
    "edit": edit,
    "batch": batch,
    "batch-edit": batch_edit,
    "pipeline": pipeline,
}
"""The verbs that make images, each with a ``plan`` twin: module with ``add_arguments`` and ``run``."""


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    try:
        refuse_api_key(argv)
        args, extras = parser.parse_known_args(argv)
    except UsageError as exc:
        print(f"prefect-gpt-image: error: {exc}", file=sys.stderr)
        return USAGE
    if extras:
        verb_parser = getattr(args, "verb_parser", parser)
        verb_parser.print_usage(sys.stderr)
        print(f"{verb_parser.prog}: error: {unknown_options(verb_parser, extras)}", file=sys.stderr)
        return USAGE
    if not getattr(args, "run", None):
        parser.print_help()
        return USAGE
    return _run(args)


def _run(args: argparse.Namespace) -> int:
    if getattr(args, "verb", None) is None:  # sandbox, demo: as they always were
        return int(args.run(args))
    # Only used if this command has to start Prefect's ephemeral server (the batch verbs with no
    # PREFECT_API_URL): a start-up allowance for a busy machine and no telemetry heartbeat.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from .report import show

    try:
        outcome = args.verb.run(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return exit_code(KeyboardInterrupt())
    except Exception as exc:
        code = exit_code(exc)
        if args.json:
            import json

            print(
                json.dumps(
                    {"ok": False, "exit_code": code, "error": str(exc), "error_type": type(exc).__name__}
                )
            )
        print(f"prefect-gpt-image {args.command}: error: {exc}", file=sys.stderr)
        return code
    return show(outcome, as_json=args.json)


def _version() -> str:
    from prefect_gpt_image import __version__

    return f"prefect-gpt-image {__version__}"


def _parser() -> Parser:
    from prefect_gpt_image.demo import add_arguments as demo_arguments
    from prefect_gpt_image.sandbox import cli as sandbox_cli

    parser = Parser(
        prog="prefect-gpt-image",
        description="gpt-image-2 images on Prefect, from the command line: the library's verbs "
        "with its store, cache and budget, and an offline sandbox. The API key comes from "
        "$GPT_IMAGE_API_KEY / $OPENAI_API_KEY, --credentials-block NAME or a hidden prompt, "
        "never from the command line.",
        epilog=EPILOG,
    )
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", metavar="VERB")

    for name, module in PAYING_VERBS.items():
        p = sub.add_parser(name, help=module.HELP, description=module.HELP, epilog=EPILOG)
        module.add_arguments(p)
        p.set_defaults(run=module.run, verb=module, verb_parser=p, plan=False)

    plan = sub.add_parser(
        "plan",
        help="plan a verb: calls, cache hits and estimated cost; nothing is paid",
        description="Plan what a verb would do: the calls to make, the cache hits and the estimated "
        "cost (the endpoint's price model, see docs/cost.md). Nothing is paid.",
        epilog=EPILOG,
    )
    plan_sub = plan.add_subparsers(dest="planned", metavar="VERB", required=True)
    for name, module in PAYING_VERBS.items():
        p = plan_sub.add_parser(name, help=f"plan: {module.HELP}", epilog=EPILOG)
        module.add_arguments(p)
        p.set_defaults(run=module.run, verb=module, verb_parser=p, plan=True)

    p = sub.add_parser("bill", help="what the store's records say was paid, per day, deployment and flow run")
    bill.add_arguments(p)
    p.set_defaults(run=bill.run)

    p = sub.add_parser("sandbox", help="run the local gpt-image-2 sandbox server")
    sandbox_cli.add_arguments(p)
    p.set_defaults(run=sandbox_cli.run)

    p = sub.add_parser(
        "demo", help="run the pipeline and a small batch offline (sandbox + ephemeral Prefect)"
    )
    demo_arguments(p)
    p.set_defaults(run=_demo)
    return parser


def _demo(args: argparse.Namespace) -> int:
    """The pipeline (generate → mask edit → reference blend) and a small batch, run twice to show
    the cache, offline: a sandbox for the API, an ephemeral Prefect, local or SeaweedFS storage.
    """
    # In a fresh interpreter: this command has imported Prefect, which read its settings then,
    # so the demo's own Prefect home, offline settings and start-up allowance would not apply
    # (its runs would go to the user's ~/.prefect database, or to a server a profile names).
    argv = [sys.executable, "-m", "prefect_gpt_image.demo", "--out", str(args.out)]
    argv += ["--s3"] if args.s3 else []
    argv += ["--keep-server"] if args.keep_server else []
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, argv)  # noqa: S606 - this interpreter, our own module, no shell


if __name__ == "__main__":
    raise SystemExit(main())
