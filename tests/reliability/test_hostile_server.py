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
from tests.support.judge import bucket_objects, media_gets

from .conftest import CANARY_KEY, fast_settings, s3_storage_block, walk_files
from .hostile import SCENARIOS, HostileServer

pytestmark = pytest.mark.usefixtures("rel_env")

Outcome = tuple[str, str]
"""The error's class name and message, or ("stored", uris) when the task succeeded."""

MEDIA_RETRY_SECONDS = 0.5
"""The media retry window of these tests: a URL that keeps failing is given up quickly."""
AGAIN = -1
"""Expected GETs of a URL that fails in a way a fresh URL may recover from: more than one."""

# sandbox fault kind, stream?, expected error class, a fragment of its message, media GETs
SANDBOX_CASES: list[tuple[str, bool, str, str, int]] = [
    ("url_offhost", False, "UnsafeURLError", "not in the allowed media hosts", 0),
    ("url_private", False, "UnsafeURLError", "10.0.0.1", 0),
    (
        "media_redirect_offhost",
        False,
        "UnsafeURLError",
        "evil.example.com is not in the allowed media hosts",
        1,
    ),
    ("media_not_image", False, "DownloadError", "not a valid image: not a PNG, JPEG or WebP", 1),
    ("media_truncated", False, "DownloadError", "not a valid image: the png data does not decode", 1),
    ("media_404", False, "DownloadError", "billed but not delivered", AGAIN),
    ("malformed_json", False, "InvalidResponseError", "not an images response", 0),
    ("malformed_json", True, "InvalidResponseError", "malformed stream event", 0),
    ("stream_truncate", True, "OutcomeUnknownError", "stream ended without a completed image", 0),
    ("stream_error", True, "StreamErrorEvent", "image_generation_failed", 0),
]

# hostile scenario, stream?, expected error class, a fragment of its message, media GETs
HOSTILE_CASES: list[tuple[str, bool, str, str, int]] = [
    ("file-url", False, "UnsafeURLError", "scheme 'file' is not allowed", 0),
    ("data-url", False, "UnsafeURLError", "scheme 'data' is not allowed", 0),
    ("link-local-url", False, "UnsafeURLError", "169.254.169.254", 0),
    ("ipv6-link-local-url", False, "UnsafeURLError", "non-public address fe80::1", 0),
    ("private-https-url", False, "UnsafeURLError", "non-public address 192.168.1.20", 0),
    ("offhost-https-url", False, "UnsafeURLError", "not in the allowed media hosts", 0),
    ("userinfo-offhost-url", False, "UnsafeURLError", "host evil.example is not in the allowed", 0),
    ("redirect-private", False, "UnsafeURLError", "non-public address 10.1.2.3", 1),
    ("redirect-link-local", False, "UnsafeURLError", "169.254.169.254", 1),
    ("redirect-file", False, "UnsafeURLError", "scheme 'file' is not allowed", 1),
    ("redirect-loop", False, "UnsafeURLError", "more than 3 redirects", 4),
    ("oversized-declared", False, "DownloadError", "over the 104857600 cap", 1),
    ("oversized-streamed", False, "DownloadError", "exceeds the 104857600-byte cap", 1),
    ("wrong-size-image", False, "DownloadError", "expected 1024x640, got 512x512", 1),
    ("wrong-format-image", False, "DownloadError", "expected a png image, got jpeg", 1),
    ("b64-not-image", False, "DownloadError", "b64_json is not a valid image", 0),
    ("b64-not-base64", False, "DownloadError", "b64_json is not valid base64", 0),
    ("html-body", False, "InvalidResponseError", "not an images response", 0),
    ("empty-data", False, "InvalidResponseError", "no images", 0),
    ("no-url-no-b64", False, "InvalidResponseError", "neither url nor b64_json", 0),
    ("sse-not-json", True, "InvalidResponseError", "malformed stream event", 0),
    ("sse-no-completed", True, "OutcomeUnknownError", "stream ended without a completed image", 0),
    ("sse-done-without-image", True, "OutcomeUnknownError", "stream ended without a completed image", 0),
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
    settings = fast_settings(max_attempts=2, media_retry_seconds=MEDIA_RETRY_SECONDS)

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


def _check(
    cases: list[tuple[str, bool, str, str, int]],
    outcomes: dict[int, tuple[Outcome, list[str]]],
    gets: list[int],
) -> None:
    """Each case's error, nothing written, no key in the message, and its media GETs (``gets``,
    counted by the server): a refused URL never fetched, a bad body or a refused hop never
    fetched again, a URL failing like a fresh one fetched again before it is given up."""
    problems = []
    for i, (case, stream, error, fragment, expected_gets) in enumerate(cases):
        (kind, message), written = outcomes[i]
        label = f"{case}{' (stream)' if stream else ''}"
        if kind != error or fragment not in message:
            problems.append(f"{label}: expected {error} with {fragment!r}, got {kind}: {message}")
        if written:
            problems.append(f"{label}: wrote {written}")
        if CANARY_KEY in message:
            problems.append(f"{label}: the key is in the message")
        if gets[i] != expected_gets and not (expected_gets == AGAIN and gets[i] > 1):
            want = "more than 1" if expected_gets == AGAIN else expected_gets
            problems.append(f"{label}: {gets[i]} media GET(s), expected {want}")
    assert not problems, "\n".join(problems)


def test_sandbox_hostile_answers_are_refused_and_nothing_is_stored(
    make_sandbox: Any, bucket: tuple[LocalS3Server, str, GptImageStorage]
) -> None:
    server, name, storage = bucket
    sandbox = make_sandbox(latency=0.01)
    credentials = GptImageCredentials(api_key=CANARY_KEY, base_url=sandbox.base_url)

    outcomes = _attempt_all(
        [(kind, stream) for kind, stream, *_ in SANDBOX_CASES],
        lambda kind: sandbox.script_faults([kind]),
        credentials,
        storage,
        _written(server, name),
    )
    # one request each: none of these may be retried (they may have been billed, or are not transient)
    requests = sandbox.ledger.requests
    assert len(requests) == len(SANDBOX_CASES)
    gets = media_gets(sandbox)
    _check(SANDBOX_CASES, outcomes, [gets.get(r["request_id"], 0) for r in requests])
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
        [(case, stream) for case, stream, *_ in HOSTILE_CASES],
        prepare,
        credentials,
        storage,
        _written(server, name),
    )
    _check(HOSTILE_CASES, outcomes, [hostile.media_gets[case] for case, *_ in HOSTILE_CASES])
    assert set(hostile.media_gets) <= {case for case, *_ in HOSTILE_CASES}
    assert hostile.api_requests == len(HOSTILE_CASES)  # none retried
    assert bucket_objects(server, name) == []
