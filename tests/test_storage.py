"""The image stores against a real local folder and a real S3 server (SeaweedFS on 127.0.0.1)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import boto3
import botocore.auth
import httpx
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError, EndpointConnectionError, ReadTimeoutError
from prefect_aws import AwsCredentials, MinIOCredentials, S3Bucket
from prefect_aws.client_parameters import AwsClientParameters
from pydantic import SecretStr

from prefect_gpt_image.local_s3 import LocalS3Server
from prefect_gpt_image.storage import (
    ImageStore,
    LocalImageStore,
    S3ImageStore,
    StoredObject,
    check_key,
    resolve_store,
)
from tests.support.images import png_bytes

PNG = png_bytes((32, 24), "tomato")
PNG_SHA = hashlib.sha256(PNG).hexdigest()


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ImageStore:
    """The same tests on both backends, each under prefix ``run1``."""
    if request.param == "local":
        return LocalImageStore(tmp_path / "out", prefix="run1")
    server: LocalS3Server = request.getfixturevalue("local_s3")
    bucket: str = request.getfixturevalue("s3_bucket")
    return S3ImageStore(server.client(), bucket, prefix="run1")


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, local_s3: LocalS3Server) -> dict[str, str]:
    """boto3's standard chain pointed at the local server only (no profile, files or IMDS)."""
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    for name, value in local_s3.env().items():
        monkeypatch.setenv(name, value)
    return local_s3.env()


# -- behaviour common to both backends ----------------------------------------------------------


def test_put_image_writes_content_addressed_object_with_metadata(store: ImageStore) -> None:
    stored = store.put_image(PNG_SHA, "png", PNG, {"cache-key": "abc123"})

    assert stored == StoredObject(
        uri=store.uri_for(f"run1/images/{PNG_SHA}.png"),
        key=f"run1/images/{PNG_SHA}.png",
        sha256=PNG_SHA,
        size_bytes=len(PNG),
        content_type="image/png",
        created=True,
    )
    assert store.exists(stored.key)
    assert store.read_bytes(stored.key) == PNG
    assert store.read_bytes(stored.uri) == PNG

    assert store.metadata(stored.key) == {"sha256": PNG_SHA, "cache-key": "abc123"}
    # a second put keeps the first writer's metadata
    assert store.put_image(PNG_SHA, "png", PNG, {"cache-key": "other"}).created is False
    assert store.metadata(stored.key) == {"sha256": PNG_SHA, "cache-key": "abc123"}

    record = {"sha256": PNG_SHA, "prompt": "a red square", "usage": {"total_tokens": 12}}
    key = store.key("cache", "abc123.json")
    store.put_json(key, record)
    assert store.get_json(key) == record
    assert store.metadata(key) == {}
    store.put_json(key, {**record, "prompt": "rewritten"})
    assert json.loads(store.read_bytes(store.uri_for(key)))["prompt"] == "rewritten"


@pytest.mark.parametrize(
    "metadata",
    [
        {"Cache-Key": "x"},
        {"sha256": "x"},
        {"cache key": "x"},
        {"k": "naïve"},
        {"k": "a\nb"},
        {"k": "x" * 2000},
    ],
)
def test_invalid_metadata_refused_before_writing(store: ImageStore, metadata: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="metadata"):
        store.put_image(PNG_SHA, "png", PNG, metadata)
    assert not store.exists(store.image_key(PNG_SHA, "png"))


def test_second_put_leaves_existing_object_alone(store: ImageStore) -> None:
    key = store.image_key(PNG_SHA, "png")
    # Something already sits at the key (say a half-finished earlier run): it is not replaced.
    if isinstance(store, S3ImageStore):
        store.client.put_object(Bucket=store.bucket, Key=key, Body=b"earlier")
    else:
        assert isinstance(store, LocalImageStore)
        store.path_for(key).parent.mkdir(parents=True)
        store.path_for(key).write_bytes(b"earlier")

    again = store.put_image(PNG_SHA, "png", PNG)

    assert again.created is False
    assert again.key == key
    assert store.read_bytes(key) == b"earlier"


