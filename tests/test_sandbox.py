"""The offline gpt-image-2 sandbox, driven over real HTTP with plain httpx."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import random
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from PIL import Image, UnidentifiedImageError

from prefect_gpt_image.sandbox import FAULT_KINDS, FaultConfig, SandboxConfig, SandboxServer
from prefect_gpt_image.sandbox.cli import add_arguments, config_from_args
from tests.support.sandbox import HeldWaits, wait_until

KEY = "sk-sandbox-test-key"
RID = re.compile(r"^[A-Za-z0-9]{31}$")
GEN = "/images/generations"
EDIT = "/images/edits"


# ---------------------------------------------------------------------------------------------
# helpers


def api(sb: SandboxServer, key: str | None = KEY, timeout: float = 10.0) -> httpx.Client:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.Client(base_url=sb.base_url, headers=headers, timeout=timeout)


def gen_body(**fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "gpt-image-2", "prompt": "a red fox in the snow", "quality": "low"}
    body.update(fields)
    return body


def image_bytes(
    size: tuple[int, int] = (1024, 1024),
    color: tuple[int, ...] = (30, 120, 220),
    fmt: str = "PNG",
    mode: str = "RGB",
) -> bytes:
    img = Image.new(mode, size, color)
    if mode == "RGB":  # some structure, so "kept the rest" is a real pixel comparison
        for x in range(0, size[0], 64):
            img.paste((x % 256, 255 - x % 256, 90), (x, 0, x + 16, size[1]))
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


def mask_bytes(size: tuple[int, int], hole: tuple[int, int, int, int], alpha: bool = True) -> bytes:
    img = Image.new("RGBA", size, (0, 0, 0, 255))
    img.paste((0, 0, 0, 0), hole)
    if not alpha:
        img = img.convert("RGB")
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def decode(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


def assert_error(resp: httpx.Response, status: int, code: str, param: str | None = "any") -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    rid = resp.headers["x-oneapi-request-id"]
    assert RID.match(rid)
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["code"] == code
    assert isinstance(err["type"], str) and err["type"]
    assert err["message"].endswith(f" (request id: {rid})")
    if param != "any":
        assert err["param"] == param
    return dict(err)


def sse_events(text: str) -> list[tuple[str, str]]:
    """(event, data) pairs of a complete SSE body, checking the framing as it goes."""
    assert text.startswith(": PING\n\n")
    frames = text[len(": PING\n\n") :].split("\n\n")
    assert frames[-1] == ""
    out = []
    for frame in frames[:-1]:
        lines = frame.split("\n")
        if lines[0].startswith("event: "):
            assert len(lines) == 2 and lines[1].startswith("data: ")
            out.append((lines[0][7:], lines[1][6:]))
        else:
            assert lines == ["data: [DONE]"]
            out.append(("", "[DONE]"))
    return out


@pytest.fixture
def sb() -> Iterator[SandboxServer]:
    with SandboxServer() as server:
        yield server


@pytest.fixture
def b64sb() -> Iterator[SandboxServer]:
    with SandboxServer(result_mode="b64_json") as server:
        yield server


# ---------------------------------------------------------------------------------------------
# routes and results


def test_models_route_and_request_id_header(sb: SandboxServer) -> None:
    with api(sb) as c:
        first, second = c.get("/models"), c.get("/models")
        one = c.get("/models/gpt-image-2")
        other = c.get("/models/dall-e-3")
        missing = c.get("/no/such/path")
    assert first.status_code == 200
    assert first.json()["object"] == "list"
    assert [m["id"] for m in first.json()["data"]] == ["gpt-image-2"]
    assert one.json()["id"] == "gpt-image-2"
    ids = {r.headers["x-oneapi-request-id"] for r in (first, second, one)}
    assert len(ids) == 3 and all(RID.match(i) for i in ids)
    assert_error(other, 404, "model_not_found", "model")
    assert_error(missing, 404, "not_found")


@pytest.mark.parametrize(
    ("fmt", "size", "pil"),
    [("png", "1024x1024", "PNG"), ("jpeg", "1536x1024", "JPEG"), ("webp", "1024x1536", "WEBP")],
)
def test_generation_serves_decodable_image_of_size_and_format(
    sb: SandboxServer, fmt: str, size: str, pil: str
) -> None:
    with api(sb) as c:
        resp = c.post(GEN, json=gen_body(output_format=fmt, size=size))
        assert resp.status_code == 200, resp.text
        body = resp.json()
        rid = resp.headers["x-oneapi-request-id"]
        url = body["data"][0]["url"]
        assert url == f"http://127.0.0.1:{sb.port}/media/{rid}-1.{fmt}"
        media = httpx.get(url)
    assert body["output_format"] == fmt and body["size"] == size and body["quality"] == "low"
    assert body["background"] == "opaque" and isinstance(body["created"], int)
    usage = body["usage"]
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"] > 0
    assert set(usage["input_tokens_details"]) == {"text_tokens", "image_tokens"}
    assert media.status_code == 200 and media.headers["content-type"] == f"image/{fmt}"
    img = decode(media.content)
    assert img.format == pil and f"{img.width}x{img.height}" == size


def test_auto_size_is_1024_and_n_images_differ(b64sb: SandboxServer) -> None:
    with api(b64sb) as c:
        body = c.post(GEN, json=gen_body(n=3, size="auto")).json()
    assert body["size"] == "1024x1024"
    blobs = [base64.b64decode(item["b64_json"]) for item in body["data"]]
    assert len({hashlib.sha256(b).hexdigest() for b in blobs}) == 3
    assert all(decode(b).size == (1024, 1024) for b in blobs)


def test_4k_image_is_rendered_once_and_deterministic(b64sb: SandboxServer) -> None:
    fields = gen_body(size="3840x2160", output_format="jpeg", output_compression=70)
    with api(b64sb) as c:
        first = c.post(GEN, json=fields).json()["data"][0]["b64_json"]
        second = c.post(GEN, json=fields).json()["data"][0]["b64_json"]
        other = c.post(GEN, json={**fields, "prompt": "a blue whale"}).json()["data"][0]["b64_json"]
    assert decode(base64.b64decode(first)).size == (3840, 2160)
    assert first == second != other
    assert b64sb.state.renders.misses == 2 and b64sb.state.renders.hits == 1


def test_same_request_same_bytes_across_servers() -> None:
    blobs = []
    for _ in range(2):
        with SandboxServer(result_mode="b64_json") as server, api(server) as c:
            blobs.append(c.post(GEN, json=gen_body(output_format="webp")).json()["data"][0]["b64_json"])
    assert blobs[0] == blobs[1]


def test_edit_with_mask_repaints_masked_region_only(b64sb: SandboxServer) -> None:
    src = image_bytes()
    hole = (256, 320, 768, 704)
    files = [
        ("image", ("photo.png", src, "image/png")),
        ("mask", ("mask.png", mask_bytes((1024, 1024), hole), "image/png")),
    ]
    with api(b64sb) as c:
        resp = c.post(EDIT, data={"model": "gpt-image-2", "prompt": "add a moon", "n": "2"}, files=files)
    assert resp.status_code == 200, resp.text
    before = decode(src).convert("RGB")
    outs = [decode(base64.b64decode(item["b64_json"])).convert("RGB") for item in resp.json()["data"]]
    for out in outs:
        assert out.size == (1024, 1024)
        inside = outside = changed_inside = changed_outside = 0
        for y in range(0, 1024, 16):
            for x in range(0, 1024, 16):
                differs = out.getpixel((x, y)) != before.getpixel((x, y))
                if hole[0] <= x < hole[2] and hole[1] <= y < hole[3]:
                    inside += 1
                    changed_inside += differs
                else:
                    outside += 1
                    changed_outside += differs
        assert changed_outside == 0
        assert changed_inside > inside * 0.9
    assert outs[0].tobytes() != outs[1].tobytes()


def test_edit_size_follows_first_image_and_unmasked_edit_changes_it(b64sb: SandboxServer) -> None:
    src = image_bytes((1536, 1024), fmt="JPEG")
    with api(b64sb) as c:
        resp = c.post(
            EDIT, data={"model": "gpt-image-2", "prompt": "p"}, files={"image": ("a.jpg", src, "image/jpeg")}
        )
        small = c.post(
            EDIT,
            data={"model": "gpt-image-2", "prompt": "p"},
            files={"image": ("s.png", image_bytes((300, 200)), "image/png")},
        )
    assert resp.json()["size"] == "1536x1024" and small.json()["size"] == "1024x1024"
    out = decode(base64.b64decode(resp.json()["data"][0]["b64_json"]))
    assert out.size == (1536, 1024) and out.format == "PNG"
    assert out.convert("RGB").getpixel((700, 500)) != decode(src).convert("RGB").getpixel((700, 500))


@pytest.mark.parametrize("part", ["image", "image[]"])
def test_edit_accepts_repeated_image_parts_and_logs_them(sb: SandboxServer, part: str) -> None:
    files = [(part, (f"ref{i}.png", image_bytes(color=(i * 15, 0, 0)), "image/png")) for i in range(16)]
    files[3] = (part, ("ref3.webp", image_bytes(fmt="WEBP"), "image/webp"))
    with api(sb) as c:
        ok = c.post(EDIT, data={"model": "gpt-image-2", "prompt": "collage", "quality": "low"}, files=files)
        too_many = c.post(
            EDIT,
            data={"model": "gpt-image-2", "prompt": "collage"},
            files=[*files, (part, ("x.png", image_bytes(), "image/png"))],
        )
    assert ok.status_code == 200, ok.text
    assert_error(too_many, 400, "invalid_value", "image")
    entry = sb.ledger.request(ok.headers["x-oneapi-request-id"])
    assert entry is not None
    assert entry["fields"] == {"model": "gpt-image-2", "prompt": "collage", "quality": "low"}
    assert [f["field"] for f in entry["files"]] == [part] * 16
    assert entry["files"][3]["filename"] == "ref3.webp"
    assert entry["files"][3]["content_type"] == "image/webp"
    assert entry["files"][0]["sha256"] == hashlib.sha256(files[0][1][1]).hexdigest()
    assert entry["files"][0]["size"] == len(files[0][1][1])


# ---------------------------------------------------------------------------------------------
# refusals


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"size": "1000x1000"}, "size"),
        ({"size": "4096x4096"}, "size"),
        ({"response_format": "url"}, "response_format"),
        ({"quality": "standard"}, "quality"),
        ({"background": "transparent"}, "background"),
        ({"output_compression": 50}, "output_compression"),
        ({"partial_images": 2}, "partial_images"),
        ({"n": 11}, "n"),
        ({"prompt": "  "}, "prompt"),
    ],
)
def test_generation_validation_errors(sb: SandboxServer, fields: dict[str, Any], param: str) -> None:
    with api(sb) as c:
        resp = c.post(GEN, json=gen_body(**fields))
    err = assert_error(resp, 400, "invalid_value", param)
    assert err["type"] == "invalid_request_error"
    assert sb.ledger.billed_images == 0


def test_bad_json_and_missing_model(sb: SandboxServer) -> None:
    with api(sb) as c:
        bad = c.post(GEN, content=b"{not json", headers={"content-type": "application/json"})
        no_model = c.post(GEN, json={"prompt": "x"})
    assert_error(bad, 400, "bad_request_body")
    assert_error(no_model, 400, "invalid_value", "model")


def test_edit_validation_errors(sb: SandboxServer) -> None:
    src = image_bytes()
    form = {"model": "gpt-image-2", "prompt": "p"}
    with api(sb) as c:
        wrong_size = c.post(
            EDIT,
            data=form,
            files=[
                ("image[]", ("a.png", src, "image/png")),
                ("mask", ("m.png", mask_bytes((512, 512), (0, 0, 64, 64)), "image/png")),
            ],
        )
        no_alpha = c.post(
            EDIT,
            data=form,
            files=[
                ("image[]", ("a.png", src, "image/png")),
                ("mask", ("m.png", mask_bytes((1024, 1024), (0, 0, 64, 64), alpha=False), "image/png")),
            ],
        )
        not_image = c.post(EDIT, data=form, files={"image": ("a.png", b"hello, not a png", "image/png")})
        no_image = c.post(
            EDIT, data=form, files={"mask": ("m.png", mask_bytes((1024, 1024), (0, 0, 9, 9)), "image/png")}
        )
        as_json = c.post(EDIT, json=form)
        stream_n = c.post(
            EDIT, data={**form, "stream": "true", "n": "2"}, files={"image": ("a.png", src, "image/png")}
        )
    assert_error(wrong_size, 400, "invalid_value", "mask")
    assert_error(no_alpha, 400, "invalid_mask_image_format", "mask")
    assert_error(not_image, 400, "invalid_image_file", "image")
    assert_error(no_image, 400, "invalid_value", "image")
    assert_error(as_json, 400, "bad_request_body")
    assert_error(stream_n, 400, "invalid_value", "n")


def test_auth_with_configured_keys_never_logs_key() -> None:
    with SandboxServer(keys=("sk-good", "sk-other")) as server:
        with api(server, key=None) as c:
            missing = c.post(GEN, json=gen_body())
        with api(server, key="sk-bad-secret") as c:
            bad = c.post(GEN, json=gen_body())
            bad_models = c.get("/models")
        with api(server, key="sk-good") as c:
            good = c.post(GEN, json=gen_body())
        log = httpx.get(f"{server.url}/sandbox/requests").text
        ledger = httpx.get(f"{server.url}/sandbox/ledger").text
    for resp in (missing, bad, bad_models):
        assert_error(resp, 401, "invalid_api_key")
        assert "sk-bad-secret" not in resp.text
    assert good.status_code == 200
    assert [e["auth_ok"] for e in json.loads(log)["requests"]] == [False, False, False, True]
    for secret in ("sk-bad-secret", "sk-good", "sk-other"):
        assert secret not in log and secret not in ledger


def test_any_key_accepted_without_keys_but_one_is_required(sb: SandboxServer) -> None:
    with api(sb, key="whatever") as c:
        assert c.post(GEN, json=gen_body()).status_code == 200
    resp = httpx.post(f"{sb.base_url}{GEN}", json=gen_body(), headers={"Authorization": "Basic abc"})
    assert_error(resp, 401, "invalid_api_key")


def test_unknown_model_is_404(sb: SandboxServer) -> None:
    with api(sb) as c:
        gen = c.post(GEN, json=gen_body(model="dall-e-3"))
        edit = c.post(
            EDIT,
            data={"model": "gpt-image-1", "prompt": "p"},
            files={"image": ("a.png", image_bytes(), "image/png")},
        )
    assert_error(gen, 404, "model_not_found", "model")
    assert_error(edit, 404, "model_not_found", "model")


def test_moderation_trigger_blocks(sb: SandboxServer) -> None:
    with api(sb) as c:
        resp = c.post(GEN, json=gen_body(prompt="draw this [sandbox:block] please"))
    assert_error(resp, 400, "moderation_blocked")
    assert sb.ledger.billed_images == 0


def test_balance_is_exhausted_then_403_and_reset_restores_it() -> None:
    with SandboxServer(balance=3) as server, api(server) as c:
        assert c.post(GEN, json=gen_body(n=2)).status_code == 200
        assert_error(c.post(GEN, json=gen_body(n=2)), 403, "insufficient_user_quota")
        assert c.post(GEN, json=gen_body(n=1)).status_code == 200
        assert_error(c.post(GEN, json=gen_body()), 403, "insufficient_user_quota")
        assert server.ledger.billed_images == 3 and server.ledger.balance_remaining == 0
        server.reset()
        assert c.post(GEN, json=gen_body()).status_code == 200


def test_body_too_large_is_413() -> None:
    with SandboxServer(max_body_bytes=4096) as server, api(server) as c:
        resp = c.post(GEN, json=gen_body(prompt="x" * 5000))
        edit = c.post(
            EDIT,
            data={"model": "gpt-image-2", "prompt": "p"},
            files={"image": ("a.png", image_bytes(), "image/png")},
        )
        ok = c.post(GEN, json=gen_body())
    assert_error(resp, 413, "request_too_large")
    assert_error(edit, 413, "request_too_large")
    assert ok.status_code == 200


def test_concurrency_cap_answers_429_without_retry_after() -> None:
    """With the cap's 2 requests held in their latency, 2 more are refused with 429."""
    with SandboxServer(max_concurrency=2, latency=0.8) as server:
        waits = HeldWaits(server)

        def call(_: int) -> httpx.Response:
            with api(server) as c:
                return c.post(GEN, json=gen_body())

        with ThreadPoolExecutor(4) as pool:
            admitted = [pool.submit(call, i) for i in range(2)]
            waits.wait_asked(2)  # both in flight, held
            refused = [pool.submit(call, i) for i in range(2, 4)]
            refused_statuses = [f.result(timeout=15).status_code for f in refused]
            waits.release_all()
            results = [f.result(timeout=15) for f in admitted + refused]
        stats = server.ledger.stats()
    assert refused_statuses == [429, 429]
    assert [r.status_code for r in results] == [200, 200, 429, 429]
    for resp in results:
        if resp.status_code == 429:
            err = assert_error(resp, 429, "rate_limit_exceeded")
            assert err["type"] == "rate_limit_error"
            assert "retry-after" not in resp.headers
    assert stats["max_in_flight"] == 2 and stats["in_flight"] == 0
    assert stats["billed_images"] == 2 and stats["requests"] == 4


