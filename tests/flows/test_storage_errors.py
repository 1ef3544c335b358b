"""A storage that cannot work fails a call or a batch at once, before anything is paid, with the
``storage`` parameter (or what it was resolved from), the location and what to set: no AWS
credentials, an unknown access key, a wrong secret, a bucket that does not exist, an invalid bucket
name, a malformed URI, a folder that cannot be written, a block's wrong secret and a bad
``$GPT_IMAGE_STORAGE``. Such mistakes are not retried (one check, counted by a botocore event hook
on every S3 client the run makes), and the sandbox's ledger shows no request. A refused connection
is transient: it is retried, and the call then pays once."""

from __future__ import annotations

import shutil
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import botocore.session
import pytest
from prefect import flow
from prefect.client.schemas.objects import State
from prefect_aws import S3Bucket

from prefect_gpt_image.blocks import GptImageSettings
from prefect_gpt_image.calls import ImagesSpooledError, ImageStorageError
from prefect_gpt_image.flows import batch_generate
from prefect_gpt_image.local_s3 import LocalS3Server
from prefect_gpt_image.tasks import ImageRef, generate_image
from tests.support.prefect import flow_run_logs
from tests.support.s3 import s3_bucket_block
from tests.support.sandbox import wait_until

from .conftest import KEY, run


@dataclass
class S3Traffic:
    """What the S3 clients made during a test did: each operation asked for (before its
    parameters are even read), each HTTP request sent, each operation that failed."""

    operations: list[str] = field(default_factory=list)
    sent: list[str] = field(default_factory=list)
    failed: threading.Event = field(default_factory=threading.Event)


@pytest.fixture
def s3_traffic(monkeypatch: pytest.MonkeyPatch) -> S3Traffic:
    """Count the S3 traffic of every botocore client created from now on (the store's own)."""
    traffic = S3Traffic()
    create_client = botocore.session.Session.create_client

    def counting(self: Any, *args: Any, **kwargs: Any) -> Any:
        client = create_client(self, *args, **kwargs)
        if client.meta.service_model.service_name == "s3":
            events = client.meta.events
            events.register(
                "provide-client-params.s3", lambda model, **_: traffic.operations.append(model.name)
            )
            events.register("before-send.s3", lambda request, **_: traffic.sent.append(request.url))
            events.register("after-call-error.s3.ListObjectsV2", lambda **_: traffic.failed.set())
        return client

    monkeypatch.setattr(botocore.session.Session, "create_client", counting)
    return traffic


@flow
def one_image(storage: Any, refresh: bool = False) -> list[ImageRef]:
    """The image task in a sync flow of its own, as a script would call it."""
    settings = GptImageSettings(quality="low")
    return generate_image("a kite over the dunes", storage=storage, settings=settings, refresh_cache=refresh)


def single(storage: Any, refresh: bool = False) -> State[Any]:
    return run(one_image(storage, refresh, return_state=True))


def batch(storage: Any) -> State[Any]:
    return run(
        batch_generate(
            prompts=["a red kite", "a blue kite", "a green kite"], storage=storage, return_state=True
        )
    )


@dataclass
class Mistake:
    """A storage that cannot work: the ``storage`` argument (for the batch and the task, which
    take a block differently), the words its error must hold, and the S3 traffic it may cost."""

    batch_storage: Any
    task_storage: Any
    words: list[str]
    operations: list[str]
    sent: int
    secrets: list[str] = field(default_factory=list)


def _no_credentials(env: Any, request: pytest.FixtureRequest, **_: Any) -> Mistake:
    _, _, store = request.getfixturevalue("no_aws_credentials")
    words = [
        f"storage={store!r}",
        "no AWS credentials on this worker",
        "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
    ]
    return Mistake(store, store, words, ["ListObjectsV2"], sent=0)  # signing fails: nothing sent


def _unknown_key(env: Any, monkeypatch: pytest.MonkeyPatch, **_: Any) -> Mistake:
    _, _, store = env
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKUNKNOWN0000KEY")
    words = [f"storage={store!r}", "does not know this access key id", "AWS_ENDPOINT_URL"]
    return Mistake(store, store, words, ["ListObjectsV2"], sent=1, secrets=["AKUNKNOWN0000KEY"])


def _wrong_secret(env: Any, monkeypatch: pytest.MonkeyPatch, **_: Any) -> Mistake:
    _, _, store = env
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret-Zq81")
    words = [
        f"storage={store!r}",
        "secret access key does not match",
        "Set AWS_SECRET_ACCESS_KEY to the secret",
    ]
    return Mistake(store, store, words, ["ListObjectsV2"], sent=1, secrets=["wrong-secret-Zq81"])


def _missing_bucket(env: Any, **_: Any) -> Mistake:
    bucket = f"no-such-bucket-{uuid.uuid4().hex[:10]}"
    store = f"s3://{bucket}/images"
    words = [f"storage={store!r}", "the bucket does not exist", f"Create bucket {bucket!r}"]
    return Mistake(store, store, words, ["ListObjectsV2"], sent=1)