def test_second_put_of_same_image(store: ImageStore) -> None:
    first = store.put_image(PNG_SHA, "png", PNG)
    second = store.put_image(PNG_SHA, "png", PNG)
    assert (first.created, second.created) == (True, False)
    assert store.read_bytes(first.key) == PNG


def test_put_image_from_path_streams_the_file(store: ImageStore, tmp_path: Path) -> None:
    big = png_bytes((700, 500), "navy")
    path = tmp_path / "spooled.png"
    path.write_bytes(big)
    sha = hashlib.sha256(big).hexdigest()

    stored = store.put_image(sha, "png", path)

    assert stored.created and stored.size_bytes == len(big)
    assert store.read_bytes(stored.uri) == big


def test_wrong_sha256_or_format_refused(store: ImageStore, tmp_path: Path) -> None:
    other = hashlib.sha256(b"other").hexdigest()
    with pytest.raises(ValueError, match="sha256 mismatch"):
        store.put_image(other, "png", PNG)
    path = tmp_path / "x.png"
    path.write_bytes(PNG)
    with pytest.raises(ValueError, match="sha256 mismatch"):
        store.put_image(other, "png", path)
    with pytest.raises(ValueError, match="not jpeg"):
        store.put_image(PNG_SHA, "jpeg", PNG)
    with pytest.raises(ValueError, match="extension"):
        store.put_image(PNG_SHA, "gif", PNG)
    with pytest.raises(ValueError, match="invalid sha256"):
        store.put_image("abc", "png", PNG)
    assert not store.exists(store.image_key(other, "png"))
    assert not store.exists(store.image_key(PNG_SHA, "jpeg"))


def test_missing_objects(store: ImageStore) -> None:
    assert store.metadata(store.image_key(PNG_SHA, "png")) is None
    assert store.get_json(store.key("cache", "nothing.json")) is None
    assert not store.exists(store.image_key(PNG_SHA, "png"))
    with pytest.raises(FileNotFoundError):
        store.read_bytes(store.image_key(PNG_SHA, "png"))


def test_json_records(store: ImageStore) -> None:
    key = store.key("cache", "abc.json")
    assert key == "run1/cache/abc.json"
    store.put_json(key, {"uri": "s3://b/k", "n": [1, 2], "text": "déjà vu"})
    assert store.get_json(key) == {"uri": "s3://b/k", "n": [1, 2], "text": "déjà vu"}
    store.put_json(key, {"n": 3})
    assert store.get_json(key) == {"n": 3}


def test_list_names_of_a_folder(store: ImageStore) -> None:
    """A batch lists the cache folder instead of asking for each row: the names directly in the
    folder (not deeper, not another folder's), or None once there are more than asked for."""
    folder = f"listed-{uuid.uuid4().hex[:8]}"
    assert store.list_names(folder, at_most=10) == set()
    for name in ("a.json", "b.json", "c.json"):
        store.put_json(store.key(folder, name), {"name": name})
    store.put_bytes(store.key(folder, "deeper", "d.json"), b"{}", "application/json")
    store.put_json(store.key(f"{folder}-other", "e.json"), {})
    assert store.list_names(folder, at_most=10) == {"a.json", "b.json", "c.json"}
    assert store.list_names(folder, at_most=3) == {"a.json", "b.json", "c.json"}
    assert store.list_names(folder, at_most=2) is None


@pytest.mark.parametrize(
    "key", ["", "/etc/passwd", "a//b", "a/", "../x", "a/../../x", "a/./b", "a\\b", "a\x00b"]
)
def test_bad_keys_refused(store: ImageStore, key: str) -> None:
    with pytest.raises(ValueError, match="invalid key"):
        check_key(key)
    with pytest.raises(ValueError, match="invalid key"):
        store.exists(key)
    with pytest.raises(ValueError, match="invalid key"):
        store.put_json(key, {})
    with pytest.raises(ValueError, match="invalid key"):
        store.link_for(key)


def test_bad_prefix_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="invalid key"):
        LocalImageStore(tmp_path, prefix="../up")
    with pytest.raises(ValueError, match="invalid key"):
        LocalImageStore(tmp_path, prefix="/abs")
    assert LocalImageStore(tmp_path, prefix="a/b/").prefix == "a/b"


# -- local store ------------------------------------------------------------------------------


