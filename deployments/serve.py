"""Serve the deployments from this process, with no work pool and no worker: ``python deployments/serve.py``.

The deployments get the same names, parameters, tags and schedule as in ``deployments/prefect.yaml``
(read from it, so the two never drift apart). Flow runs execute in this process, which must reach
the Prefect server (``PREFECT_API_URL``) and find the blocks the parameters name. The work pool's
environment in the yaml (what a run may read: ``GPT_IMAGE_INPUT_ROOTS``, ``GPT_IMAGE_INPUT_BUCKETS``)
applies to this process too, unless the variable is already set; relative input roots are taken
from the repo root.

Example::

    prefect server start                      # elsewhere, or PREFECT_API_URL set to a server
    python deployments/blocks.py --storage ./gpt-image-output
    python deployments/serve.py
    prefect deployment run 'gpt-image-pipeline/pipeline' --param prompt="a red fox"
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml  # type: ignore[import-untyped]
from prefect import Flow, serve
from prefect.deployments.runner import RunnerDeployment
from prefect.schedules import Cron
from prefect.types.entrypoint import EntrypointType

from prefect_gpt_image.flows import batch_edit, batch_generate, batch_pipeline, image_pipeline

__all__ = ["PREFECT_YAML", "build_deployments", "job_environment", "main"]

HERE = Path(__file__).resolve().parent
PREFECT_YAML = HERE / "prefect.yaml"
"""The deployments' single source of parameters and schedules."""
_FLOWS: dict[str, Flow[..., Any]] = {
    "prefect_gpt_image.flows.image_pipeline": image_pipeline,
    "prefect_gpt_image.flows.batch_generate": batch_generate,
    "prefect_gpt_image.flows.batch_edit": batch_edit,
    "prefect_gpt_image.flows.batch_pipeline": batch_pipeline,
}


def _parameters(spec: dict[str, Any]) -> dict[str, Any]:
    """The deployment's parameters, with a relative manifest made absolute (repo root based),
    so serving works from any working directory."""
    parameters = dict(spec.get("parameters") or {})
    manifest = parameters.get("manifest")
    if isinstance(manifest, str) and "://" not in manifest and not Path(manifest).is_absolute():
        parameters["manifest"] = str(HERE.parent / manifest)
    return parameters


def build_deployments(prefect_yaml: Path = PREFECT_YAML) -> list[RunnerDeployment]:
    """One ``RunnerDeployment`` per deployment of ``prefect_yaml`` (name, parameters, tags, cron)."""
    config = yaml.safe_load(prefect_yaml.read_text(encoding="utf-8"))
    deployments: list[RunnerDeployment] = []
    for spec in config["deployments"]:
        flow = _FLOWS[spec["entrypoint"]]
        schedules = [
            Cron(s["cron"], timezone=s.get("timezone"), active=s.get("active", True))
            for s in spec.get("schedules") or []
        ]
        deployment = flow.to_deployment(
            name=spec["name"],
            description=spec.get("description"),
            tags=list(spec.get("tags") or []),
            parameters=_parameters(spec),
            schedules=schedules or None,
            concurrency_limit=spec.get("concurrency_limit"),
            entrypoint_type=EntrypointType.MODULE_PATH,
        )
        # Called outside an event loop, to_deployment returns the deployment (not a coroutine).
        assert isinstance(deployment, RunnerDeployment)
        deployments.append(deployment)
    return deployments


def job_environment(prefect_yaml: Path = PREFECT_YAML) -> dict[str, str]:
    """The environment the yaml's work pool gives its flow runs (every deployment's, merged),
    with relative ``GPT_IMAGE_INPUT_ROOTS`` made absolute (repo root based)."""
    config = yaml.safe_load(prefect_yaml.read_text(encoding="utf-8"))
    env: dict[str, str] = {}
    for spec in config["deployments"]:
        env.update((spec.get("work_pool") or {}).get("job_variables", {}).get("env") or {})
    roots = env.get("GPT_IMAGE_INPUT_ROOTS")
    if roots:
        env["GPT_IMAGE_INPUT_ROOTS"] = ",".join(
            str(HERE.parent / root.strip()) for root in roots.split(",") if root.strip()
        )
    return {name: str(value) for name, value in env.items()}


def main() -> None:
    """Serve the deployments until interrupted (Ctrl-C), under the work pool's environment."""
    for name, value in job_environment().items():
        os.environ.setdefault(name, value)
    serve(*build_deployments())


if __name__ == "__main__":
    main()