def test_retry_after_is_sent_only_when_configured() -> None:
    with SandboxServer(retry_after=2) as server, api(server) as c:
        server.script_faults(["429"])
        resp = c.post(GEN, json=gen_body())
    assert_error(resp, 429, "rate_limit_exceeded")
    assert resp.headers["retry-after"] == "2"


def test_latency_is_async_under_concurrency() -> None:
    """16 callers' latencies are waited at once: all 16 are in their wait together (held there
    until the test has seen it), not one after another."""
    with SandboxServer(latency=0.3) as server, api(server) as c:
        waits = HeldWaits(server)

        def call(i: int) -> int:
            return c.post(GEN, json=gen_body(prompt=f"prompt {i % 4}")).status_code

        with ThreadPoolExecutor(16) as pool:
            calls = [pool.submit(call, i) for i in range(48)]
            waits.wait_asked(16)
            in_flight_while_held = server.ledger.stats()["in_flight"]
            waits.release_all()
            statuses = [f.result() for f in calls]
        stats = server.ledger.stats()
    assert statuses == [200] * 48 and waits.requested == [0.3] * 48
    assert in_flight_while_held == 16 and stats["max_in_flight"] == 16 and stats["billed_images"] == 48


# ---------------------------------------------------------------------------------------------
# streaming


