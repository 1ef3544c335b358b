"""Every error the package raises on purpose is a ``GptImageError`` (the README's promise), and
every one survives pickle and cloudpickle with its attributes (Prefect persists a failed task's or
flow's exception as its result with cloudpickle and reads it back), never carrying the API key."""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import pickle
import pkgutil
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from types import ModuleType
from typing import Any

import cloudpickle
import pytest

import prefect_gpt_image
from prefect_gpt_image import api, flows, tasks
from prefect_gpt_image.api import GeneratedImage, GenerateRequest, GptImageError, ImagesClient, RetryPolicy
from prefect_gpt_image.api.errors import error_for_status
from prefect_gpt_image.api.suggest import UnknownOptionError
from prefect_gpt_image.cli.exits import UsageError
from prefect_gpt_image.flows import BatchResult, RowResult
from prefect_gpt_image.flows.reading import InputSourceError
from prefect_gpt_image.flows.review import ReviewTimeoutError
from prefect_gpt_image.tasks import ImageRef
from tests.support.local_http import LocalHTTPServer

KEY = "sk-pickle-canary-5f1e2d3c4b5a"
_SHA = hashlib.sha256(b"a kite").hexdigest()


def _exception_classes(module: ModuleType, names: list[str]) -> dict[str, type[BaseException]]:
    found = {name: getattr(module, name) for name in names}
    return {n: c for n, c in found.items() if inspect.isclass(c) and issubclass(c, BaseException)}


def exported() -> dict[str, type[BaseException]]:
    """Every exception class exported by ``prefect_gpt_image.api``, ``.tasks`` and ``.flows``."""
    out: dict[str, type[BaseException]] = {}
    for module in (api, tasks, flows):
        out.update(_exception_classes(module, list(module.__all__)))
    return out


def defined() -> dict[str, type[BaseException]]:
    """Every public exception class defined in the package's modules (the sandbox, a server of its
    own, aside): whatever the package raises on purpose, exported or not."""
    out: dict[str, type[BaseException]] = {}
    for info in pkgutil.walk_packages(prefect_gpt_image.__path__, "prefect_gpt_image."):
        if info.name.startswith("prefect_gpt_image.sandbox") or info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        names = [n for n, c in vars(module).items() if not n.startswith("_") and inspect.isclass(c)]
        classes = _exception_classes(module, names)
        out.update({n: c for n, c in classes.items() if c.__module__ == info.name})
    return out


def test_every_exported_exception_is_a_gpt_image_error() -> None:
    classes = exported()
    assert {"ImageTaskError", "BatchFailedError", "DownloadError", "APIStatusError"} <= set(classes)
    outside = sorted(name for name, cls in classes.items() if not issubclass(cls, GptImageError))
    assert not outside, f"exported exceptions not under GptImageError: {outside}"


def test_every_exception_the_package_defines_is_a_gpt_image_error() -> None:
    classes = defined()
    assert {"RefusedURLError", "TemplateError", "PartialDeliveryError"} <= set(classes)
    outside = sorted(name for name, cls in classes.items() if not issubclass(cls, GptImageError))
    assert not outside, f"exceptions not under GptImageError: {outside}"


def test_former_standard_bases_are_kept() -> None:
    """Code that caught them by their standard base before still catches them."""
    from prefect_gpt_image.api.inputpolicy import RefusedInputError
    from prefect_gpt_image.api.netpolicy import RefusedURLError, URLFetchError
    from prefect_gpt_image.flows.templates import TemplateError

    for cls in (
        api.ConfigurationError,
        api.RequestValidationError,
        tasks.InputImageError,
        RefusedInputError,
        RefusedURLError,
        URLFetchError,
        TemplateError,
    ):
        assert issubclass(cls, ValueError), cls
    assert issubclass(tasks.CacheLockTimeoutError, TimeoutError)
    assert issubclass(tasks.PartialDeliveryError, api.DownloadError)


def _ref(n: int = 0) -> ImageRef:
    return ImageRef(
        uri=f"s3://bucket/gpt/images/{_SHA}.png",
        sha256=_SHA,
        width=1024,
        height=640,
        format="png",
        size_bytes=1234 + n,
        request_id="req-7",
        cost=0.0377,
        prompt="a kite",
        link="https://s3.example/x?X-Amz-Signature=abc",
    )


def _status(status: int | None, code: str | None = None) -> Any:
    body = {
        "error": {"message": "refused (request id: req-9)", "type": "invalid_request_error", "code": code}
    }
    error = error_for_status(status, body, request_id="req-9")
    error.retry_after = 2.5
    return error