def _invalid_bucket_name(env: Any, **_: Any) -> Mistake:
    store = "s3://Not_A_Bucket!/images"
    words = [f"storage={store!r}", "not a valid S3 bucket name", "3-63 lower-case letters"]
    return Mistake(store, store, words, ["ListObjectsV2"], sent=0)  # botocore refuses the name


def _malformed_uri(env: Any, **_: Any) -> Mistake:
    store = "s3:///images"
    words = [
        f"storage={store!r}",
        "expected an s3://bucket/prefix URI",
        "Set it to an s3://bucket/prefix URI",
    ]
    return Mistake(store, store, words, [], sent=0)


def _unwritable_folder(env: Any, tmp_path: Path, **_: Any) -> Mistake:
    (tmp_path / "a-file").write_text("not a folder")
    store = str(tmp_path / "a-file" / "images")
    words = [f"storage={store!r}", "the folder cannot be written", "Set storage to a folder this worker can"]
    return Mistake(store, store, words, [], sent=0)


def _block_with_a_wrong_secret(env: Any, local_s3: LocalS3Server, s3_bucket: str, **_: Any) -> Mistake:
    block = s3_bucket_block(local_s3, s3_bucket)
    block.credentials.aws_secret_access_key = "block-secret-Wr0ng"  # type: ignore[assignment]
    name = f"wrong-secret-{uuid.uuid4().hex[:8]}"
    block.save(name, overwrite=True)
    words = [
        f"storage (S3Bucket block {name!r})",
        f"s3://{s3_bucket}/gpt",
        "Set aws_secret_access_key to the secret of aws_access_key_id",
        f"in the credentials of S3Bucket block {name!r}",
    ]
    return Mistake(
        f"s3-bucket/{name}",
        S3Bucket.load(name),
        words,
        ["ListObjectsV2"],
        sent=1,
        secrets=["block-secret-Wr0ng"],
    )


def _bad_environment_variable(env: Any, monkeypatch: pytest.MonkeyPatch, **_: Any) -> Mistake:
    store = f"s3://no-such-bucket-{uuid.uuid4().hex[:10]}/env"
    monkeypatch.setenv("GPT_IMAGE_STORAGE", store)
    words = [f"storage (unset, so $GPT_IMAGE_STORAGE={store!r})", "the bucket does not exist"]
    return Mistake(None, None, words, ["ListObjectsV2"], sent=1)


MISTAKES: dict[str, Callable[..., Mistake]] = {
    "no-credentials": _no_credentials,
    "unknown-access-key": _unknown_key,
    "wrong-secret": _wrong_secret,
    "missing-bucket": _missing_bucket,
    "invalid-bucket-name": _invalid_bucket_name,
    "malformed-uri": _malformed_uri,
    "unwritable-folder": _unwritable_folder,
    "block-with-a-wrong-secret": _block_with_a_wrong_secret,
    "bad-GPT_IMAGE_STORAGE": _bad_environment_variable,
}


@pytest.mark.parametrize("how", ["generate_image", "batch_generate"])
@pytest.mark.parametrize("mistake", list(MISTAKES))
def test_a_storage_that_cannot_work_fails_at_once_saying_what_to_set_and_costs_nothing(
    env: Any,
    local_s3: LocalS3Server,
    s3_bucket: str,
    s3_traffic: S3Traffic,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    mistake: str,
    how: str,
) -> None:
    sandbox, _, _ = env
    case = MISTAKES[mistake](
        env=env,
        request=request,
        monkeypatch=monkeypatch,
        tmp_path=tmp_path,
        local_s3=local_s3,
        s3_bucket=s3_bucket,
    )
    state = single(case.task_storage) if how == "generate_image" else batch(case.batch_storage)

    assert state.is_failed(), state.message
    error = state.result(raise_on_failure=False)
    message = str(error)
    for words in case.words:
        assert words in message, (words, message)
    assert message in str(state.message)  # the run's own message says it, not only its result
    for secret in [KEY, local_s3.secret_key, *case.secrets]:
        assert secret not in message and secret not in str(state.message)
    assert sandbox.ledger.requests == []  # no API request: nothing paid
    # Fails fast: one check of the store, never retried (each retry would check again), and no
    # batch row looked anything up.
    assert s3_traffic.operations == case.operations, s3_traffic.operations
    assert len(s3_traffic.sent) == case.sent, s3_traffic.sent
    if case.operations:
        assert isinstance(error, ImageStorageError) and error.configuration


def test_a_refresh_that_reads_nothing_first_still_checks_the_store_before_it_pays(
    env: Any, s3_traffic: S3Traffic
) -> None:
    """``refresh_cache=True`` skips the cache record, so no read would find the missing bucket
    before the paid call: the check does, and nothing is paid (or spooled)."""
    sandbox, _, _ = env
    storage = f"s3://no-such-bucket-{uuid.uuid4().hex[:10]}/fresh"
    state = single(storage, refresh=True)
    error = state.result(raise_on_failure=False)
    assert isinstance(error, ImageStorageError) and not isinstance(error, ImagesSpooledError), error
    assert "the bucket does not exist" in str(error) and "nothing was sent" in str(error)
    assert sandbox.ledger.requests == []
    assert s3_traffic.operations == ["ListObjectsV2"]