@pytest.mark.parametrize("partials", [0, 1, 2, 3])
def test_stream_partials_then_completed_then_done(sb: SandboxServer, partials: int) -> None:
    fields = gen_body(stream=True, size="1024x1536", output_format="jpeg")
    if partials:
        fields["partial_images"] = partials
    with api(sb) as c:
        resp = c.post(GEN, json=fields)
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/event-stream")
    assert RID.match(resp.headers["x-oneapi-request-id"])
    events = sse_events(resp.text)
    assert events[-1] == ("", "[DONE]")
    assert [e for e, _ in events[:-1]] == ["image_generation.partial_image"] * partials + [
        "image_generation.completed"
    ]
    datas = [json.loads(d) for _, d in events[:-1]]
    for i, data in enumerate(datas[:-1]):
        assert data["partial_image_index"] == i and data["type"] == "image_generation.partial_image"
        assert decode(base64.b64decode(data["b64_json"])).size == (1024, 1536)
    done = datas[-1]
    assert {
        "type",
        "b64_json",
        "created_at",
        "size",
        "quality",
        "background",
        "output_format",
        "usage",
    } <= set(done)
    final = decode(base64.b64decode(done["b64_json"]))
    assert final.format == "JPEG" and final.size == (1024, 1536)
    entry = sb.ledger.entry(resp.headers["x-oneapi-request-id"])
    assert entry is not None and entry["delivered"] and entry["n"] == 1


