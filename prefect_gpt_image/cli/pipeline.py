"""``prefect-gpt-image pipeline MANIFEST STEPS``: ``batch_pipeline``, its steps from a JSON or
YAML file (a list of steps, as the flow's ``steps`` parameter takes them)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from .exits import UsageError
from .flowrun import flow_options, local_path, run_flow
from .report import Outcome
from .session import add_image_options, add_session_options, image_options

__all__ = ["add_arguments", "read_steps", "run"]

HELP = "run a chain of steps (generate, edit, blend) for every row of a manifest (batch_pipeline)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The verb's arguments (also those of ``plan pipeline``)."""
    parser.add_argument("manifest", help="a CSV or JSONL manifest, local or s3://, one chain per row")
    parser.add_argument("steps", help="a JSON or YAML file: a list of steps ({kind, prompt, ...})")
    parser.add_argument("--max-parallel", type=int, default=None, help="rows in progress at once")
    add_image_options(parser, generation=False, count=False)
    add_session_options(parser)


def read_steps(path: Path) -> list[Any]:
    """The steps in ``path`` (JSON, or YAML for .yaml/.yml), checked as the flow checks them."""
    from pydantic import TypeAdapter, ValidationError

    from prefect_gpt_image.flows import PipelineStep

    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml  # type: ignore[import-untyped]

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except ValueError as exc:  # json's and yaml's errors
        raise UsageError(f"{path}: not valid {path.suffix.lstrip('.') or 'JSON'}: {exc}") from None
    if isinstance(data, dict) and "steps" in data:
        data = data["steps"]
    if not isinstance(data, list) or not data:
        raise UsageError(f"{path}: expected a list of steps")
    try:
        TypeAdapter(list[PipelineStep]).validate_python(data)
    except ValidationError as exc:
        reasons = "; ".join(f"step {'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise UsageError(f"{path}: {reasons}") from None
    return list(data)


def run(args: argparse.Namespace) -> Outcome:
    """Run (or plan) the pipeline."""
    from prefect_gpt_image.flows import batch_pipeline, plan_batch_pipeline

    options = flow_options(image_options(args, presets_only=True))
    steps = read_steps(Path(local_path(args.steps)))
    kwargs = {
        "manifest": local_path(args.manifest),
        "steps": steps,
        "options": options,
    }
    return run_flow("pipeline", batch_pipeline, plan_batch_pipeline, kwargs, args)
