"""What a run may read: input URLs reach public hosts only (every spelling of loopback, every
address a name resolves to, every redirect hop checked, before any connection), local paths stay
inside the input roots, ``s3://`` inputs inside the allowed buckets; a refused input names itself
and costs nothing; each remote input is fetched once per run.

Nothing here sends a packet off loopback: the private, link-local and metadata addresses are
answered by a resolver hook, and a connection hook records and refuses every connection attempt
to an address off loopback.
"""

from __future__ import annotations

import socket
import threading
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from prefect_gpt_image.api.inputpolicy import InputPolicy
from prefect_gpt_image.calls.inputs import read_input
from prefect_gpt_image.flows import ChainResult, batch_edit, image_pipeline
from prefect_gpt_image.flows.params import BlendStep
from prefect_gpt_image.storage import LocalImageStore, S3ImageStore
from prefect_gpt_image.tasks import ImageStorageError, InputImageError, edit_image
from tests.support.images import png_bytes
from tests.support.sandbox import billed_images, sandbox_requests

from .conftest import REPO_ROOT, fast_settings

IMAGE = png_bytes((64, 64), "teal")
DEFAULT = InputPolicy.build(environ={})
"""The policy with nothing configured: public hosts, any local path, the store's bucket."""


class Counting:
    """A local image server (127.0.0.1, and ::1 on the same port when the machine has it) that
    counts the requests it receives: ``/img.png`` is an image (``?colour=red``: of that colour),
    ``/redirect?to=URL`` a 302."""

    def __init__(self) -> None:
        self.hits: Counter[str] = Counter()
        self.servers: list[ThreadingHTTPServer] = []
        counting = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                parts = urlsplit(self.path)
                counting.hits[parts.path] += 1
                if parts.path == "/redirect":
                    self.send_response(302)
                    self.send_header("Location", parse_qs(parts.query)["to"][0])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                colour = parse_qs(parts.query).get("colour")
                body = png_bytes((64, 64), colour[0]) if colour else IMAGE
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        first = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = first.server_address[1]
        self.servers.append(first)

        class V6(ThreadingHTTPServer):
            address_family = socket.AF_INET6

        try:
            self.servers.append(V6(("::1", self.port), Handler))
        except OSError:  # no IPv6 loopback here: [::1] cannot reach the server anyway
            pass
        for server in self.servers:
            threading.Thread(target=server.serve_forever, daemon=True).start()

    @property
    def total(self) -> int:
        return sum(self.hits.values())

    def stop(self) -> None:
        for server in self.servers:
            server.shutdown()
            server.server_close()


@pytest.fixture
def target() -> Iterator[Counting]:
    server = Counting()
    yield server
    server.stop()