def test_edit_stream_uses_edit_events_and_options() -> None:
    with SandboxServer(stream_done=False, stream_completed_url=True) as server, api(server) as c:
        resp = c.post(
            EDIT,
            data={"model": "gpt-image-2", "prompt": "p", "stream": "true", "partial_images": "1"},
            files={"image": ("a.png", image_bytes(), "image/png")},
        )
        events = sse_events(resp.text)
        assert [e for e, _ in events] == ["image_edit.partial_image", "image_edit.completed"]
        done = json.loads(events[-1][1])
        assert "b64_json" not in done
        assert decode(httpx.get(done["url"]).content).size == (1024, 1024)


def test_stream_latency_is_spread_over_events() -> None:
    """The latency is waited in equal shares, one before each event, each event sent as soon as
    its share is over: with every later share held, the event before it still arrives."""
    with SandboxServer(latency=0.6) as server, api(server) as c:
        waits = HeldWaits(server)
        events = []
        with c.stream("POST", GEN, json=gen_body(stream=True, partial_images=2)) as resp:
            lines = resp.iter_lines()
            for count in (1, 2, 3):
                waits.wait_asked(count)
                waits.release()  # this share only: the event must come before the next one
                events.append(next(line for line in lines if line.startswith("event: ")))
            rest = [line for line in lines if line.startswith("event: ")]
    assert events == ["event: image_generation.partial_image"] * 2 + ["event: image_generation.completed"]
    assert rest == [] and waits.requested == pytest.approx([0.2, 0.2, 0.2])


# ---------------------------------------------------------------------------------------------
# faults


@pytest.mark.parametrize(
    ("kind", "status", "code"),
    [
        ("429", 429, "rate_limit_exceeded"),
        ("500", 500, "upstream_error"),
        ("502", 502, "bad_gateway"),
        ("503", 503, "no_available_channel"),
    ],
)
def test_status_faults_are_not_billed(sb: SandboxServer, kind: str, status: int, code: str) -> None:
    sb.script_faults([kind])
    with api(sb) as c:
        failed = c.post(GEN, json=gen_body())
        ok = c.post(GEN, json=gen_body())
    assert_error(failed, status, code)
    assert ok.status_code == 200
    assert sb.ledger.billed_requests == 1
    log = sb.ledger.requests
    assert [(e["status"], e["fault"]) for e in log] == [(status, kind), (200, None)]