def samples() -> dict[str, BaseException]:
    """One error of every class the package defines, built with realistic attributes."""
    from prefect_gpt_image.api.inputpolicy import RefusedInputError
    from prefect_gpt_image.api.netpolicy import RefusedURLError, URLFetchError
    from prefect_gpt_image.flows.templates import TemplateError
    from prefect_gpt_image.local_prefect import LocalPrefectError
    from prefect_gpt_image.local_s3 import LocalS3Error

    request = GenerateRequest.build(prompt="a kite", n=3, size="1024x640")
    image = GeneratedImage(
        data=b"\x89PNG-bytes",
        path=None,
        format="png",
        width=1024,
        height=640,
        sha256=_SHA,
        size_bytes=11,
        request_id="req-7",
        request=request,
        index=1,
        url="https://media.example/req-7-2.png",
    )
    download = api.DownloadError(
        "result URL given up", url="https://media.example/req-7-3.png", request_id="req-7"
    )
    download.images, download.undelivered = [image], 1
    row = RowResult(
        row=1, id="a", prompt="a kite", status="failed", images=[_ref()], error="x", request_id="req-7"
    )
    built: list[BaseException] = [
        GptImageError("boom", request_id="req-1"),
        api.ConfigurationError("no API key: set GPT_IMAGE_API_KEY (with GPT_IMAGE_BASE_URL) or ..."),
        api.RequestValidationError([("size", "999x1", "each side a multiple of 16")]),
        api.APIStatusError(
            "teapot", status=418, type="t", code="c", param="p", request_id="r", retry_after=1.0
        ),
        _status(400),
        _status(400, "moderation_blocked"),
        _status(401),
        _status(403),
        _status(402, "insufficient_user_quota"),
        _status(404),
        _status(413),
        _status(429),
        _status(503),
        _status(None),
        api.APIConnectionError("transport failed"),
        api.ConnectionFailedError("could not connect to http://127.0.0.1:1/v1: ConnectError"),
        api.OutcomeUnknownError("connection lost; it may have been billed", request_id="req-3"),
        api.ResponseTimeoutError("no answer within the timeout", request_id="req-4"),
        api.InvalidResponseError("malformed stream", request_id="req-5"),
        download,
        api.UnsafeURLError("result URL host evil.example is not allowed", url="https://evil.example/x.png"),
        RefusedURLError("http://169.254.169.254/x.png: a link-local address"),
        URLFetchError("https://img.example/x.png: HTTP 500"),
        RefusedInputError("/etc/x.png: outside the allowed folders"),
        TemplateError("line 2: the template '{subject}' names a column the row lacks"),
        tasks.ImageTaskError("a task error"),
        tasks.BudgetExceededError("over max_cost_per_run", cap="max_cost_per_run"),
        tasks.InputImageError("image: not an image"),
        tasks.CacheLockTimeoutError("another run held the lock"),
        tasks.ImageStorageError("the store failed; nothing was sent"),
        tasks.ImagesSpooledError("spooled", spool_path=Path("/tmp/spool/k"), count=2),
        tasks.ImagesLostError("neither stored nor spooled; request id req-8"),
        tasks.PartialDeliveryError(
            "2 of 3 image(s) stored",
            refs=[_ref(), _ref(1)],
            undelivered=1,
            url="https://m/x",
            request_id="req-7",
        ),
        flows.BatchFailedError("1 of 1 rows failed", result=BatchResult(rows=[row])),
        LocalS3Error("weed did not start"),
        LocalPrefectError("the Prefect server did not start"),
        UnknownOptionError("generate_image() got an unexpected keyword argument 'qualty'"),
        InputSourceError("images='s3://photos/in/': the bucket does not exist; set images to a prefix"),
        ReviewTimeoutError("review of step 'generate' (round 1): no answer within 60 s"),
        UsageError("--size '1000x1000': width and height must be multiples of 16"),
    ]
    return {type(e).__name__: e for e in built}


def test_samples_cover_every_exception_class() -> None:
    assert set(exported()) <= set(defined()) <= set(samples())


@pytest.mark.parametrize(
    "dumps,loads",
    [(pickle.dumps, pickle.loads), (cloudpickle.dumps, pickle.loads)],
    ids=["pickle", "cloudpickle"],
)
@pytest.mark.parametrize("name", sorted(samples()))
def test_exception_round_trips_with_its_attributes(name: str, dumps: Any, loads: Any) -> None:
    error = samples()[name]
    back = loads(dumps(error))
    assert type(back) is type(error)
    assert back.args == error.args and str(back) == str(error)
    assert vars(back) == vars(error)
    assert vars(back)  # realistic: every sample carries attributes (its message at least)


class _EchoingHandler(BaseHTTPRequestHandler):
    """Answers every request 400 with the bearer key it was sent in the message, as a careless
    gateway might."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        key = self.headers.get("Authorization", "").removeprefix("Bearer ")
        body = json.dumps({"error": {"message": f"bad key {key}", "type": "invalid_request_error"}})
        self.send_response(400)
        self.send_header("Content-Type", "application/json")
        self.send_header("X-Oneapi-Request-Id", "req-echo")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def echoing_gateway() -> Iterator[LocalHTTPServer]:
    gateway = LocalHTTPServer(_EchoingHandler)
    try:
        yield gateway
    finally:
        gateway.close()


def test_a_pickled_error_never_holds_the_key(echoing_gateway: LocalHTTPServer) -> None:
    with ImagesClient(KEY, base_url=echoing_gateway.base_url, retry=RetryPolicy(max_attempts=1)) as client:
        with pytest.raises(api.BadRequestError) as caught:
            client.generate("a kite")
    error = caught.value
    assert error.request_id == "req-echo" and "***" in str(error)
    for dumps in (pickle.dumps, cloudpickle.dumps):
        payload = dumps(error)
        assert KEY.encode() not in payload
        back = pickle.loads(payload)  # noqa: S301 - bytes this test just made
        assert isinstance(back, api.BadRequestError) and back.status == 400 and "***" in str(back)
