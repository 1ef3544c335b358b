"""Flows sent to a subprocess by value still validate their parameters.

A flow run in a subprocess (``flow.serve()``, Prefect's ``run_flow_in_subprocess``) receives the
flow through cloudpickle by value, which keeps only the globals the function's code uses. The
plugin's flow modules write ``from __future__ import annotations``, so a parameter type used only
in an annotation (``options: ImageOptions | None``) was lost on the way and every served run of
``batch_generate`` failed before it started: "``Batch_GenerateModel`` is not fully defined".
``sync_or_async`` resolves the annotations when the flow is made (``tasks.dispatch``).
"""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import cloudpickle
import pytest

from prefect_gpt_image.flows import batch_edit, batch_generate, batch_pipeline, bill_report, image_pipeline

CHILD = """
import sys, cloudpickle
flow = cloudpickle.loads(sys.stdin.buffer.read())
try:
    flow.validate_parameters({})
except Exception as exc:
    print(type(exc).__name__, exc)
else:
    print("valid")
"""


@pytest.mark.parametrize(
    "flow", [batch_generate, batch_edit, batch_pipeline, image_pipeline, bill_report], ids=lambda f: f.name
)
def test_a_flow_pickled_by_value_builds_its_parameter_model_in_a_fresh_process(flow: Any) -> None:
    done = subprocess.run(
        [sys.executable, "-c", CHILD], input=cloudpickle.dumps(flow), capture_output=True, timeout=120
    )
    out = done.stdout.decode()
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    # The model was built: the parameters were valid, or the only complaint is a missing one.
    assert out.startswith(("valid", "ParameterTypeError")), out
    assert "not fully defined" not in out, out
