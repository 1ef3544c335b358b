"""Prefect artifacts for image calls: each image, and a card with prompt, parameters and lineage.

A flow run's first calls (``GptImageSettings.max_call_artifacts_per_run``, 20) publish them; later
calls publish none: each artifact is a Prefect API call and a row on the run's page, which a
fan-out of thousands of calls would pay for thousands of times (measured: a third of the
process's CPU per image in a 100-call ``asyncio.gather``).

Keys follow Prefect's rule (``^[a-z0-9-]*$``): ``gpt-image-<sha256[:16]>`` for an image (the same
image shown by several runs gets versions) and ``gpt-image-call-<cache key[:16]>`` for the card
(reruns of the same request version it). Image URLs are the store's links: presigned S3 URLs
expire (at most 7 days), public or ``file://`` links do not; a ``file://`` link shows only in a
browser on the same machine.

Every string a user or the gateway controls (prompt, parameter values, request id, store URI) is
escaped by :mod:`.encoding`, and the image links are built there: the UI renders the card and
the descriptions as markdown.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from prefect.artifacts import acreate_image_artifact, acreate_markdown_artifact

from .bill import usd
from .encoding import md_link, md_text
from .refs import ImageRef

__all__ = ["card_key", "claim_artifact_slot", "image_key", "publish_artifacts"]

_PROMPT_PREVIEW = 200
_MAX_RUNS = 10_000
_published: OrderedDict[str, int] = OrderedDict()
_lock = threading.Lock()


def claim_artifact_slot(run_key: str, limit: int) -> bool | None:
    """Whether a call of run ``run_key`` may publish its artifacts (at most ``limit`` calls per
    run do); None when this call is the first one past the limit (say so once)."""
    with _lock:
        count = _published.pop(run_key, 0) + 1
        _published[run_key] = count
        while len(_published) > _MAX_RUNS:
            _published.popitem(last=False)
    if count <= limit:
        return True
    return None if count == limit + 1 else False


def image_key(sha256: str) -> str:
    """The artifact key of an image."""
    return f"gpt-image-{sha256[:16].lower()}"


def card_key(cache_key: str) -> str:
    """The artifact key of a call's card."""
    return f"gpt-image-call-{cache_key[:16].lower()}"


def card_markdown(
    refs: Sequence[ImageRef],
    *,
    params: dict[str, Any],
    outcome: str,
    cache_key: str,
    charged: float,
    estimate: float = 0.0,
) -> str:
    """The markdown card of a call: what it paid in this run (nothing when its images were
    served from the store), what the images cost when made, and the price model's estimate."""
    first = refs[0]
    lines = [
        f"### gpt-image: {md_text(outcome)}",
        "",
        "**Prompt**",
        "",
        "> " + md_text(first.prompt),
        "",
        "| parameter | value |",
        "|---|---|",
    ]
    for name, value in sorted(params.items()):
        if name in ("prompt", "images", "mask"):
            continue
        shown = value if isinstance(value, str) else json.dumps(value)
        lines.append(f"| {md_text(name)} | {md_text(str(shown))} |")
    lines += [
        f"| request id | {md_text(first.request_id or '-')} |",
        f"| paid by this run | {usd(charged)} |",
        f"| served from the store | {'yes' if outcome == 'cached' else 'no'} |",
        f"| cost of the images | {usd(sum(ref.cost for ref in refs))} |",
        f"| estimate (price model) | {usd(estimate)} |",
        f"| cache key | `{cache_key}` |",
        "",
        "**Images**",
        "",
        "| # | image | size | sha256 | stored at |",
        "|---|---|---|---|---|",
    ]
    for i, ref in enumerate(refs):
        shown = md_link("open", ref.link) if ref.link else "-"
        size = md_text(f"{ref.width}x{ref.height} {ref.format}")
        lines.append(f"| {i} | {shown} | {size} | {md_text(ref.sha256[:16])} | {md_text(ref.uri)} |")
    if first.parents:
        lines += ["", "**Made from** (sha256 of the input images, then the mask)", ""]
        lines += [f"- {md_text(sha)}" for sha in first.parents]
    return "\n".join(lines) + "\n"


async def publish_artifacts(
    refs: Sequence[ImageRef],
    *,
    params: dict[str, Any],
    outcome: str,
    cache_key: str,
    charged: float,
    estimate: float = 0.0,
) -> None:
    """Create an image artifact per ref (when it has a link) and one markdown card, all at once
    (not one after the other)."""
    creations: list[Any] = [
        acreate_image_artifact(
            image_url=ref.link,
            key=image_key(ref.sha256),
            description=md_text(f"{ref.width}x{ref.height} {ref.format}: {ref.prompt[:_PROMPT_PREVIEW]}"),
        )
        for ref in refs
        if ref.link
    ]
    creations.append(
        acreate_markdown_artifact(
            markdown=card_markdown(
                refs, params=params, outcome=outcome, cache_key=cache_key, charged=charged, estimate=estimate
            ),
            key=card_key(cache_key),
            description=md_text(f"gpt-image call ({outcome}): {refs[0].prompt[:_PROMPT_PREVIEW]}"),
        )
    )
    results = await asyncio.gather(*creations, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
