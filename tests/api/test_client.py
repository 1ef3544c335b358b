"""The client against the sandbox over real HTTP: results, multipart, streaming, errors, retries."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import socket
import time
from typing import Any

import pytest

from prefect_gpt_image.api import (
    AsyncImagesClient,
    AuthenticationError,
    BadRequestError,
    ClientConfig,
    ConnectionFailedError,
    DownloadError,
    EditRequest,
    GenerateRequest,
    GptImageError,
    ImagesClient,
    InsufficientQuotaError,
    InvalidResponseError,
    ModerationError,
    NotFoundError,
    OutcomeUnknownError,
    PartialImage,
    RateLimitError,
    RequestTooLargeError,
    ResponseTimeoutError,
    RetryEvent,
    RetryPolicy,
    ServerError,
    StreamErrorEvent,
    Timeouts,
    UnsafeURLError,
)
from prefect_gpt_image.api import retrying as retry_module
from tests.support.images import decode, mask_bytes, png_bytes
from tests.support.judge import media_gets
from tests.support.sandbox import HeldWaits, billed_images, ledger, sandbox_requests

KEY = "sk-test-SECRET-4f1c9e2a77"
FAST = RetryPolicy(
    max_attempts=4, initial_backoff=0.01, max_backoff=0.05, jitter=0.0, media_retry_seconds=1.0
)


@pytest.fixture
def sandbox(make_sandbox: Any) -> Any:
    return make_sandbox()


class VirtualTime:
    """The client module's clock and sleep, virtual: a retry wait is recorded and moves the
    clock on by its seconds at once, so a test judges which waits the client made (and the time
    bound it kept) by what it asked for, not by how long the test took."""

    def __init__(self) -> None:
        self.slept: list[float] = []
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)

    def __getattr__(self, name: str) -> Any:  # everything else of asyncio and time, unchanged
        return getattr(asyncio, name, None) or getattr(time, name)


@pytest.fixture
def virtual_time(monkeypatch: pytest.MonkeyPatch) -> VirtualTime:
    """Virtual time for the client's retry loop (``prefect_gpt_image.api.retrying`` only)."""
    virtual = VirtualTime()
    monkeypatch.setattr(retry_module, "asyncio", virtual)
    monkeypatch.setattr(retry_module, "time", virtual)
    return virtual


def client_for(sandbox: Any, **kw: Any) -> ImagesClient:
    kw.setdefault("retry", FAST)
    return ImagesClient(KEY, base_url=sandbox.base_url, **kw)


# -- results ------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp"])
def test_generate_returns_checked_images(sandbox: Any, fmt: str) -> None:
    with client_for(sandbox) as client:
        images = client.generate("a red fox", size="1536x1024", output_format=fmt, n=2, quality="hd")
    assert len(images) == 2
    log = sandbox_requests(sandbox)
    assert len(log) == 1 and log[0]["fields"]["quality"] == "high"
    for i, image in enumerate(images):
        data = image.read_bytes()
        assert hashlib.sha256(data).hexdigest() == image.sha256 and image.size_bytes == len(data)
        img = decode(data)
        assert (img.width, img.height) == (image.width, image.height) == (1536, 1024)
        assert img.format.lower() == fmt == image.format
        assert image.index == i and image.request_id == log[0]["request_id"]
        assert isinstance(image.request, GenerateRequest) and image.request.prompt == "a red fox"
    assert images[0].sha256 != images[1].sha256
    assert billed_images(sandbox) == 2


def test_b64_json_results(make_sandbox: Any) -> None:
    sandbox = make_sandbox(result_mode="b64_json")
    with client_for(sandbox) as client:
        (image,) = client.generate("a blue whale", size="1024x1024")
    assert image.url is None and decode(image.read_bytes()).size == (1024, 1024)