def test_drop_breaks_connection_after_billing(sb: SandboxServer) -> None:
    sb.script_faults(["drop", "drop"])
    with api(sb) as c:
        with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
            c.post(GEN, json=gen_body(n=2))
        with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
            with c.stream("POST", GEN, json=gen_body(stream=True, partial_images=2)) as resp:
                for _ in resp.iter_lines():
                    pass
        assert c.post(GEN, json=gen_body()).status_code == 200
    entries = sb.ledger.entries
    assert [(e["n"], e["delivered"], e["fault"]) for e in entries] == [
        (2, False, "drop"),
        (1, False, "drop"),
        (1, True, None),
    ]
    assert sb.ledger.billed_images == 4


def test_slow_fault_delays_answer() -> None:
    """A ``slow`` fault waits slow_seconds before answering: while that wait is held, nothing is
    answered or billed."""
    with SandboxServer(slow_seconds=0.4) as server, api(server) as c, ThreadPoolExecutor(1) as pool:
        waits = HeldWaits(server)
        server.script_faults(["slow"])
        answer = pool.submit(c.post, GEN, json=gen_body())
        waits.wait_asked(1)
        assert server.ledger.billed_requests == 0 and not answer.done()
        waits.release()
        resp = answer.result(timeout=15)
    assert resp.status_code == 200 and waits.requested == [0.4]
    assert server.ledger.entries[0]["fault"] == "slow"


