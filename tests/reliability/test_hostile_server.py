"""A hostile or broken server, through the generate_image TASK: result URLs off the allowlist, on
private or link-local addresses or with the ``file:`` scheme, redirects off the allowlist,
oversized or non-image bodies, truncated streams, malformed JSON and SSE. Each is refused with a
clear error, and nothing reaches storage (the bucket stays empty) or the spool.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prefect import flow

from prefect_gpt_image.blocks import GptImageCredentials, GptImageStorage
from prefect_gpt_image.local_s3 import LocalS3Server
from prefect_gpt_image.tasks import generate_image

from .conftest import CANARY_KEY, bucket_objects, fast_settings, s3_storage_block, walk_files
from .hostile import SCENARIOS, HostileServer

pytestmark = pytest.mark.usefixtures("rel_env")

Outcome = tuple[str, str]
"""The error's class name and message, or ("stored", uris) when the task succeeded."""

# sandbox fault kind, stream?, expected error class, a fragment of its message
SANDBOX_CASES: list[tuple[str, bool, str, str]] = [
    ("url_offhost", False, "UnsafeURLError", "not in the allowed media hosts"),
    ("url_private", False, "UnsafeURLError", "10.0.0.1"),
    ("media_redirect_offhost", False, "UnsafeURLError", "evil.example.com is not in the allowed media hosts"),
    ("media_not_image", False, "DownloadError", "not a valid image: not a PNG, JPEG or WebP"),
    ("media_truncated", False, "DownloadError", "not a valid image: the png data does not decode"),
    ("media_404", False, "DownloadError", "HTTP 404"),
    ("malformed_json", False, "InvalidResponseError", "not an images response"),
    ("malformed_json", True, "InvalidResponseError", "malformed stream event"),
    ("stream_truncate", True, "OutcomeUnknownError", "stream ended without a completed image"),
    ("stream_error", True, "StreamErrorEvent", "image_generation_failed"),
]

# hostile scenario, stream?, expected error class, a fragment of its message
HOSTILE_CASES: list[tuple[str, bool, str, str]] = [
    ("file-url", False, "UnsafeURLError", "scheme 'file' is not allowed"),
    ("data-url", False, "UnsafeURLError", "scheme 'data' is not allowed"),
    ("link-local-url", False, "UnsafeURLError", "169.254.169.254"),
    ("ipv6-link-local-url", False, "UnsafeURLError", "non-public address fe80::1"),
    ("private-https-url", False, "UnsafeURLError", "non-public address 192.168.1.20"),
    ("offhost-https-url", False, "UnsafeURLError", "not in the allowed media hosts"),
    ("userinfo-offhost-url", False, "UnsafeURLError", "host evil.example is not in the allowed media hosts"),
    ("redirect-private", False, "UnsafeURLError", "non-public address 10.1.2.3"),
    ("redirect-link-local", False, "UnsafeURLError", "169.254.169.254"),
    ("redirect-file", False, "UnsafeURLError", "scheme 'file' is not allowed"),
    ("redirect-loop", False, "UnsafeURLError", "more than 3 redirects"),
    ("oversized-declared", False, "DownloadError", "over the 104857600 cap"),
    ("oversized-streamed", False, "DownloadError", "exceeds the 104857600-byte cap"),
    ("wrong-size-image", False, "DownloadError", "expected 1024x640, got 512x512"),
    ("wrong-format-image", False, "DownloadError", "expected a png image, got jpeg"),
    ("b64-not-image", False, "DownloadError", "b64_json is not a valid image"),
    ("b64-not-base64", False, "DownloadError", "b64_json is not valid base64"),
    ("html-body", False, "InvalidResponseError", "not an images response"),
    ("empty-data", False, "InvalidResponseError", "no images"),
    ("no-url-no-b64", False, "InvalidResponseError", "neither url nor b64_json"),
    ("sse-not-json", True, "InvalidResponseError", "malformed stream event"),
    ("sse-no-completed", True, "OutcomeUnknownError", "stream ended without a completed image"),
    ("sse-done-without-image", True, "OutcomeUnknownError", "stream ended without a completed image"),
]


