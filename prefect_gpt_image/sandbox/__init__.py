"""An offline, contract-faithful gpt-image-2 server for tests, demos and benchmarks.

It serves ``/v1/images/generations``, ``/v1/images/edits`` and ``/v1/models`` on 127.0.0.1 with
deterministic images, a billing ledger, a request log and scripted or random faults::

    with SandboxServer(latency=0.2) as sandbox:
        client = make_client(base_url=sandbox.base_url, api_key="sk-test")
        sandbox.script_faults(["429", "drop"])
        ...
        assert sandbox.ledger.billed_images == 3

It imports only the API layer's models, never Prefect.
"""

from __future__ import annotations

from .config import FAULT_KINDS, FaultConfig, SandboxConfig
from .ledger import Ledger
from .server import SandboxServer

__all__ = ["FAULT_KINDS", "FaultConfig", "Ledger", "SandboxConfig", "SandboxServer"]