def test_media_faults(sb: SandboxServer) -> None:
    urls: dict[str, str] = {}
    with api(sb) as c:
        for kind in (
            "media_404",
            "media_fail_once",
            "media_redirect_offhost",
            "media_not_image",
            "media_truncated",
        ):
            sb.script_faults([kind])
            urls[kind] = c.post(GEN, json=gen_body()).json()["data"][0]["url"]
        good = c.post(GEN, json=gen_body()).json()["data"][0]["url"]
    assert httpx.get(urls["media_404"]).status_code == 404
    assert httpx.get(urls["media_404"]).status_code == 404
    assert httpx.get(urls["media_fail_once"]).status_code == 503
    again = httpx.get(urls["media_fail_once"])
    assert again.status_code == 200 and decode(again.content).size == (1024, 1024)
    redirect = httpx.get(urls["media_redirect_offhost"])
    assert redirect.status_code == 302 and redirect.headers["location"] == "https://evil.example.com/x.png"
    not_image = httpx.get(urls["media_not_image"])
    assert not_image.headers["content-type"] == "image/png"
    with pytest.raises(UnidentifiedImageError):
        decode(not_image.content)
    full = httpx.get(good).content
    truncated = httpx.get(urls["media_truncated"])
    assert truncated.headers["content-type"] == "image/png"
    assert truncated.content == full[: len(full) // 2]
    with pytest.raises(OSError):
        decode(truncated.content)
    assert sb.ledger.billed_requests == 6  # media faults happen after generation: billed
    assert [e["fault"] for e in sb.ledger.entries][:5] == list(urls)


@pytest.mark.parametrize("mode", ["404", "403", "503", "reset", "truncated"])
def test_flaky_media_fails_n_times_then_serves_and_is_counted(b64sb: SandboxServer, mode: str) -> None:
    b64sb.script_faults([f"media_flaky:{mode}:3"])
    with api(b64sb) as c:
        url = c.post(GEN, json=gen_body()).json()["data"][0]["url"]
    name = url.rsplit("/", 1)[1]
    sha256 = b64sb.ledger.entries[0]["images"][0]["sha256"]
    for _ in range(3):
        if mode in ("reset", "truncated"):
            with pytest.raises(httpx.RemoteProtocolError):
                httpx.get(url)
        else:
            failed = httpx.get(url)
            assert failed.status_code == int(mode) and "error" in failed.json()
    served = httpx.get(url)
    assert served.status_code == 200 and hashlib.sha256(served.content).hexdigest() == sha256
    assert httpx.get(url).status_code == 200
    counts = b64sb.media_counts()[name]
    assert counts == {
        "request_id": b64sb.ledger.entries[0]["request_id"],
        "fault": f"media_flaky:{mode}:3",
        "hits": 5,
        "served": 2,
        "failures_served": 3,
    }
    assert httpx.get(f"{b64sb.url}/sandbox/media").json() == {name: counts}


def test_media_fault_aimed_at_one_image_of_an_answer(b64sb: SandboxServer) -> None:
    b64sb.script_faults(["media_404@1"])
    with api(b64sb) as c:
        urls = [item["url"] for item in c.post(GEN, json=gen_body(n=3)).json()["data"]]
    assert [httpx.get(url).status_code for url in urls] == [200, 404, 200]
    counts = b64sb.media_counts()
    assert [counts[url.rsplit("/", 1)[1]]["fault"] for url in urls] == [None, "media_404", None]
    assert b64sb.ledger.entries[0]["fault"] == "media_404@1"
    for bad in ("429@1", "media_404@x", "media_flaky:418:2@0"):
        with pytest.raises(ValueError, match="fault"):
            b64sb.script_faults([bad])


def test_flaky_media_kind_is_checked_and_given_from_the_cli() -> None:
    import argparse

    for bad in ("media_flaky:418:2", "media_flaky:404:x", "media_flaky:"):
        with pytest.raises(ValueError, match="media_flaky"):
            FaultConfig(probabilities={bad: 0.1})
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    cfg = config_from_args(parser.parse_args(["--fault", "media_flaky:404:3=0.5", "--seed", "1"]))
    assert cfg.faults.probabilities == {"media_flaky:404:3": 0.5}
    with SandboxServer(cfg) as server, api(server) as c:
        urls = [c.post(GEN, json=gen_body()).json()["data"][0]["url"] for _ in range(12)]
        entries = server.ledger.entries
        flaky = {e["request_id"] for e in entries if e["fault"] == "media_flaky:404:3"}
        assert [e["fault"] for e in entries] == _seeded_faults(cfg.faults, 12)  # as the seed draws
        assert 0 < len(flaky) < 12  # seed 1 gives both kinds of URL, so both are checked below
        for url in urls:
            statuses = [httpx.get(url).status_code for _ in range(4)]
            rid = url.rsplit("/", 1)[1].partition("-")[0]
            assert statuses == ([404, 404, 404, 200] if rid in flaky else [200] * 4)


def test_media_counts_outlive_expiry_and_reset_zeroes_them(sb: SandboxServer) -> None:
    with SandboxServer(media_ttl=0) as expiring, api(expiring) as c:  # expired as soon as published
        url = c.post(GEN, json=gen_body()).json()["data"][0]["url"]
        name = url.rsplit("/", 1)[1]
        assert [httpx.get(url).status_code for _ in range(2)] == [404, 404]
        assert httpx.get(f"{expiring.url}/media/never-published.png").status_code == 404
        assert set(expiring.media_counts()) == {name}
        assert expiring.media_counts()[name] | {"request_id": None} == {
            "request_id": None,
            "fault": None,
            "hits": 2,
            "served": 0,
            "failures_served": 2,
        }
        expiring.reset()
        assert expiring.media_counts() == {}  # an expired URL's counts go with a reset
    with api(sb) as c:
        url = c.post(GEN, json=gen_body()).json()["data"][0]["url"]
    name = url.rsplit("/", 1)[1]
    assert httpx.get(url).status_code == 200
    assert httpx.head(url).status_code == 200  # a HEAD is not a GET: not counted
    assert sb.media_counts()[name]["hits"] == 1
    sb.reset()
    assert sb.media_counts()[name]["hits"] == 0  # a live URL is counted afresh
    assert httpx.get(url).status_code == 200
    assert (sb.media_counts()[name]["hits"], sb.media_counts()[name]["served"]) == (1, 1)


def test_ledger_charges_its_price_per_image() -> None:
    with SandboxServer(price_per_image=0.25) as server, api(server) as c:
        c.post(GEN, json=gen_body(n=3))
        c.post(GEN, json=gen_body())
        server.script_faults(["500"])
        c.post(GEN, json=gen_body(n=2))  # not billed: costs nothing
        entries = server.ledger.entries
        assert [(e["n"], e["price_per_image"], e["cost"]) for e in entries] == [
            (3, 0.25, 0.75),
            (1, 0.25, 0.25),
        ]
        assert server.ledger.total_cost == server.ledger.stats()["billed_cost"] == 1.0
        assert httpx.get(f"{server.url}/sandbox/ledger").json()["stats"]["billed_cost"] == 1.0
        server.reset()
        assert server.ledger.total_cost == 0.0
    assert SandboxConfig().price_per_image == 0.0377  # the contract's price (§7) by default
    with pytest.raises(ValueError, match="price_per_image"):
        SandboxConfig(price_per_image=-1)


def test_media_fault_forces_url_in_b64_mode(b64sb: SandboxServer) -> None:
    b64sb.script_faults(["media_404"])
    with api(b64sb) as c:
        item = c.post(GEN, json=gen_body()).json()["data"][0]
    assert "b64_json" not in item and httpx.get(item["url"]).status_code == 404


def test_hostile_response_faults(sb: SandboxServer) -> None:
    sb.script_faults(["malformed_json", "url_offhost", "url_private"])
    with api(sb) as c:
        malformed = c.post(GEN, json=gen_body())
        offhost = c.post(GEN, json=gen_body())
        private = c.post(GEN, json=gen_body())
    assert malformed.status_code == 200
    with pytest.raises(json.JSONDecodeError):
        json.loads(malformed.content)
    assert offhost.json()["data"][0]["url"] == "https://evil.example.com/x.png"
    assert private.json()["data"][0]["url"] == "http://10.0.0.1/x.png"
    assert [e["fault"] for e in sb.ledger.entries] == ["malformed_json", "url_offhost", "url_private"]


def test_stream_error_and_truncate(sb: SandboxServer) -> None:
    sb.script_faults(["stream_error", "stream_truncate", "malformed_json"])
    with api(sb) as c:
        errored = c.post(GEN, json=gen_body(stream=True, partial_images=2))
        truncated = c.post(GEN, json=gen_body(stream=True, partial_images=1))
        malformed = c.post(GEN, json=gen_body(stream=True))
    events = sse_events(errored.text)
    assert [e for e, _ in events] == ["image_generation.partial_image"] * 2 + ["error"]
    error = json.loads(events[-1][1])
    assert error["type"] == "error" and {"message", "type", "code"} <= set(error["error"])
    assert [e for e, _ in sse_events(truncated.text)] == ["image_generation.partial_image"]
    last = sse_events(malformed.text)[-2]
    assert last[0] == "image_generation.completed"
    with pytest.raises(json.JSONDecodeError):
        json.loads(last[1])
    rid_error = errored.headers["x-oneapi-request-id"]
    assert sb.ledger.entry(rid_error) is None  # stream_error: not billed
    entry = sb.ledger.entry(truncated.headers["x-oneapi-request-id"])
    assert entry is not None and entry["delivered"] is False and entry["fault"] == "stream_truncate"
    assert sb.ledger.request(rid_error)["fault"] == "stream_error"  # type: ignore[index]


def test_scripted_stream_fault_on_plain_request_is_used_up(sb: SandboxServer) -> None:
    sb.script_faults(["stream_error", "none", "500"])
    with api(sb) as c:
        statuses = [c.post(GEN, json=gen_body()).status_code for _ in range(4)]
    assert statuses == [200, 200, 500, 200]


def test_client_timeout_is_still_billed_but_not_delivered() -> None:
    with SandboxServer(latency=0.5) as server:
        waits = HeldWaits(server)  # the answer is held until the client has given up
        with api(server, timeout=0.15) as c, pytest.raises(httpx.ReadTimeout):
            c.post(GEN, json=gen_body())
        wait_until(lambda: server.ledger.requests[0]["client_gone"], "the sandbox saw the client leave")
        waits.release_all()
        wait_until(lambda: server.ledger.billed_requests == 1, "the timed-out request was billed")
        entries = server.ledger.entries
    assert len(entries) == 1 and entries[0]["delivered"] is False


def _seeded_faults(faults: FaultConfig, count: int) -> list[str | None]:
    """The faults ``count`` plain requests get under ``faults``, by the documented draw: one
    ``random.Random(seed).random()`` per request, the kinds' chances stacked in FAULT_KINDS
    order (parametrised kinds after them, sorted), ``stream_*`` kinds left out of a plain request."""
    rng = random.Random(faults.seed)
    kinds = [*FAULT_KINDS, *sorted(set(faults.probabilities) - set(FAULT_KINDS))]
    drawn: list[str | None] = []
    for _ in range(count):
        point, total, fault = rng.random(), 0.0, None
        for kind in kinds:
            chance = faults.probabilities.get(kind, 0.0)
            if chance and not kind.startswith("stream_"):
                total += chance
                if point < total:
                    fault = kind
                    break
        drawn.append(fault)
    return drawn


def test_seeded_random_faults_are_reproducible() -> None:
    faults = FaultConfig(probabilities={"500": 0.25, "429": 0.25, "stream_error": 0.4}, seed=7)
    runs = []
    for _ in range(2):
        with SandboxServer(faults=faults) as server, api(server) as c:
            runs.append([c.post(GEN, json=gen_body()).status_code for _ in range(24)])
            server.reset()
            runs.append([c.post(GEN, json=gen_body()).status_code for _ in range(24)])
    assert runs[0] == runs[1] == runs[2] == runs[3]
    assert {200, 429, 500} <= set(runs[0])  # stream_error never hits plain requests
    expected = [int(fault) if fault else 200 for fault in _seeded_faults(faults, 24)]
    assert runs[0] == expected  # the seed decides each draw, as documented


def test_set_faults_at_runtime_and_over_json(sb: SandboxServer) -> None:
    with api(sb) as c:
        sb.set_faults(FaultConfig(probabilities={"503": 1.0}))
        assert c.post(GEN, json=gen_body()).status_code == 503
        httpx.post(
            f"{sb.url}/sandbox/faults", json={"probabilities": {}, "script": ["502", "none"]}
        ).raise_for_status()
        state = httpx.get(f"{sb.url}/sandbox/faults").json()
        assert state["script"] == ["502", "none"] and state["config"]["probabilities"] == {}
        assert [c.post(GEN, json=gen_body()).status_code for _ in range(3)] == [502, 200, 200]
    bad = httpx.post(f"{sb.url}/sandbox/faults", json={"script": ["explode"]})
    assert bad.status_code == 400 and "explode" in bad.json()["error"]["message"]
    with pytest.raises(ValueError, match="unknown fault kind"):
        FaultConfig(probabilities={"explode": 0.1})
    with pytest.raises(ValueError, match="add up"):
        FaultConfig(probabilities={"500": 0.7, "429": 0.7})
    assert len(FAULT_KINDS) == 16


# ---------------------------------------------------------------------------------------------
# ledger, log, media lifetime, reset


def test_ledger_and_request_log_over_json(sb: SandboxServer) -> None:
    with api(sb) as c:
        ok = c.post(GEN, json=gen_body(n=2, user="u-1"))
        c.post(GEN, json=gen_body(size="1x1"))
    ledger = httpx.get(f"{sb.url}/sandbox/ledger").json()
    log = httpx.get(f"{sb.url}/sandbox/requests").json()["requests"]
    assert ledger == json.loads(json.dumps({"entries": sb.ledger.entries, "stats": sb.ledger.stats()}))
    assert ledger["stats"] == {
        "billed_images": 2,
        "billed_requests": 1,
        "billed_cost": 2 * 0.0377,
        "requests": 2,
        "in_flight": 0,
        "max_in_flight": 1,
        "balance_remaining": None,
    }
    entry = ledger["entries"][0]
    assert (
        entry["request_id"] == ok.headers["x-oneapi-request-id"]
        and entry["endpoint"] == "/images/generations"
    )
    assert [img["url"] for img in entry["images"]] == [d["url"] for d in ok.json()["data"]]
    media = httpx.get(entry["images"][1]["url"]).content
    assert entry["images"][1]["sha256"] == hashlib.sha256(media).hexdigest()
    assert entry["images"][1]["size_bytes"] == len(media)
    assert [(e["status"], e["method"], e["endpoint"]) for e in log] == [
        (200, "POST", "/images/generations"),
        (400, "POST", "/images/generations"),
    ]
    assert log[0]["fields"]["prompt"] == "a red fox in the snow" and log[0]["fields"]["user"] == "u-1"
    assert log[0]["auth_ok"] is True and log[0]["files"] == []
    assert log[0]["started"] <= log[0]["finished"]


def test_media_expires_after_ttl() -> None:
    """A result URL serves its image until media_ttl seconds have passed (by the media store's
    clock, moved by the test), then 404s."""
    with SandboxServer(media_ttl=30) as server, api(server) as c:
        now = [1000.0]
        server.state.media.clock = lambda: now[0]
        url = c.post(GEN, json=gen_body()).json()["data"][0]["url"]
        assert httpx.get(url).status_code == 200
        now[0] += 29.9
        assert httpx.get(url).status_code == 200
        now[0] += 0.1
        assert httpx.get(url).status_code == 404
        assert httpx.get(f"{server.url}/media/nope.png").status_code == 404


def test_reset_clears_everything(sb: SandboxServer) -> None:
    sb.script_faults(["500", "500"])
    with api(sb) as c:
        c.post(GEN, json=gen_body())
        c.post(GEN, json=gen_body(n=3))
        c.post(GEN, json=gen_body(n=3))
    assert sb.ledger.stats()["requests"] == 3 and sb.ledger.billed_images == 3
    sb.script_faults(["500"])
    assert httpx.post(f"{sb.url}/sandbox/reset").json() == {"ok": True}
    assert sb.ledger.entries == [] and sb.ledger.requests == [] and sb.state.faults.script == []
    assert sb.ledger.stats()["requests"] == 0 and sb.ledger.max_in_flight == 0
    with api(sb) as c:
        assert c.post(GEN, json=gen_body()).status_code == 200


# ---------------------------------------------------------------------------------------------
# server lifecycle, CLI, pytest plugin


def test_stop_frees_port_and_thread() -> None:
    server = SandboxServer().start()
    port = server.port
    assert server.base_url == f"http://127.0.0.1:{port}/v1" and server.running
    with api(server) as c:
        assert c.get("/models").status_code == 200
    server.stop()
    assert not server.running
    assert not [t for t in threading.enumerate() if t.name == f"gpt-image-sandbox:{port}"]
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/v1/models")
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))