def test_local_store_paths_and_links(tmp_path: Path) -> None:
    store = LocalImageStore(tmp_path / "out")
    stored = store.put_image(PNG_SHA, "png", PNG)
    path = tmp_path / "out" / "images" / f"{PNG_SHA}.png"
    assert stored.key == f"images/{PNG_SHA}.png"
    assert stored.uri == str(path)
    assert store.link_for(stored.key) == path.as_uri()
    assert store.read_bytes(path.as_uri()) == PNG
    assert store.read_bytes(str(path)) == PNG
    with pytest.raises(ValueError, match="not inside"):
        store.read_bytes(str(tmp_path / "elsewhere.png"))
    assert store.describe() == f"local folder {tmp_path / 'out'}"


def test_local_concurrent_writers_never_overwrite(tmp_path: Path) -> None:
    images = [png_bytes((16, 16), colour) for colour in ("red", "green", "blue", "white")]
    sha = hashlib.sha256(images[0]).hexdigest()
    stores = [LocalImageStore(tmp_path) for _ in range(12)]
    start = threading.Barrier(len(stores))
    results: list[StoredObject] = []

    def write(store: LocalImageStore) -> None:
        start.wait()
        results.append(store.put_image(sha, "png", images[0]))

    threads = [threading.Thread(target=write, args=(s,)) for s in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(r.created for r in results) == [False] * 11 + [True]
    folder = tmp_path / "images"
    # no temporary files left: the image and its metadata file only
    assert sorted(p.name for p in folder.iterdir()) == [f"{sha}.png", f"{sha}.png.meta.json"]
    assert (folder / f"{sha}.png").read_bytes() == images[0]
    assert LocalImageStore(tmp_path).metadata(f"images/{sha}.png") == {"sha256": sha}


def test_local_default_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("GPT_IMAGE_STORAGE", raising=False)
    assert LocalImageStore().root == tmp_path / "gpt-image-output"
    monkeypatch.setenv("GPT_IMAGE_STORAGE", str(tmp_path / "env-out"))
    assert LocalImageStore().root == tmp_path / "env-out"
    monkeypatch.setenv("GPT_IMAGE_STORAGE", "s3://bucket/prefix")
    assert LocalImageStore().root == tmp_path / "gpt-image-output"


# -- S3 store ---------------------------------------------------------------------------------


def test_s3_object_has_content_type_checksum_and_metadata(local_s3: LocalS3Server, s3_bucket: str) -> None:
    store = S3ImageStore(local_s3.client(), s3_bucket, prefix="p")
    stored = store.put_image(PNG_SHA, "png", PNG, {"cache-key": "k1"})
    store.put_json(store.key("cache", "k1.json"), {"sha256": PNG_SHA})

    client = local_s3.client()
    head = client.head_object(Bucket=s3_bucket, Key=stored.key, ChecksumMode="ENABLED")
    assert stored.uri == f"s3://{s3_bucket}/p/images/{PNG_SHA}.png"
    assert head["ContentType"] == "image/png"
    assert head["ContentLength"] == len(PNG)
    assert head["ChecksumSHA256"] == base64.b64encode(bytes.fromhex(PNG_SHA)).decode()
    assert head["Metadata"] == {"sha256": PNG_SHA, "cache-key": "k1"}
    record = client.head_object(Bucket=s3_bucket, Key="p/cache/k1.json")
    assert record["ContentType"] == "application/json"


def test_server_refuses_a_wrong_checksum(local_s3: LocalS3Server, s3_bucket: str) -> None:
    client = local_s3.client()
    wrong = base64.b64encode(hashlib.sha256(b"not the body").digest()).decode()
    with pytest.raises(ClientError) as excinfo:
        client.put_object(Bucket=s3_bucket, Key="k.png", Body=PNG, ChecksumSHA256=wrong)
    assert excinfo.value.response["Error"]["Code"] == "BadDigest"
    assert not S3ImageStore(client, s3_bucket).exists("k.png")


def test_s3_concurrent_writers_never_overwrite(local_s3: LocalS3Server, s3_bucket: str) -> None:
    stores = [S3ImageStore(local_s3.client(), s3_bucket) for _ in range(6)]
    start = threading.Barrier(len(stores))
    results: list[StoredObject] = []

    def write(store: S3ImageStore) -> None:
        start.wait()
        results.append(store.put_image(PNG_SHA, "png", PNG))

    threads = [threading.Thread(target=write, args=(s,)) for s in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(r.created for r in results) == [False] * 5 + [True]


def test_presigned_link_works_then_expires(local_s3: LocalS3Server, s3_bucket: str) -> None:
    store = S3ImageStore(local_s3.client(), s3_bucket, presign_ttl=600)
    stored = store.put_image(PNG_SHA, "png", PNG)

    assert "X-Amz-Expires=600" in store.link_for(stored.key)
    link = store.link_for(stored.key, ttl=2)
    assert "X-Amz-Algorithm=AWS4-HMAC-SHA256" in link and "X-Amz-Expires=2" in link
    response = httpx.get(link)
    assert response.status_code == 200
    assert response.content == PNG
    assert response.headers["content-type"] == "image/png"
    assert httpx.get(local_s3.endpoint_url + f"/{s3_bucket}/{stored.key}").status_code == 403
    # A link of the same 2 s signed 10 s ago (botocore's signing clock set back; nothing else
    # changes) is refused by the server as expired: its expiry, without sleeping until it.
    ten_seconds_ago = datetime.now(UTC).replace(tzinfo=None) - timedelta(seconds=10)
    with pytest.MonkeyPatch.context() as clock:
        clock.setattr(botocore.auth, "get_current_datetime", lambda *args, **kwargs: ten_seconds_ago)
        old = store.link_for(stored.key, ttl=2)
    signed_at = datetime.strptime(parse_qs(urlparse(old).query)["X-Amz-Date"][0], "%Y%m%dT%H%M%SZ")
    assert signed_at.replace(tzinfo=UTC).timestamp() + 2 < time.time()  # its 2 s are over
    expired = httpx.get(old)
    assert expired.status_code == 403
    assert "expired" in expired.text


def test_link_ttl_limits(local_s3: LocalS3Server, s3_bucket: str) -> None:
    store = S3ImageStore(local_s3.client(), s3_bucket)
    assert "X-Amz-Expires=3600" in store.link_for("k")
    assert "X-Amz-Expires=604800" in store.link_for("k", ttl=7 * 24 * 3600)
    for ttl in (0, -5, 7 * 24 * 3600 + 1):
        with pytest.raises(ValueError, match="7 days"):
            store.link_for("k", ttl=ttl)
    with pytest.raises(ValueError, match="7 days"):
        S3ImageStore(local_s3.client(), s3_bucket, presign_ttl=8 * 24 * 3600)


def test_sigv2_client_refused_for_presigning(local_s3: LocalS3Server, s3_bucket: str) -> None:
    client = boto3.session.Session().client(
        "s3",
        endpoint_url=local_s3.endpoint_url,
        aws_access_key_id=local_s3.access_key,
        aws_secret_access_key=local_s3.secret_key,
        region_name="us-east-1",
    )
    with pytest.raises(ValueError, match="s3v4"):
        S3ImageStore(client, s3_bucket).link_for("k")


def test_public_base_url_links(local_s3: LocalS3Server, s3_bucket: str) -> None:
    client = local_s3.client()
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": "*",
                "Action": ["s3:GetObject"],
                "Resource": [f"arn:aws:s3:::{s3_bucket}/pub/*"],
            }
        ],
    }
    client.put_bucket_policy(Bucket=s3_bucket, Policy=json.dumps(policy))
    base = f"{local_s3.endpoint_url}/{s3_bucket}"
    store = S3ImageStore(client, s3_bucket, prefix="pub", public_base_url=base)
    stored = store.put_image(PNG_SHA, "png", PNG)

    link = store.link_for(stored.key)
    assert link == f"{base}/pub/images/{PNG_SHA}.png"
    assert httpx.get(link).content == PNG
    assert store.link_for(stored.key, ttl=5) == link
    assert f"public links under {base}" in store.describe()


