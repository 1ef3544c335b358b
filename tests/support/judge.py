"""The sandbox as the judge of a reliability test: what it billed and delivered (its ledger), what
each result URL was asked (its media GET counts), and what a store really holds (the bytes, hashed).

A test judges by these, never by the plugin's own log lines, file names or constants:

- :func:`delivered_images`: the sha256s the ledger says were delivered, by request id;
- :func:`stored_hashes`: the sha256 of every image's bytes in a store (an S3 bucket, read with
  boto3, or a local folder);
- :func:`assert_stored_equals_delivered`: every delivered image's bytes are in the store (what is
  missing is named with its request id) and every stored image was billed;
- :func:`billed_per_prompt` / :func:`assert_billed_once`: how often each prompt was paid for;
- :func:`ledger_cost`: what the ledger charged, at its own price;
- :func:`media_gets`: how many GETs each request's result URLs received;
- :func:`held_requests` / :func:`unheld_answers_stored`: the answers whose downloads the sandbox
  holds, and whether every other one is stored (the moment to kill a client in its window).

Everything is read over the sandbox's JSON endpoints (``sandbox.url``), as any client would.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import httpx

from prefect_gpt_image.local_s3 import LocalS3Server
from tests.support.sandbox import ledger, sandbox_requests

__all__ = [
    "DERIVED_FOLDERS",
    "IMAGE_SUFFIXES",
    "assert_billed_once",
    "assert_stored_equals_delivered",
    "billed_images_by_request",
    "billed_per_prompt",
    "bucket_objects",
    "delivered_images",
    "folder_image_hashes",
    "held_requests",
    "image_files",
    "ledger_cost",
    "media_counts",
    "media_gets",
    "s3_image_hashes",
    "stored_hashes",
    "unheld_answers_stored",
]

IMAGE_SUFFIXES = (".png", ".jpeg", ".jpg", ".webp")
"""File and key endings of stored images (manifests and records are not images)."""
DERIVED_FOLDERS = frozenset({"thumbs", "reports"})
"""Folders of a store that hold pictures made from the images, not images the API delivered:
thumbnails (``thumbs/``, made once per image for contact sheets) and report charts (``reports/``),
as docs/storage-and-blocks.md lays the store out. They are judged by their own tests."""


def _is_image(name: str) -> bool:
    """Whether a stored file or key is an image the API delivered (by its ending and folder)."""
    parts = name.replace("\\", "/").split("/")
    return name.lower().endswith(IMAGE_SUFFIXES) and not DERIVED_FOLDERS.intersection(parts[:-1])


Store = Path | tuple[LocalS3Server, str]
"""Where images were stored: a local folder, or (server, bucket) of a real S3 server."""


# -- the ledger ------------------------------------------------------------------------------------


def _entries(sandbox: Any) -> list[dict[str, Any]]:
    return list(ledger(sandbox)["entries"])


def delivered_images(sandbox: Any) -> dict[str, list[str]]:
    """The sha256 of every image the sandbox billed AND delivered, by request id."""
    return {e["request_id"]: [i["sha256"] for i in e["images"]] for e in _entries(sandbox) if e["delivered"]}


def billed_images_by_request(sandbox: Any) -> dict[str, list[str]]:
    """The sha256 of every image the sandbox billed (delivered or not), by request id."""
    return {e["request_id"]: [i["sha256"] for i in e["images"]] for e in _entries(sandbox)}


def ledger_cost(sandbox: Any, request_ids: Iterable[str] | None = None) -> float:
    """What the ledger charged (at its own price per image): in all, or for ``request_ids``."""
    wanted = None if request_ids is None else set(request_ids)
    return math.fsum(e["cost"] for e in _entries(sandbox) if wanted is None or e["request_id"] in wanted)


def billed_per_prompt(sandbox: Any) -> Counter[str]:
    """How many billed requests each prompt had (the request log gives the prompt)."""
    prompts = {r["request_id"]: r["fields"].get("prompt") for r in sandbox_requests(sandbox)}
    return Counter(str(prompts.get(e["request_id"])) for e in _entries(sandbox))


def assert_billed_once(sandbox: Any, prompts: Iterable[str]) -> None:
    """Each prompt was billed exactly as many times as it is listed in ``prompts`` (once, for a
    list of distinct prompts), and nothing else was billed."""
    wanted = Counter(prompts)
    billed = billed_per_prompt(sandbox)
    wrong = {p: billed.get(p, 0) for p in set(wanted) | set(billed) if billed.get(p, 0) != wanted.get(p, 0)}
    assert not wrong, f"prompts billed other than once (prompt: times billed): {wrong}"


# -- media GETs ------------------------------------------------------------------------------------


def media_counts(sandbox: Any) -> dict[str, dict[str, Any]]:
    """GET counts of every result URL, by media name (``GET /sandbox/media``)."""
    return dict(httpx.get(f"{sandbox.url}/sandbox/media").json())


def media_gets(sandbox: Any) -> dict[str, int]:
    """How many GETs the result URLs of each request received, by request id."""
    gets: Counter[str] = Counter()
    for counted in media_counts(sandbox).values():
        gets[str(counted["request_id"])] += int(counted["hits"])
    return dict(gets)


# -- the store ------------------------------------------------------------------------------------


def bucket_objects(server: LocalS3Server, bucket: str) -> list[str]:
    """Every key in ``bucket``."""
    client = server.client()
    keys: list[str] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        keys.extend(obj["Key"] for obj in page.get("Contents", []))
    return keys


def image_files(root: Path) -> list[Path]:
    """Image files under a local store folder."""
    return sorted(p for p in root.rglob("*") if _is_image(p.relative_to(root).as_posix()) and p.is_file())


def s3_image_hashes(server: LocalS3Server, bucket: str) -> dict[str, str]:
    """The sha256 of every image object's bytes in ``bucket`` -> its key."""
    client = server.client()
    found: dict[str, str] = {}
    for key in bucket_objects(server, bucket):
        if _is_image(key):
            body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
            found[hashlib.sha256(body).hexdigest()] = key
    return found