@pytest.fixture
def no_opt_in(monkeypatch: pytest.MonkeyPatch) -> None:
    """The defaults: the test session's opt-ins (loopback hosts, any bucket) taken away."""
    for name in ("GPT_IMAGE_ALLOW_PRIVATE_HOSTS", "GPT_IMAGE_INPUT_ROOTS", "GPT_IMAGE_INPUT_BUCKETS"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def sandbox(prefect_env: Path, make_sandbox: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A sandbox the environment's key and base URL point at, on the session's Prefect server."""
    server = make_sandbox()
    monkeypatch.setenv("GPT_IMAGE_API_KEY", "sk-input-policy")
    monkeypatch.setenv("GPT_IMAGE_BASE_URL", server.base_url)
    return server


@pytest.fixture
def store(tmp_path: Path) -> LocalImageStore:
    return LocalImageStore(tmp_path / "store")


SPELLINGS = [
    "localhost",
    "LOCALHOST",
    "localhost.",
    "127.0.0.1",
    "127.0.0.1.",
    "[::1]",
    "0.0.0.0",  # noqa: S104 (a URL's host, not a bind address)
    "2130706433",
    "0x7f000001",
    "0177.0.0.1",
    "127.1",
    "[::ffff:127.0.0.1]",
    "[::ffff:7f00:1]",
]


@pytest.mark.parametrize("host", SPELLINGS)
def test_every_spelling_of_loopback_is_refused_before_a_request(
    host: str, target: Counting, store: LocalImageStore
) -> None:
    url = f"http://{host}:{target.port}/img.png"
    with pytest.raises(InputImageError) as refused:
        read_input(url, store, what="references[2]", policy=DEFAULT)
    message = str(refused.value)
    assert message.startswith("references[2]: ")
    if "does not resolve" not in message:  # a spelling the resolver refuses is refused as well
        kind = "an unspecified" if host == "0.0.0.0" else "a loopback"  # noqa: S104 (a host, not a bind)
        assert f"{kind} address; it was not contacted" in message
    assert f":{target.port}/img.png" in message
    assert target.total == 0


def test_a_redirect_from_an_allowed_host_to_loopback_is_refused(
    target: Counting, store: LocalImageStore
) -> None:
    """``localhost`` is allowed by name; it redirects to 127.0.0.1, which is not: the redirect is
    followed by hand, its hop checked, and the loopback target never sees a request."""
    policy = InputPolicy.build(private_hosts=["localhost"], environ={})
    inner = f"http://127.0.0.1:{target.port}/img.png"
    url = f"http://localhost:{target.port}/redirect?to={inner}"
    with pytest.raises(InputImageError) as refused:
        read_input(url, store, what="images[0]", policy=policy)
    assert str(refused.value).startswith("images[0]: ") and "127.0.0.1" in str(refused.value)
    assert target.hits == Counter({"/redirect": 1})

    # The same redirect to the named host itself is followed: the hop is checked, not refused.
    ok = read_input(f"http://localhost:{target.port}/redirect?to=/img.png", store, what="x", policy=policy)
    assert ok.sha256 == read_input(IMAGE, store, what="x", policy=policy).sha256
    assert target.hits == Counter({"/redirect": 2, "/img.png": 1})


def test_the_opt_in_lets_a_named_host_through(target: Counting, store: LocalImageStore) -> None:
    url = f"http://127.0.0.1:{target.port}/img.png"
    by_address = InputPolicy.build(private_hosts=["127.0.0.1"], environ={})
    assert read_input(url, store, what="images[0]", policy=by_address).width == 64
    by_network = InputPolicy.build(private_hosts=["127.0.0.0/8"], environ={})
    assert read_input(url, store, what="images[0]", policy=by_network).width == 64
    by_env = InputPolicy.build(environ={"GPT_IMAGE_ALLOW_PRIVATE_HOSTS": "db.internal, 127.0.0.1"})
    assert read_input(url, store, what="images[0]", policy=by_env).width == 64
    assert target.hits["/img.png"] == 3
    # The environment, when set, replaces the settings' list (the worker's operator has the last word).
    replaced = InputPolicy.build(private_hosts=["127.0.0.1"], environ={"GPT_IMAGE_ALLOW_PRIVATE_HOSTS": "x"})
    with pytest.raises(InputImageError):
        read_input(url, store, what="images[0]", policy=replaced)
    assert target.hits["/img.png"] == 3


class Hooks:
    """A resolver answering made-up names with chosen addresses, and a connection hook that
    records every connection attempt off loopback and refuses it (no packet leaves)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, answers: dict[str, list[str]]) -> None:
        self.lookups: list[str] = []
        self.attempts: list[Any] = []
        real_getaddrinfo = socket.getaddrinfo
        real_create = socket.create_connection
        real_connect = socket.socket.connect

        def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
            self.lookups.append(str(host))
            if host in answers:
                return [
                    (
                        socket.AF_INET6 if ":" in a else socket.AF_INET,
                        socket.SOCK_STREAM,
                        6,
                        "",
                        (a, port or 80, 0, 0) if ":" in a else (a, port or 80),
                    )
                    for a in answers[host]
                ]
            return real_getaddrinfo(host, port, *args, **kwargs)

        def off_loopback(address: Any) -> bool:
            return str(address[0]) not in ("127.0.0.1", "::1", "localhost")

        def create_connection(address: Any, *args: Any, **kwargs: Any) -> Any:
            if off_loopback(address):
                self.attempts.append(address)
                raise ConnectionRefusedError("refused by the test's connection hook")
            return real_create(address, *args, **kwargs)

        def connect(sock: socket.socket, address: Any) -> Any:
            if off_loopback(address):
                self.attempts.append(address)
                raise ConnectionRefusedError("refused by the test's connection hook")
            return real_connect(sock, address)

        monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
        monkeypatch.setattr(socket, "create_connection", create_connection)
        monkeypatch.setattr(socket.socket, "connect", connect)


@pytest.mark.parametrize(
    ("answer", "kind"),
    [
        (["10.0.0.5"], "private"),
        (["169.254.169.254"], "link-local"),
        (["fd00::1"], "unique-local"),
        (["100.64.1.1"], "shared"),
        (["93.184.216.34", "10.0.0.5"], "private"),  # one bad answer among good ones refuses the name
        (["224.0.0.1"], "multicast"),
        (["240.0.0.1"], "reserved"),
    ],
)
def test_a_name_resolving_to_an_internal_address_is_refused_before_any_connection(
    answer: list[str], kind: str, monkeypatch: pytest.MonkeyPatch, store: LocalImageStore
) -> None:
    hooks = Hooks(monkeypatch, {"images.example.test": answer})
    with pytest.raises(InputImageError) as refused:
        read_input("https://images.example.test/cat.png?sig=SECRET", store, what="mask", policy=DEFAULT)
    message = str(refused.value)
    assert message.startswith("mask: https://images.example.test/cat.png: refused")
    assert f"a {kind} address" in message and "SECRET" not in message
    assert hooks.attempts == []


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/",
        "http://[fd00::1]/x.png",
        "http://10.1.2.3:8080/x.png",
        "http://[::ffff:169.254.169.254]/x.png",
        "http://[64:ff9b::a9fe:a9fe]/x.png",  # NAT64 of the metadata address
        "http://[2002:a9fe:a9fe::1]/x.png",  # 6to4 of the metadata address
        "http://[2002:7f00:1::1]/x.png",  # 6to4 of loopback
        "http://100.100.100.200/x.png",
    ],
)
def test_literal_internal_addresses_are_refused_before_any_connection(
    url: str, monkeypatch: pytest.MonkeyPatch, store: LocalImageStore
) -> None:
    hooks = Hooks(monkeypatch, {})
    with pytest.raises(InputImageError, match=r"^images\[1\]: .*refused"):
        read_input(url, store, what="images[1]", policy=DEFAULT)
    assert hooks.attempts == []