def test_config_validation_and_overrides() -> None:
    with pytest.raises(ValueError):
        SandboxConfig(result_mode="base64")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        SandboxConfig(max_concurrency=0)
    server = SandboxServer(SandboxConfig(latency=1.0), latency=0.0, keys=["a"])
    assert server.config.latency == 0.0 and server.config.keys == ("a",)


def test_cli_flags_map_to_config() -> None:
    import argparse

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(
        "--port 0 --latency 0.5 --max-concurrency 4 --result-mode b64_json --keys k1,k2 --media-ttl 9 "
        "--seed 3 --fault 500=0.1 --fault drop=0.05 --balance 7 --retry-after 2 --no-stream-done "
        "--price-per-image 0.04".split()
    )
    cfg = config_from_args(args)
    assert cfg.price_per_image == 0.04
    assert cfg.latency == 0.5 and cfg.max_concurrency == 4 and cfg.result_mode == "b64_json"
    assert cfg.keys == ("k1", "k2") and cfg.media_ttl == 9 and cfg.balance == 7 and cfg.retry_after == 2
    assert cfg.faults == FaultConfig(probabilities={"500": 0.1, "drop": 0.05}, seed=3)
    assert cfg.stream_done is False


def test_cli_run_serves_until_interrupted() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "prefect_gpt_image.sandbox", "--keys", "sk-cli", "--script", "503"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        base_url = proc.stdout.readline().strip()
        assert re.match(r"^http://127\.0\.0\.1:\d+/v1$", base_url)
        headers = {"Authorization": "Bearer sk-cli"}
        assert httpx.get(f"{base_url}/models", headers=headers).status_code == 200
        assert httpx.post(f"{base_url}{GEN}", json=gen_body(), headers=headers).status_code == 503
        assert httpx.post(f"{base_url}{GEN}", json=gen_body(), headers=headers).status_code == 200
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.gpt_image_sandbox(result_mode="b64_json", keys=("sk-marker",))
def test_plugin_fixture_uses_marker(gpt_image_sandbox: SandboxServer) -> None:
    with api(gpt_image_sandbox, key="sk-marker") as c:
        assert "b64_json" in c.post(GEN, json=gen_body()).json()["data"][0]
    with api(gpt_image_sandbox, key="sk-other") as c:
        assert c.get("/models").status_code == 401


