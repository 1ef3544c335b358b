"""Reading what the sandbox saw and billed, over its JSON endpoints, as any test would."""

from __future__ import annotations

from typing import Any

import httpx


def sandbox_requests(sandbox: Any) -> list[dict[str, Any]]:
    """The sandbox's request log: one entry per API request it received."""
    return list(httpx.get(f"{sandbox.url}/sandbox/requests").json()["requests"])


def ledger(sandbox: Any) -> dict[str, Any]:
    """The sandbox's billing ledger (entries and stats)."""
    return dict(httpx.get(f"{sandbox.url}/sandbox/ledger").json())


def billed_images(sandbox: Any) -> int:
    """How many images the sandbox billed."""
    return int(ledger(sandbox)["stats"]["billed_images"])