def test_the_connection_goes_to_the_address_that_was_checked(
    monkeypatch: pytest.MonkeyPatch, store: LocalImageStore
) -> None:
    """An allowed internal name is resolved once; the one connection attempt goes to that address
    (no second lookup a rebinding DNS could answer differently)."""
    hooks = Hooks(monkeypatch, {"images.internal": ["10.0.0.5"]})
    policy = InputPolicy.build(private_hosts=["images.internal"], environ={})
    with pytest.raises(ImageStorageError, match="ConnectError"):  # the hook refused the connection
        read_input("http://images.internal:8080/x.png", store, what="images[0]", policy=policy)
    assert hooks.lookups.count("images.internal") == 1
    assert [tuple(a[:2]) for a in hooks.attempts] == [("10.0.0.5", 8080)]


def test_a_redirect_to_the_metadata_service_is_refused_before_connecting(
    target: Counting, monkeypatch: pytest.MonkeyPatch, store: LocalImageStore
) -> None:
    hooks = Hooks(monkeypatch, {})
    policy = InputPolicy.build(private_hosts=["localhost"], environ={})
    url = f"http://localhost:{target.port}/redirect?to=http://169.254.169.254/latest/meta-data/iam"
    with pytest.raises(InputImageError, match=r"169\.254\.169\.254 is a link-local address"):
        read_input(url, store, what="images[0]", policy=policy)
    assert hooks.attempts == [] and target.hits == Counter({"/redirect": 1})


# -- local paths ----------------------------------------------------------------------------------


def test_local_paths_stay_inside_the_input_roots(tmp_path: Path, store: LocalImageStore) -> None:
    inside, outside = tmp_path / "inputs", tmp_path / "private"
    inside.mkdir()
    outside.mkdir()
    (inside / "ok.png").write_bytes(IMAGE)
    (outside / "secret.png").write_bytes(IMAGE)
    (inside / "link.png").symlink_to(outside / "secret.png")
    (inside / "linked-folder").symlink_to(outside)
    policy = InputPolicy.build(roots=[str(inside)], environ={})

    assert read_input(str(inside / "ok.png"), store, what="images[0]", policy=policy).width == 64
    assert read_input((inside / "ok.png").as_uri(), store, what="images[0]", policy=policy).width == 64
    for escape in (
        str(outside / "secret.png"),
        (outside / "secret.png").as_uri(),
        f"{inside}/../private/secret.png",
        str(inside / "link.png"),
        str(inside / "linked-folder" / "secret.png"),
    ):
        with pytest.raises(InputImageError, match=r"^images\[0\]: .* is outside the folders inputs may"):
            read_input(escape, store, what="images[0]", policy=policy)
    # The store's own folder (earlier outputs) is always readable.
    own = store.root / "images" / "x.png"
    own.parent.mkdir(parents=True)
    own.write_bytes(IMAGE)
    assert read_input(str(own), store, what="images[0]", policy=policy).width == 64
    # Unset roots: anywhere (a script reading its own files); the environment replaces the setting.
    assert read_input(str(outside / "secret.png"), store, what="x", policy=DEFAULT).width == 64
    env_roots = InputPolicy.build(roots=[str(outside)], environ={"GPT_IMAGE_INPUT_ROOTS": str(inside)})
    with pytest.raises(InputImageError, match="outside the folders"):
        read_input(str(outside / "secret.png"), store, what="x", policy=env_roots)