def folder_image_hashes(root: Path) -> dict[str, str]:
    """The sha256 of every image file's bytes under ``root`` -> its path."""
    return {hashlib.sha256(p.read_bytes()).hexdigest(): str(p) for p in image_files(root)}


def stored_hashes(store: Store) -> dict[str, str]:
    """The sha256 of every image's bytes in ``store`` (a folder, or (server, bucket)) -> where."""
    if isinstance(store, Path):
        return folder_image_hashes(store)
    return s3_image_hashes(*store)


def _missing(delivered: dict[str, list[str]], stored: dict[str, str]) -> Iterator[str]:
    for request_id, hashes in sorted(delivered.items()):
        for sha in hashes:
            if sha not in stored:
                yield f"request {request_id}: image {sha}"


def assert_stored_equals_delivered(
    sandbox: Any, store: Store, *, undelivered: Iterable[str] = ()
) -> dict[str, str]:
    """Every image the ledger says was delivered has its bytes in ``store``, and every image in
    ``store`` was billed by ``sandbox``; returns the stored hashes.

    ``undelivered`` lists request ids the test expects to be delivered but not stored (a URL given
    up, reported as billed and not delivered); they must really be missing.
    """
    stored = stored_hashes(store)
    delivered = delivered_images(sandbox)
    excused = set(undelivered)
    missing = list(_missing({r: h for r, h in delivered.items() if r not in excused}, stored))
    assert not missing, "delivered (billed) but not stored:\n" + "\n".join(missing)
    not_missing = [r for r in sorted(excused) if r in delivered and all(h in stored for h in delivered[r])]
    assert not not_missing, f"expected not stored, but stored: {not_missing}"
    billed = {sha for hashes in billed_images_by_request(sandbox).values() for sha in hashes}
    unbilled = sorted(where for sha, where in stored.items() if sha not in billed)
    assert not unbilled, f"stored but never billed by the sandbox: {unbilled}"
    return stored


# -- the answer hold (a kill between an answer and its store) ------------------------------------


def held_requests(sandbox: Any) -> set[str]:
    """The request ids whose result downloads the sandbox holds now (``GET /sandbox/hold``)."""
    held = httpx.get(f"{sandbox.url}/sandbox/hold").json()["held"]
    return {str(name).rsplit("-", 1)[0] for name in held}


def unheld_answers_stored(sandbox: Any, server: LocalS3Server, bucket: str, prefix: str) -> bool:
    """Whether every answer the sandbox delivered, but for those whose downloads it holds, is
    stored under ``prefix`` of ``bucket`` (its images listed by name) with as many cache records
    as such answers: no call is half stored. What a test waits on before it kills the client,
    so that the window it kills in is exactly the held answers."""
    held = held_requests(sandbox)
    answered = {r: shas for r, shas in delivered_images(sandbox).items() if r not in held}
    keys = bucket_objects(server, bucket)
    names = {k.rsplit("/", 1)[-1].split(".")[0] for k in keys if k.startswith(f"{prefix}/images/")}
    records = sum(k.startswith(f"{prefix}/cache/") for k in keys)
    return all(sha in names for shas in answered.values() for sha in shas) and records == len(answered)