def test_from_uri_uses_the_standard_chain(aws_env: dict[str, str], s3_bucket: str) -> None:
    store = S3ImageStore.from_uri(f"s3://{s3_bucket}/runs/today/", presign_ttl=120)

    assert (store.bucket, store.prefix) == (s3_bucket, "runs/today")
    assert store.client.meta.endpoint_url == aws_env["AWS_ENDPOINT_URL"]
    stored = store.put_image(PNG_SHA, "png", PNG)
    assert stored.uri == f"s3://{s3_bucket}/runs/today/images/{PNG_SHA}.png"
    link = store.link_for(stored.key)
    assert link.startswith(f"{aws_env['AWS_ENDPOINT_URL']}/{s3_bucket}/runs/today/")  # path style
    assert httpx.get(link).content == PNG
    with pytest.raises(ValueError, match="s3://"):
        S3ImageStore.from_uri("gs://bucket/x")


def test_from_uri_honours_service_specific_endpoint(
    aws_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, s3_bucket: str
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", aws_env["AWS_ENDPOINT_URL"])
    store = S3ImageStore.from_uri(f"s3://{s3_bucket}")
    assert store.put_image(PNG_SHA, "png", PNG).created


@pytest.mark.parametrize("kind", ["aws", "minio"])
def test_from_s3_bucket_block(local_s3: LocalS3Server, s3_bucket: str, kind: str) -> None:
    params = AwsClientParameters(endpoint_url=local_s3.endpoint_url)
    credentials: AwsCredentials | MinIOCredentials
    if kind == "aws":
        credentials = AwsCredentials(
            aws_access_key_id=local_s3.access_key,
            aws_secret_access_key=SecretStr(local_s3.secret_key),
            region_name="us-east-1",
            aws_client_parameters=params,
        )
    else:
        credentials = MinIOCredentials(
            minio_root_user=local_s3.access_key,
            minio_root_password=SecretStr(local_s3.secret_key),
            region_name="us-east-1",
            aws_client_parameters=params,
        )
    block = S3Bucket(bucket_name=s3_bucket, bucket_folder="from-block/", credentials=credentials)

    store = S3ImageStore.from_s3_bucket_block(block)

    assert store.prefix == "from-block"
    stored = store.put_image(PNG_SHA, "png", PNG)
    assert stored.key == f"from-block/images/{PNG_SHA}.png"
    link = store.link_for(stored.key, ttl=60)
    assert "X-Amz-Signature=" in link and link.startswith(f"{local_s3.endpoint_url}/{s3_bucket}/")
    assert httpx.get(link).content == PNG
    assert local_s3.secret_key not in repr(store) + store.describe()
    assert isinstance(resolve_store(block), S3ImageStore)


# -- resolve_store ----------------------------------------------------------------------------


def test_resolve_store(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, aws_env: dict[str, str]) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("GPT_IMAGE_STORAGE", raising=False)

    default = resolve_store()
    assert isinstance(default, LocalImageStore) and default.root == tmp_path / "gpt-image-output"

    monkeypatch.setenv("GPT_IMAGE_STORAGE", str(tmp_path / "env-dir"))
    from_env = resolve_store(None)
    assert isinstance(from_env, LocalImageStore) and from_env.root == tmp_path / "env-dir"

    monkeypatch.setenv("GPT_IMAGE_STORAGE", "s3://env-bucket/env/prefix")
    s3_env = resolve_store()
    assert isinstance(s3_env, S3ImageStore)
    assert (s3_env.bucket, s3_env.prefix) == ("env-bucket", "env/prefix")

    s3 = resolve_store("s3://bkt/pre")
    assert isinstance(s3, S3ImageStore) and (s3.bucket, s3.prefix) == ("bkt", "pre")
    local_str = resolve_store("relative/dir")
    assert isinstance(local_str, LocalImageStore) and local_str.root == tmp_path / "relative/dir"
    local_path = resolve_store(tmp_path / "p")
    assert isinstance(local_path, LocalImageStore) and local_path.root == tmp_path / "p"
    file_uri = resolve_store((tmp_path / "f").as_uri())
    assert isinstance(file_uri, LocalImageStore) and file_uri.root == tmp_path / "f"
    assert resolve_store(local_path) is local_path

    with pytest.raises(ValueError, match=r"unsupported storage scheme gs://.*s3://bucket/prefix"):
        resolve_store("gs://bucket/prefix")
    with pytest.raises(ValueError, match="cannot store images in a int"):
        resolve_store(42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="empty"):
        resolve_store("  ")


# -- the local S3 server itself -----------------------------------------------------------------


def test_local_s3_restarts_on_same_ports_with_its_data() -> None:
    server = LocalS3Server()
    with server:
        endpoint, ports, pid = server.endpoint_url, dict(server.ports), server.pid
        assert set(ports) >= {"master.port", "volume.port", "filer.port", "s3.port", "admin.port"}
        assert len(set(ports.values())) == len(ports)
        assert 8333 not in ports.values() and 9333 not in ports.values()
        assert server.env() == {
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_ACCESS_KEY_ID": server.access_key,
            "AWS_SECRET_ACCESS_KEY": server.secret_key,
            "AWS_DEFAULT_REGION": "us-east-1",
        }
        store = S3ImageStore(server.client(), server.create_bucket("keep"))
        store.put_image(PNG_SHA, "png", PNG)

        server.stop()
        assert server.pid is None
        with pytest.raises(EndpointConnectionError):
            store.client.list_buckets()

        server.start()
        assert (server.endpoint_url, server.ports) == (endpoint, ports)
        assert server.pid not in (None, pid)
        assert store.read_bytes(store.image_key(PNG_SHA, "png")) == PNG
        assert (server.data_dir / "weed.log").is_file()
    assert server.pid is None
    assert not server.data_dir.exists()  # the temporary directory it made is removed


def test_local_s3_pause_and_resume(local_s3: LocalS3Server, s3_bucket: str) -> None:
    impatient = local_s3.client(Config(read_timeout=0.5, retries={"max_attempts": 1}))
    local_s3.pause()
    try:
        with pytest.raises(ReadTimeoutError):
            impatient.head_bucket(Bucket=s3_bucket)
    finally:
        local_s3.resume()
    impatient.head_bucket(Bucket=s3_bucket)


# -- secrets ----------------------------------------------------------------------------------


def test_no_secret_in_repr_describe_metadata_or_errors(
    local_s3: LocalS3Server, s3_bucket: str, aws_env: dict[str, str]
) -> None:
    secrets = (local_s3.access_key, local_s3.secret_key)
    store = S3ImageStore.from_uri(f"s3://{s3_bucket}/x")
    stored = store.put_image(PNG_SHA, "png", PNG)
    head = local_s3.client().head_object(Bucket=s3_bucket, Key=stored.key)
    texts = [repr(local_s3), repr(store), store.describe(), repr(stored), json.dumps(head["Metadata"])]
    texts.append(local_s3.log_tail(1000))
    with pytest.raises(ValueError) as excinfo:
        store.read_bytes("s3://other-bucket/k")
    texts.append(str(excinfo.value))
    with pytest.raises(ValueError) as excinfo:
        resolve_store("gs://user:pass@bucket")
    texts.append(str(excinfo.value))
    for text in texts:
        for secret in secrets:
            assert secret not in text
    assert "pass" not in texts[-1]
    assert (
        store.describe() == f"S3 s3://{s3_bucket}/x at {local_s3.endpoint_url} (presigned links valid 3600 s)"
    )


def test_run_concurrently_overlaps_waits_for_all_and_raises_the_first_error() -> None:
    import threading

    from prefect_gpt_image.storage.base import run_concurrently

    together = threading.Barrier(4, timeout=10)  # passes only if all four run at the same time

    def write(i: int) -> int:
        together.wait()
        return i

    assert run_concurrently(*(lambda i=i: write(i) for i in range(4))) == [0, 1, 2, 3]
    failed, returned = threading.Event(), threading.Event()
    seen_returned: list[bool] = []

    def slow_ok() -> None:
        # still in flight when the first error comes; then it looks whether run_concurrently
        # has returned meanwhile (it must not have: it waits for every write)
        assert failed.wait(10)
        seen_returned.append(returned.wait(0.2))

    def fail(message: str) -> None:
        failed.set()
        raise OSError(message)

    try:
        with pytest.raises(OSError, match="first"):
            run_concurrently(lambda: fail("first"), slow_ok, lambda: fail("second"))
    finally:
        returned.set()
    assert seen_returned == [False]  # the error waited for the write still in flight
    assert run_concurrently() == []