def test_spool_dir_streams_results_to_files(sandbox: Any, tmp_path: Any) -> None:
    with client_for(sandbox, spool_dir=str(tmp_path)) as client:
        (image,) = client.generate("a heron", size="1024x1024")
    assert image.data is None and image.path is not None and image.path.parent == tmp_path
    assert hashlib.sha256(image.path.read_bytes()).hexdigest() == image.sha256


def test_base_url_variants_never_double_v1(sandbox: Any) -> None:
    for base in (sandbox.base_url + "/", sandbox.base_url + "/images/generations"):
        with ImagesClient(KEY, base_url=base, retry=FAST) as client:
            client.generate("a cat")
    assert [r["endpoint"] for r in sandbox_requests(sandbox)] == ["/images/generations"] * 2


def test_config_from_environment(sandbox: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GPT_IMAGE_API_KEY", raising=False)
    monkeypatch.delenv("GPT_IMAGE_BASE_URL", raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai-fallback")
    monkeypatch.setenv("OPENAI_BASE_URL", "https://example.invalid/v1")
    assert ClientConfig.from_env().base_url == "https://example.invalid/v1"
    monkeypatch.setenv("GPT_IMAGE_API_KEY", KEY)
    monkeypatch.setenv("GPT_IMAGE_BASE_URL", sandbox.base_url)
    config = ClientConfig.from_env()
    assert config.api_key.get_secret_value() == KEY and config.base_url == sandbox.base_url
    with ImagesClient(retry=FAST) as client:
        assert len(client.generate("env configured")) == 1
    monkeypatch.delenv("GPT_IMAGE_API_KEY")
    monkeypatch.delenv("OPENAI_API_KEY")
    with pytest.raises(ValueError, match="GPT_IMAGE_API_KEY"):
        ClientConfig.from_env()


# -- edits: multipart naming ----------------------------------------------------------------------


@pytest.mark.parametrize("count", [1, 16])
def test_edit_sends_repeated_image_parts_and_mask(sandbox: Any, count: int) -> None:
    images = [png_bytes((1024, 1024), colour=f"#{i * 15:02x}4080") for i in range(count)]
    mask = mask_bytes((1024, 1024), (256, 256, 768, 768))
    with client_for(sandbox) as client:
        (result,) = client.edit("paint a sun", images, mask=mask, size="1024x1024")
    (entry,) = sandbox_requests(sandbox)
    files = entry["files"]
    assert [f["field"] for f in files] == ["image[]"] * count + ["mask"]
    assert all(f["content_type"] == "image/png" for f in files)
    assert [f["sha256"] for f in files[:-1]] == [hashlib.sha256(b).hexdigest() for b in images]
    assert entry["fields"]["prompt"] == "paint a sun" and "image" not in entry["fields"]
    assert isinstance(result.request, EditRequest)
    assert result.request.summary()["mask"] == hashlib.sha256(mask).hexdigest()
    assert decode(result.read_bytes()).size == (1024, 1024)


def test_edit_filenames_and_content_types_from_paths(sandbox: Any, tmp_path: Any) -> None:
    from PIL import Image

    jpg, webp = tmp_path / "person.jpg", tmp_path / "background.webp"
    Image.new("RGB", (1024, 1024), "tan").save(jpg, "JPEG")
    Image.new("RGB", (1024, 1024), "teal").save(webp, "WEBP")
    with client_for(sandbox) as client, jpg.open("rb") as fh:
        client.edit("blend them", [fh, webp])
    files = sandbox_requests(sandbox)[0]["files"]
    assert [(f["filename"], f["content_type"]) for f in files] == [
        ("person.jpg", "image/jpeg"),
        ("background.webp", "image/webp"),
    ]


# -- streaming ------------------------------------------------------------------------------------


@pytest.mark.parametrize("partials", [0, 1, 2, 3])
def test_stream_delivers_partials_then_final(sandbox: Any, partials: int) -> None:
    got: list[PartialImage] = []
    with client_for(sandbox) as client:
        (final,) = client.generate(
            "a kite", size="1024x1024", stream=True, partial_images=partials, on_partial=got.append
        )
    assert [p.index for p in got] == list(range(partials))
    assert all(decode(p.data).size == (p.width, p.height) for p in got)
    assert decode(final.read_bytes()).size == (1024, 1024)
    assert final.request_id == sandbox_requests(sandbox)[0]["request_id"]
    assert billed_images(sandbox) == 1


def test_stream_edit_with_async_callback(sandbox: Any) -> None:
    got: list[int] = []

    async def on_partial(p: PartialImage) -> None:
        await asyncio.sleep(0)
        got.append(p.index)

    async def run() -> Any:
        async with AsyncImagesClient(KEY, base_url=sandbox.base_url, retry=FAST) as client:
            return await client.edit(
                "add a moon", [png_bytes((1024, 1024))], stream=True, partial_images=2, on_partial=on_partial
            )

    (final,) = asyncio.run(run())
    assert got == [0, 1] and final.format == "png"


def test_stream_completed_url_is_downloaded(make_sandbox: Any) -> None:
    sandbox = make_sandbox(stream_completed_url=True, stream_done=False)
    with client_for(sandbox) as client:
        (final,) = client.generate("a boat", stream=True, partial_images=1)
    assert final.url is not None and decode(final.read_bytes()).size == (1024, 1024)


def test_stream_error_event_raises(sandbox: Any) -> None:
    sandbox.script_faults(["stream_error"])
    with client_for(sandbox) as client, pytest.raises(StreamErrorEvent) as info:
        client.generate("a storm", stream=True, partial_images=1)
    assert info.value.request_id and len(sandbox_requests(sandbox)) == 1


def test_truncated_stream_is_outcome_unknown(sandbox: Any) -> None:
    sandbox.script_faults(["stream_truncate"])
    with client_for(sandbox) as client, pytest.raises(OutcomeUnknownError, match="without a completed"):
        client.generate("a storm", stream=True, partial_images=2)
    assert len(sandbox_requests(sandbox)) == 1  # not retried by default


# -- error classes and retry counts ---------------------------------------------------------------


def test_401_not_retried_and_key_not_in_message(make_sandbox: Any) -> None:
    sandbox = make_sandbox(keys=("sk-the-right-one",))
    with client_for(sandbox) as client, pytest.raises(AuthenticationError) as info:
        client.generate("a cat")
    err = info.value
    assert err.status == 401 and err.request_id and KEY not in str(err)
    assert len(sandbox_requests(sandbox)) == 1


def test_quota_403_not_retried(make_sandbox: Any) -> None:
    sandbox = make_sandbox(balance=0)
    with client_for(sandbox) as client, pytest.raises(InsufficientQuotaError) as info:
        client.generate("a cat")
    assert info.value.status == 403 and info.value.code == "insufficient_user_quota"
    assert len(sandbox_requests(sandbox)) == 1


def test_unknown_model_404(sandbox: Any) -> None:
    with client_for(sandbox) as client, pytest.raises(NotFoundError):
        client.generate("a cat", model="gpt-image-9")
    assert len(sandbox_requests(sandbox)) == 1


def test_moderation_400_not_retried(sandbox: Any) -> None:
    with client_for(sandbox) as client, pytest.raises(ModerationError) as info:
        client.generate("please [sandbox:block] this")
    assert info.value.code == "moderation_blocked" and len(sandbox_requests(sandbox)) == 1


def test_server_side_400_maps_to_bad_request(sandbox: Any) -> None:
    """A request that skipped our validation (model_construct) is refused by the sandbox too."""
    bad = GenerateRequest.model_construct(
        model="gpt-image-2",
        prompt="x",
        n=1,
        size="1000x1000",
        stream=False,
        quality=None,
        background=None,
        output_format=None,
        output_compression=None,
        partial_images=None,
        user=None,
        moderation=None,
    )
    with client_for(sandbox) as client, pytest.raises(BadRequestError) as info:
        client.send(bad)
    assert info.value.param == "size" and info.value.status == 400
    assert info.value.request_id == sandbox_requests(sandbox)[0]["request_id"]


def test_413_request_too_large(make_sandbox: Any) -> None:
    sandbox = make_sandbox(max_body_bytes=10_000)
    with client_for(sandbox) as client, pytest.raises(RequestTooLargeError):
        client.edit("x", [png_bytes((1024, 1024), colour="white")] * 3)


@pytest.mark.parametrize(
    "status,error",
    [("429", RateLimitError), ("500", ServerError), ("502", ServerError), ("503", ServerError)],
)
def test_transient_errors_retried_then_succeed(sandbox: Any, status: str, error: type[GptImageError]) -> None:
    sandbox.script_faults([status, status])
    retries: list[Any] = []
    with client_for(sandbox) as client:
        (image,) = client.generate("a cat", on_retry=retries.append)
    assert [r["status"] for r in sandbox_requests(sandbox)] == [int(status), int(status), 200]
    assert [type(r.error) for r in retries] == [error, error] and billed_images(sandbox) == 1
    assert image.request_id == sandbox_requests(sandbox)[-1]["request_id"]


def test_retries_bounded_by_max_attempts(sandbox: Any) -> None:
    sandbox.script_faults(["503"] * 5)
    policy = RetryPolicy(max_attempts=3, initial_backoff=0.01, jitter=0.0)
    with client_for(sandbox, retry=policy) as client, pytest.raises(ServerError) as info:
        client.generate("a cat")
    assert info.value.status == 503 and len(sandbox_requests(sandbox)) == 3
    assert billed_images(sandbox) == 0


def test_retries_bounded_by_total_time(sandbox: Any, virtual_time: VirtualTime) -> None:
    sandbox.script_faults(["429"] * 10)
    policy = RetryPolicy(
        max_attempts=10, initial_backoff=0.2, multiplier=1.0, jitter=0.0, max_total_seconds=0.5
    )
    with client_for(sandbox, retry=policy) as client, pytest.raises(RateLimitError):
        client.generate("a cat")
    assert virtual_time.slept == [0.2, 0.2]  # a third wait would end past 0.5 s
    assert len(sandbox_requests(sandbox)) == 3


def test_backoff_doubles_from_initial() -> None:
    policy = RetryPolicy(initial_backoff=1.0, max_backoff=8.0, jitter=0.0)
    assert [policy.backoff(a) for a in range(1, 6)] == [1.0, 2.0, 4.0, 8.0, 8.0]
    jittered = RetryPolicy(initial_backoff=1.0, jitter=0.5)
    assert all(1.0 <= jittered.backoff(1) <= 1.5 for _ in range(50))


def test_retry_after_header_honoured(make_sandbox: Any, virtual_time: VirtualTime) -> None:
    sandbox = make_sandbox(retry_after=7)
    sandbox.script_faults(["429"])
    policy = RetryPolicy(initial_backoff=0.01, jitter=0.0)
    retries: list[RetryEvent] = []
    with client_for(sandbox, retry=policy) as client:
        client.generate("a cat", on_retry=retries.append)
    assert [(r.attempt, type(r.error), r.wait_seconds) for r in retries] == [(1, RateLimitError, 7.0)]
    assert virtual_time.slept == [7.0]  # the wait reported is the wait made (not the 0.01 backoff)
    assert len(sandbox_requests(sandbox)) == 2


def test_retry_after_parsing() -> None:
    assert RetryPolicy.retry_after({"retry-after-ms": "250"}) == 0.25
    assert RetryPolicy.retry_after({"retry-after": "3"}) == 3.0
    assert RetryPolicy.retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0
    assert RetryPolicy.retry_after({"retry-after": "soon"}) is None
    assert RetryPolicy.retry_after({}) is None


def test_dropped_connection_is_outcome_unknown_and_not_retried(sandbox: Any) -> None:
    sandbox.script_faults(["drop"])
    with client_for(sandbox) as client, pytest.raises(OutcomeUnknownError) as info:
        client.generate("a cat")
    assert info.value.maybe_billed
    assert len(sandbox_requests(sandbox)) == 1 and billed_images(sandbox) == 1


def test_dropped_connection_retried_when_opted_in(sandbox: Any) -> None:
    sandbox.script_faults(["drop"])
    policy = RetryPolicy(initial_backoff=0.01, jitter=0.0, retry_outcome_unknown=True)
    with client_for(sandbox, retry=policy) as client:
        (image,) = client.generate("a cat")
    assert len(sandbox_requests(sandbox)) == 2 and billed_images(sandbox) == 2
    assert image.request_id == sandbox_requests(sandbox)[1]["request_id"]


def test_read_timeout_is_outcome_unknown(make_sandbox: Any) -> None:
    sandbox = make_sandbox(slow_seconds=2.0)
    waits = HeldWaits(sandbox)  # the slow answer is held until the client has given up
    sandbox.script_faults(["slow"])
    with client_for(sandbox, timeouts=Timeouts(read=0.3)) as client, pytest.raises(ResponseTimeoutError):
        client.generate("a cat")
    waits.release_all()
    assert len(sandbox_requests(sandbox)) == 1 and waits.requested == [2.0]


def test_connection_refused_is_retried_then_raised() -> None:
    retries: list[Any] = []
    policy = RetryPolicy(max_attempts=3, initial_backoff=0.01, jitter=0.0)
    # The port stays bound by this test, never listening: connections to it are refused, and no
    # other process can take it meanwhile (a closed port could be anyone's by the time we call).
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        port = held.getsockname()[1]
        with ImagesClient(KEY, base_url=f"http://127.0.0.1:{port}/v1", retry=policy) as client:
            with pytest.raises(ConnectionFailedError) as info:
                client.generate("a cat", on_retry=retries.append)
    assert len(retries) == 2 and info.value.retryable and KEY not in str(info.value)


class Connects:
    """Counts the TCP connections this process opens to one port (a hook on ``socket.connect``,
    the call asyncio makes for each new connection)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, port: int) -> None:
        self.count = 0
        real = socket.socket.connect

        def connect(sock: socket.socket, address: Any) -> None:
            if isinstance(address, tuple) and address[1] == port:
                self.count += 1
            real(sock, address)

        monkeypatch.setattr(socket.socket, "connect", connect)


def _calls_at_once(client: AsyncImagesClient, calls: int, at_once: int) -> None:
    async def run() -> None:
        gate = asyncio.Semaphore(at_once)

        async def one(i: int) -> None:
            async with gate:
                await client.generate(f"connection {i}", size="1024x1024", quality="low")

        async with client:
            await asyncio.gather(*(one(i) for i in range(calls)))

    asyncio.run(run())


def test_connections_are_kept_and_reused_above_twenty_calls_at_once(
    make_sandbox: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """40 calls at once, 120 in all (a POST and a result GET each): the pool keeps its
    connections, so the 240 requests need at most one connection per request in flight, not a new
    one each. httpx's default pool keeps 20 idle connections, and ignores a client's limits once
    it is given a transport: the client used to open a connection for most requests."""
    sandbox = make_sandbox(latency=0.2, max_concurrency=40)
    connects = Connects(monkeypatch, sandbox.port)
    _calls_at_once(AsyncImagesClient(KEY, base_url=sandbox.base_url), calls=120, at_once=40)
    opened = connects.count  # before the ledger's own requests below
    assert billed_images(sandbox) == 120
    assert opened <= 80, f"{opened} connections for 240 requests"


def test_max_connections_caps_the_requests_in_flight(
    make_sandbox: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``max_connections=4``: 12 calls at once send at most 4 requests at a time over 4 connections."""
    sandbox = make_sandbox(latency=0.2)
    connects = Connects(monkeypatch, sandbox.port)
    config = ClientConfig(api_key=KEY, base_url=sandbox.base_url, max_connections=4)
    _calls_at_once(AsyncImagesClient(config=config), calls=12, at_once=12)
    opened = connects.count  # before the ledger's own requests below
    assert billed_images(sandbox) == 12
    assert ledger(sandbox)["stats"]["max_in_flight"] <= 4 and opened <= 4


def test_media_failing_once_is_downloaded_on_retry(sandbox: Any) -> None:
    sandbox.script_faults(["media_fail_once"])
    with client_for(sandbox) as client:
        (image,) = client.generate("a cat")
    assert decode(image.read_bytes()).size == (1024, 1024)
    assert len(sandbox_requests(sandbox)) == 1 and billed_images(sandbox) == 1


@pytest.mark.parametrize("mode", ["404", "403", "503", "reset", "truncated"])
def test_media_failing_three_times_is_downloaded_within_the_window(sandbox: Any, mode: str) -> None:
    sandbox.script_faults([f"media_flaky:{mode}:3"])
    # A window no busy machine outlasts: the promise is "fetched again until served", not a pace.
    patient = dataclasses.replace(FAST, media_retry_seconds=30.0)
    with client_for(sandbox, retry=patient) as client:
        (image,) = client.generate("a cat")
    (entry,) = sandbox.ledger.entries
    assert image.sha256 == entry["images"][0]["sha256"] and image.request_id == entry["request_id"]
    assert media_gets(sandbox) == {entry["request_id"]: 4}  # three failures, then the image
    assert len(sandbox_requests(sandbox)) == 1 and billed_images(sandbox) == 1


def test_media_never_served_in_the_window_is_billed_but_not_delivered(sandbox: Any) -> None:
    sandbox.script_faults(["media_404"])
    policy = RetryPolicy(initial_backoff=0.01, max_backoff=0.05, media_retry_seconds=0.3)
    with client_for(sandbox, retry=policy) as client, pytest.raises(DownloadError) as info:
        client.generate("a cat")
    (entry,) = sandbox.ledger.entries
    rid = entry["request_id"]
    assert info.value.request_id == rid and info.value.url and info.value.undelivered == 1
    message = str(info.value)
    assert f"1 of 1 image(s) billed but not delivered (request id {rid})" in message
    assert "HTTP 404" in message and "media_retry_seconds=0.3" in message
    assert media_gets(sandbox)[rid] >= 2  # fetched again before it was given up
    assert len(sandbox_requests(sandbox)) == 1  # the paid request itself is never sent again


def test_a_stream_whose_url_is_given_up_says_billed_but_not_delivered(make_sandbox: Any) -> None:
    sandbox = make_sandbox(stream_completed_url=True)
    sandbox.script_faults(["media_404"])
    policy = RetryPolicy(initial_backoff=0.01, max_backoff=0.05, media_retry_seconds=0.2)
    with client_for(sandbox, retry=policy) as client, pytest.raises(DownloadError) as info:
        client.generate("a cat", stream=True)
    rid = sandbox.ledger.entries[0]["request_id"]
    assert f"1 of 1 image(s) billed but not delivered (request id {rid})" in str(info.value)


@pytest.mark.parametrize(
    "fault,error,text",
    [
        ("url_offhost", UnsafeURLError, "not in the allowed media hosts"),
        ("url_private", UnsafeURLError, "plain http is only allowed on loopback"),
        ("media_redirect_offhost", UnsafeURLError, "evil.example.com"),
        ("media_not_image", DownloadError, "not a valid image"),
        ("media_truncated", DownloadError, "not a valid image"),
        ("malformed_json", InvalidResponseError, "not an images response"),
    ],
)
def test_hostile_answers_refused(sandbox: Any, fault: str, error: type[Exception], text: str) -> None:
    sandbox.script_faults([fault])
    with client_for(sandbox) as client, pytest.raises(error, match=text):
        client.generate("a cat")
    assert len(sandbox_requests(sandbox)) == 1  # billed answers are never retried
    # a refused URL is never fetched; a bad body or a refused redirect is not fetched again
    gets = sum(media_gets(sandbox).values())
    assert gets == (1 if fault.startswith("media_") else 0)


def test_declared_size_is_checked(sandbox: Any) -> None:
    """A result whose pixels differ from the size asked for is refused."""
    from prefect_gpt_image.api.download import verify_image

    data = png_bytes((64, 64))
    with pytest.raises(ValueError, match="expected 1024x1024, got 64x64"):
        verify_image(data, expected_format="png", expected_size=(1024, 1024))
    with pytest.raises(ValueError, match="expected a jpeg image, got png"):
        verify_image(data, expected_format="jpeg", expected_size=None)


def test_download_check_catches_damage_without_decoding() -> None:
    """Results are checked by the PNG's own CRCs (not a full decode): a flipped byte inside the
    pixel data, a cut file and a JPEG cut short are all refused."""
    import io

    from PIL import Image

    from prefect_gpt_image.api.download import verify_image

    noisy = Image.effect_noise((256, 256), 64).convert("RGB")
    buf = io.BytesIO()
    noisy.save(buf, "PNG")
    data = buf.getvalue()
    assert verify_image(data, expected_format="png", expected_size=(256, 256)) == ("png", 256, 256)
    middle = len(data) // 2
    flipped = data[:middle] + bytes([data[middle] ^ 0x55]) + data[middle + 1 :]
    for damaged in (flipped, data[:middle], data[:-12]):
        with pytest.raises(ValueError, match="does not decode"):
            verify_image(damaged, expected_format="png", expected_size=None)
    jpeg = io.BytesIO()
    noisy.save(jpeg, "JPEG", quality=90)
    with pytest.raises(ValueError, match="does not decode"):
        verify_image(jpeg.getvalue()[: len(jpeg.getvalue()) // 2], expected_format="jpeg", expected_size=None)


# -- secrets -------------------------------------------------------------------------------------


def test_key_never_in_reprs_logs_or_errors(make_sandbox: Any, caplog: pytest.LogCaptureFixture) -> None:
    sandbox = make_sandbox(keys=("sk-other",))
    caplog.set_level(logging.DEBUG)
    with client_for(sandbox) as client:
        texts = [repr(client), repr(client.config), str(client.config)]
        for fault in (None,):
            del fault
            with pytest.raises(GptImageError) as info:
                client.generate("a cat")
            texts += [str(info.value), repr(info.value)]
    sandbox2 = make_sandbox()
    sandbox2.script_faults(["429", "500", "drop"])
    with client_for(sandbox2) as client, pytest.raises(OutcomeUnknownError) as info2:
        client.generate("a cat")
    texts += [str(info2.value), repr(info2.value)]
    texts += [r.getMessage() for r in caplog.records]
    assert any("retrying" in t for t in texts)
    assert not [t for t in texts if KEY in t]


def test_async_and_sync_clients_share_behaviour(sandbox: Any) -> None:
    async def run() -> Any:
        async with AsyncImagesClient(KEY, base_url=sandbox.base_url, retry=FAST) as client:
            return await asyncio.gather(*(client.generate(f"cat {i}") for i in range(4)))

    results = asyncio.run(run())
    assert len({r[0].sha256 for r in results}) == 4 and billed_images(sandbox) == 4


def test_api_layer_does_not_import_prefect() -> None:
    """The client layer stands alone: importing it (and the sandbox) loads no Prefect module."""
    import subprocess
    import sys

    code = (
        "import sys, prefect_gpt_image.api, prefect_gpt_image.sandbox; "
        "print(sorted(m for m in sys.modules if m == 'prefect' or m.startswith('prefect.')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