@pytest.fixture
def bucket(local_s3: LocalS3Server, s3_bucket: str) -> tuple[LocalS3Server, str, GptImageStorage]:
    return local_s3, s3_bucket, s3_storage_block(local_s3, s3_bucket)


def _attempt_all(
    cases: list[tuple[str, bool]],
    prepare: Callable[[str], None],
    credentials: GptImageCredentials,
    storage: GptImageStorage,
    after_each: Callable[[], list[str]],
) -> dict[int, tuple[Outcome, list[str]]]:
    """Run the task once per case in one flow; each case's outcome and what was written after it."""
    settings = fast_settings(max_attempts=2)

    @flow(name="hostile-server")
    async def attempt() -> dict[int, tuple[Outcome, list[str]]]:
        outcomes: dict[int, tuple[Outcome, list[str]]] = {}
        for i, (case, stream) in enumerate(cases):
            prepare(case)
            try:
                refs = await generate_image(
                    f"hostile case {i}: {case}",
                    stream=stream,
                    partial_images=1 if stream else None,
                    credentials=credentials,
                    settings=settings,
                    storage=storage,
                )
                outcome: Outcome = ("stored", " ".join(ref.uri for ref in refs))
            except Exception as exc:
                outcome = (type(exc).__name__, str(exc))
            outcomes[i] = (outcome, after_each())
        return outcomes

    return asyncio.run(attempt())


def _written(server: LocalS3Server, bucket: str) -> Callable[[], list[str]]:
    spool = Path(os.environ["GPT_IMAGE_SPOOL"])

    def written() -> list[str]:
        return bucket_objects(server, bucket) + [str(p) for p in walk_files(spool)]

    return written


def _check(cases: list[tuple[str, bool, str, str]], outcomes: dict[int, tuple[Outcome, list[str]]]) -> None:
    problems = []
    for i, (case, stream, error, fragment) in enumerate(cases):
        (kind, message), written = outcomes[i]
        label = f"{case}{' (stream)' if stream else ''}"
        if kind != error or fragment not in message:
            problems.append(f"{label}: expected {error} with {fragment!r}, got {kind}: {message}")
        if written:
            problems.append(f"{label}: wrote {written}")
        if CANARY_KEY in message:
            problems.append(f"{label}: the key is in the message")
    assert not problems, "\n".join(problems)


def test_sandbox_hostile_answers_are_refused_and_nothing_is_stored(
    make_sandbox: Any, bucket: tuple[LocalS3Server, str, GptImageStorage]
) -> None:
    server, name, storage = bucket
    sandbox = make_sandbox(latency=0.01)
    credentials = GptImageCredentials(api_key=CANARY_KEY, base_url=sandbox.base_url)

    outcomes = _attempt_all(
        [(kind, stream) for kind, stream, _, _ in SANDBOX_CASES],
        lambda kind: sandbox.script_faults([kind]),
        credentials,
        storage,
        _written(server, name),
    )
    _check(SANDBOX_CASES, outcomes)
    # one request each: none of these may be retried (they may have been billed, or are not transient)
    assert len(sandbox.ledger.requests) == len(SANDBOX_CASES)
    assert bucket_objects(server, name) == []


@pytest.fixture
def hostile() -> Iterator[HostileServer]:
    with HostileServer() as server:
        yield server


def test_hostile_gateway_answers_are_refused_and_nothing_is_stored(
    hostile: HostileServer, bucket: tuple[LocalS3Server, str, GptImageStorage]
) -> None:
    assert {case for case, *_ in HOSTILE_CASES} | {"echo-key-401"} == set(SCENARIOS)
    server, name, storage = bucket
    credentials = GptImageCredentials(api_key=CANARY_KEY, base_url=hostile.base_url)

    def prepare(scenario: str) -> None:
        hostile.scenario = scenario

    outcomes = _attempt_all(
        [(case, stream) for case, stream, _, _ in HOSTILE_CASES],
        prepare,
        credentials,
        storage,
        _written(server, name),
    )
    _check(HOSTILE_CASES, outcomes)
    assert hostile.api_requests == len(HOSTILE_CASES)  # none retried
    assert bucket_objects(server, name) == []