def test_a_refused_connection_is_retried_and_the_call_then_pays_once(
    env: Any, s3_traffic: S3Traffic, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The S3 server is down at the first try of the run: the check fails (the endpoint refuses
    the connection), Prefect retries the task, the server is back by then, the image is paid once."""
    sandbox, _, _ = env
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # botocore's own retries off: the task's are tested
    with LocalS3Server() as s3:
        bucket = s3.create_bucket("comes-back")
        s3.stop()  # same ports and data when it starts again
        for name, value in s3.env().items():
            monkeypatch.setenv(name, value)

        def bring_it_back() -> None:
            if s3_traffic.failed.wait(120):
                s3.start()

        restarter = threading.Thread(target=bring_it_back, daemon=True)
        restarter.start()
        state = single(f"s3://{bucket}/back")
        restarter.join(120)

        assert state.is_completed(), state.message
        refs = state.result()
        assert len(refs) == 1 and refs[0].uri.startswith(f"s3://{bucket}/back/images/")
        # the first check was refused, a retry checked again and went on to the one paid call
        assert s3_traffic.operations.count("ListObjectsV2") >= 2, s3_traffic.operations
        assert len(sandbox.ledger.requests) == 1 and len(sandbox.ledger.entries) == 1


def test_a_folder_gone_after_the_paid_call_spools_the_images_without_a_retry(
    env: Any, tmp_path: Path
) -> None:
    """The check passed, the API answered (billed), and the folder is replaced by a file while the
    result downloads: the paid image goes to the spool, the error says what to set and is not
    retried, and once the folder can be written again a rerun stores the image from the spool,
    paying nothing more."""
    sandbox, _, _ = env
    folder = tmp_path / "out"
    sandbox.hold.hold(1)  # the result download waits: the call is billed by then
    outcome: list[State[Any]] = []
    caller = threading.Thread(target=lambda: outcome.append(single(str(folder))))
    caller.start()
    wait_until(lambda: len(sandbox.hold.held) == 1, "the paid answer's download held")
    shutil.rmtree(folder)  # the check made it; now nothing can be written under it
    folder.write_text("a file where the folder was")
    sandbox.hold.release()
    caller.join(120)

    (state,) = outcome
    error = state.result(raise_on_failure=False)
    assert isinstance(error, ImagesSpooledError) and error.configuration, error
    message = str(error)
    for words in (f"storage={str(folder)!r}", "the folder cannot be written", "Set storage to a folder"):
        assert words in message, (words, message)
    assert f"The images are spooled at {error.spool_path}" in message and error.spool_path.is_dir()
    logs = "\n".join(flow_run_logs(state.state_details.flow_run_id))
    assert "Retry 1/" not in logs, logs  # not retried: the same mistake would fail again
    assert len(sandbox.ledger.entries) == 1

    folder.unlink()
    again = single(str(folder))
    assert again.is_completed(), again.message
    (ref,) = again.result()
    assert ref.sha256 == sandbox.ledger.entries[0]["images"][0]["sha256"]
    assert len(sandbox.ledger.requests) == 1 and not error.spool_path.exists()  # stored from the spool


@pytest.mark.parametrize(
    ("code", "status", "cause", "retried"),
    [
        ("AccessDenied", 403, "access denied (ClientError AccessDenied)", False),
        ("403", 403, "access denied (ClientError 403)", False),  # a HEAD's error: no body, no code
        ("InvalidBucketName", 400, "not a valid S3 bucket name", False),
        ("PermanentRedirect", 301, "in another region", False),
        ("AuthorizationHeaderMalformed", 400, "in another region", False),
        ("InternalError", 500, "the S3 server failed (ClientError InternalError)", True),
        ("SlowDown", 503, "the S3 server failed", True),
        ("SomethingNew", 400, "S3 error SomethingNew", True),
    ],
)
def test_botocore_codes_the_local_server_cannot_answer_are_read_as_the_docs_say(
    code: str, status: int, cause: str, retried: bool
) -> None:
    """The codes SeaweedFS does not produce here (no policies, one region, no overload), read from
    the error botocore raises for them: the cause, and whether the call is retried."""
    from botocore.exceptions import ClientError

    from prefect_gpt_image.calls import is_safe_to_retry
    from prefect_gpt_image.calls.store_check import storage_error
    from prefect_gpt_image.storage import S3ImageStore

    answer = {
        "Error": {"Code": code, "Message": "AKIDSECRET0 was refused"},
        "ResponseMetadata": {"HTTPStatusCode": status},
    }
    store = S3ImageStore.from_uri("s3://my-bucket/images")
    error = storage_error(store, ClientError(answer, "ListObjectsV2"), "checking", "nothing was sent")  # type: ignore[arg-type]
    assert cause in str(error) and "storage: checking S3 s3://my-bucket/images" in str(error), str(error)
    assert "AKIDSECRET0" not in str(error)  # boto3's message is never repeated
    assert is_safe_to_retry(error) is retried and error.configuration is not retried