def test_batch_edit_folders_and_manifests_outside_the_roots_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sandbox: Any
) -> None:
    inside, outside = tmp_path / "inputs", tmp_path / "private"
    inside.mkdir()
    outside.mkdir()
    (outside / "secret.png").write_bytes(IMAGE)
    (outside / "rows.csv").write_text(f"image\n{outside / 'secret.png'}\n")
    (inside / "escape").symlink_to(outside)
    monkeypatch.setenv("GPT_IMAGE_INPUT_ROOTS", str(inside))
    storage = str(tmp_path / "store")
    for images in (str(outside), f"{inside}/../private", str(inside / "escape"), str(outside / "rows.csv")):
        state = batch_edit(images=images, prompt="frame it", storage=storage, return_state=True)
        assert state.is_failed()
        assert "is outside the folders inputs may be read from" in (state.message or ""), state.message
    assert sandbox_requests(sandbox) == []


# -- buckets --------------------------------------------------------------------------------------


def test_s3_inputs_outside_the_allowed_buckets_are_refused(
    local_s3: Any, s3_bucket: str, no_opt_in: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in local_s3.env().items():
        monkeypatch.setenv(name, value)
    other = f"{s3_bucket}-other"
    client = local_s3.client()
    client.create_bucket(Bucket=other)
    client.put_object(Bucket=other, Key="in/cat.png", Body=IMAGE)
    client.put_object(Bucket=s3_bucket, Key="in/cat.png", Body=IMAGE)
    store = S3ImageStore.from_uri(f"s3://{s3_bucket}/out")
    uri = f"s3://{other}/in/cat.png"

    with pytest.raises(InputImageError, match=rf"^images\[0\]: bucket '{other}' is not one inputs may"):
        read_input(uri, store, what="images[0]", policy=DEFAULT)
    # the store's own bucket is readable; a named bucket (or the environment's) too
    assert read_input(f"s3://{s3_bucket}/in/cat.png", store, what="x", policy=DEFAULT).width == 64
    assert read_input(uri, store, what="x", policy=InputPolicy.build(buckets=[other], environ={})).width == 64
    monkeypatch.setenv("GPT_IMAGE_INPUT_BUCKETS", other)
    assert read_input(uri, store, what="x", policy=fast_settings().input_policy()).width == 64


# -- through the tasks and flows -----------------------------------------------------------------


def test_a_refused_reference_fails_the_task_before_paying(
    target: Counting, no_opt_in: None, sandbox: Any, tmp_path: Path
) -> None:
    url = f"http://127.0.0.1:{target.port}/img.png"
    kwargs: dict[str, Any] = {"references": [url], "storage": str(tmp_path / "store")}
    with pytest.raises(InputImageError, match=r"^images\[1\]: http://127\.0\.0\.1:\d+/img\.png: refused"):
        edit_image("frame it", IMAGE, settings=fast_settings(), **kwargs)
    assert target.total == 0 and sandbox_requests(sandbox) == []
    # the settings block's opt-in lets the named host through
    edit_image("frame it", IMAGE, settings=fast_settings(allowed_private_hosts=["127.0.0.1"]), **kwargs)
    assert target.hits["/img.png"] == 1 and len(sandbox_requests(sandbox)) == 1


def test_a_batch_row_with_a_refused_input_is_invalid_and_the_others_run(
    target: Counting, no_opt_in: None, sandbox: Any, tmp_path: Path
) -> None:
    good = [tmp_path / "a.png", tmp_path / "b.png"]
    for i, path in enumerate(good):
        path.write_bytes(png_bytes((64, 64), ("red", "blue")[i]))
    refused = f"http://2130706433:{target.port}/img.png"
    state = batch_edit(
        images=[str(good[0]), refused, str(good[1])],
        prompt="frame it",
        storage=str(tmp_path / "store"),
        return_state=True,
    )
    result: ChainResult = state.result(raise_on_failure=False)  # type: ignore[assignment]
    rows = {s.row: s for s in result.steps}
    assert rows[1].status == rows[3].status == "stored"
    assert rows[2].status == "invalid" and rows[2].error_type == "InputImageError"
    assert f"http://2130706433:{target.port}/img.png: refused" in (rows[2].error or "")
    assert target.total == 0
    assert len(sandbox_requests(sandbox)) == 2 and billed_images(sandbox) == 2


def test_each_remote_input_is_fetched_once_per_run(target: Counting, sandbox: Any, tmp_path: Path) -> None:
    """Three rows share a reference URL and each names its own image URL: the plan checks every
    input and the calls send them, yet each URL is fetched once (the session's opt-in allows
    127.0.0.1)."""
    base = f"http://127.0.0.1:{target.port}"
    images = [f"{base}/redirect?to=/img.png%3Fcolour={colour}" for colour in ("red", "green", "blue")]
    state = batch_edit(
        images=images,
        prompt="frame it",
        references=[f"{base}/img.png"],
        storage=str(tmp_path / "store"),
        return_state=True,
    )
    assert state.is_completed(), state.message
    assert target.hits == Counter({"/redirect": 3, "/img.png": 3 + 1})
    assert len(sandbox_requests(sandbox)) == 3

    target.hits.clear()
    pipeline = image_pipeline(
        "a paper boat",
        blend=BlendStep(prompt="blend them", references=[f"{base}/img.png"]),
        storage=str(tmp_path / "store"),
        return_state=True,
    )
    assert pipeline.is_completed(), pipeline.message
    assert target.hits == Counter({"/img.png": 1})


# -- the shipped deployments ----------------------------------------------------------------------


def _deployments_module(name: str) -> Any:
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        f"gpt_image_{name}", REPO_ROOT / "deployments" / f"{name}.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_shipped_deployments_confine_inputs(no_opt_in: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every deployment of prefect.yaml runs with input roots and buckets set (the work pool's
    environment, which serve.py applies too): the shipped manifests are readable, a file
    elsewhere on the worker and a bucket not named are not."""
    import yaml

    config = yaml.safe_load((REPO_ROOT / "deployments" / "prefect.yaml").read_text())
    for spec in config["deployments"]:
        env = spec["work_pool"]["job_variables"]["env"]
        assert env["GPT_IMAGE_INPUT_ROOTS"] and env["GPT_IMAGE_INPUT_BUCKETS"], spec["name"]
    environment = _deployments_module("serve").job_environment()
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    policy = fast_settings().input_policy()  # a settings block's own values are replaced
    store = LocalImageStore(REPO_ROOT / "gpt-image-output")
    manifest = REPO_ROOT / "deployments" / "manifests" / "nightly.csv"
    assert policy.check_path(manifest) == manifest
    with pytest.raises(InputImageError, match="outside the folders"):
        read_input(str(REPO_ROOT / "pyproject.toml"), store, what="images[0]", policy=policy)
    with pytest.raises(InputImageError, match="not one inputs may be read from"):
        read_input("s3://someone-elses-bucket/x.png", store, what="images[0]", policy=policy)


def test_blocks_script_saves_settings_that_confine_inputs(no_opt_in: None, prefect_env: Path) -> None:
    """A settings block saved by deployments/blocks.py confines local inputs to the shipped
    manifests and ./inputs; --input-root and --input-bucket replace those."""
    import uuid

    from prefect_gpt_image.blocks import GptImageSettings

    blocks = _deployments_module("blocks")
    name = f"inputs-{uuid.uuid4().hex[:10]}"
    blocks.save_blocks(name=name, api_key="sk-blocks", storage="./gpt-image-output")
    settings = GptImageSettings.load(name)
    assert settings.input_roots == list(blocks.DEFAULT_INPUT_ROOTS) and settings.input_buckets == []
    policy = settings.input_policy()
    store = LocalImageStore(REPO_ROOT / "gpt-image-output")
    with pytest.raises(InputImageError, match="outside the folders"):
        read_input(str(REPO_ROOT / "tests" / "x.png"), store, what="images[0]", policy=policy)
    blocks.save_blocks(
        name=name, api_key="sk-blocks", settings={"input_roots": ["/srv/images"], "input_buckets": ["photos"]}
    )
    settings = GptImageSettings.load(name)
    assert (settings.input_roots, settings.input_buckets) == (["/srv/images"], ["photos"])