def test_plugin_session_and_factory_fixtures(
    gpt_image_sandbox_session: SandboxServer, gpt_image_sandbox_factory: Any
) -> None:
    other = gpt_image_sandbox_factory(balance=0)
    assert other.port != gpt_image_sandbox_session.port
    with api(gpt_image_sandbox_session) as c:
        assert c.post(GEN, json=gen_body()).status_code == 200
    with api(other) as c:
        assert_error(c.post(GEN, json=gen_body()), 403, "insufficient_user_quota")


# ---------------------------------------------------------------------------------------------
# the judge the reliability tests use (tests/support/judge.py)


def test_judge_compares_stored_bytes_with_the_ledger(sb: SandboxServer, tmp_path: Any) -> None:
    from tests.support import judge

    with api(sb) as c:
        answers = [c.post(GEN, json=gen_body(prompt=f"judge {i}")) for i in range(3)]
    for i, answer in enumerate(answers):
        (tmp_path / f"{i}.png").write_bytes(httpx.get(answer.json()["data"][0]["url"]).content)
    rids = [a.headers["x-oneapi-request-id"] for a in answers]
    assert set(judge.delivered_images(sb)) == set(rids)
    assert len(judge.assert_stored_equals_delivered(sb, tmp_path)) == 3
    judge.assert_billed_once(sb, [f"judge {i}" for i in range(3)])
    assert judge.ledger_cost(sb) == pytest.approx(3 * 0.0377)
    assert judge.ledger_cost(sb, rids[:1]) == pytest.approx(0.0377)
    assert judge.media_gets(sb) == dict.fromkeys(rids, 1)
    (tmp_path / "1.png").write_bytes(b"\x89PNG other bytes")
    with pytest.raises(AssertionError, match=f"request {rids[1]}"):
        judge.assert_stored_equals_delivered(sb, tmp_path)
    (tmp_path / "1.png").unlink()
    judge.assert_stored_equals_delivered(sb, tmp_path, undelivered=[rids[1]])
    with pytest.raises(AssertionError, match="billed other than once"):
        judge.assert_billed_once(sb, ["judge 0", "judge 1"])
