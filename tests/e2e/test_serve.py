"""``deployments/serve.py`` serves the same deployments as ``deployments/prefect.yaml``."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

from .conftest import REPO_ROOT, deployment_specs, flow_name_of


def _serve_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gpt_image_serve", REPO_ROOT / "deployments" / "serve.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_serve_builds_the_yaml_deployments() -> None:
    specs = deployment_specs()
    built = {d.name: d for d in _serve_module().build_deployments()}
    assert set(built) == set(specs)
    for name, spec in specs.items():
        deployment = built[name]
        assert deployment.flow_name == flow_name_of(spec["entrypoint"])
        assert deployment.tags == spec.get("tags", [])
        expected = dict(spec["parameters"])
        if "manifest" in expected:
            # A relative manifest is made absolute, so serving works from any folder.
            manifest = Path(deployment.parameters["manifest"])
            assert manifest.is_absolute() and manifest.is_file()
            assert manifest == REPO_ROOT / expected.pop("manifest")
            expected["manifest"] = str(manifest)
        assert deployment.parameters == expected
        crons = [(s["cron"], s.get("timezone"), s.get("active", True)) for s in spec.get("schedules") or []]
        assert [(s.schedule.cron, s.schedule.timezone, s.active) for s in deployment.schedules] == crons
