"""Retry condition, cache keys, budgets, spool and refs: the policies, without a Prefect server."""

from __future__ import annotations

from pathlib import Path

import pytest
from prefect.states import Failed

from prefect_gpt_image.api import (
    BadRequestError,
    ConnectionFailedError,
    EditRequest,
    GenerateRequest,
    ModerationError,
    OutcomeUnknownError,
    RateLimitError,
    ResponseTimeoutError,
)
from prefect_gpt_image.blocks import GptImageCredentials, GptImageSettings
from prefect_gpt_image.calls import budget, spool
from prefect_gpt_image.calls.cache import cache_key
from prefect_gpt_image.calls.retry import allow_outcome_unknown_retry
from prefect_gpt_image.tasks import (
    BudgetExceededError,
    ImageRef,
    ImagesLostError,
    ImagesSpooledError,
    ImageStorageError,
    InputImageError,
    retry_condition,
)
from tests.support.images import mask_bytes, png_bytes


def _retried(error: BaseException) -> bool:
    return retry_condition(None, None, Failed(data=error))


def test_retry_condition_retries_only_what_cannot_pay_twice(tmp_path: Path) -> None:
    assert _retried(ImageStorageError("store down before the call"))
    assert _retried(ImagesSpooledError("spooled", spool_path=tmp_path, count=1))
    assert _retried(ConnectionFailedError("no connection"))
    assert _retried(RateLimitError("slow down", status=429))
    assert not _retried(OutcomeUnknownError("sent, no answer"))
    assert not _retried(ResponseTimeoutError("read timeout"))
    assert not _retried(BadRequestError("bad size", status=400))
    assert not _retried(ModerationError("blocked", status=400, code="moderation_blocked"))
    assert not _retried(BudgetExceededError("cap", cap="max_images_per_run"))
    assert not _retried(InputImageError("no such file"))
    assert not _retried(ImagesLostError("lost"))
    assert not _retried(RuntimeError("a bug"))


def test_outcome_unknown_is_retried_only_when_the_user_opts_in() -> None:
    error = OutcomeUnknownError("sent, no answer")
    allow_outcome_unknown_retry(error)
    assert _retried(error)
    bad = BadRequestError("bad", status=400)
    allow_outcome_unknown_retry(bad)  # opting in never makes a 400 retryable
    assert not _retried(bad)


def test_retry_condition_is_a_plain_function() -> None:
    """Prefect 3.8.8 ignores callable objects, bound methods and partials."""
    import inspect

    from prefect_gpt_image.tasks import generate_image

    assert inspect.isfunction(generate_image.retry_condition_fn)
    assert generate_image.retries >= 1


def test_cache_key_covers_the_request_and_variant_but_not_the_transport() -> None:
    """The key is a function of the request and the variant alone (no credentials or base URL
    are arguments of ``cache_key``); streaming is transport, not an input."""
    a = GenerateRequest.build(prompt="a fox", size="1024x1024", quality="low")
    assert cache_key(a) == cache_key(GenerateRequest.build(prompt="a fox", size="1024x1024", quality="low"))
    assert cache_key(a) != cache_key(a, variant=1)
    assert cache_key(a) != cache_key(GenerateRequest.build(prompt="a fox", size="1024x1024", quality="high"))
    assert cache_key(a) != cache_key(GenerateRequest.build(prompt="a cat", size="1024x1024", quality="low"))
    assert cache_key(a) != cache_key(
        GenerateRequest.build(prompt="a fox", size="1024x1024", quality="low", model="m2")
    )
    streamed = GenerateRequest.build(
        prompt="a fox", size="1024x1024", quality="low", stream=True, partial_images=2
    )
    assert cache_key(a) == cache_key(streamed)


def test_cache_key_hashes_path_inputs_by_their_bytes(tmp_path: Path) -> None:
    red, blue = png_bytes(colour="red"), png_bytes(colour="blue")
    first = tmp_path / "in.png"
    first.write_bytes(red)
    key_red = cache_key(EditRequest.build_with_files(first, prompt="edit"))
    first.write_bytes(blue)  # same path, new content
    key_blue = cache_key(EditRequest.build_with_files(first, prompt="edit"))
    assert key_red != key_blue
    other = tmp_path / "renamed.png"
    other.write_bytes(blue)  # other path, same content
    assert cache_key(EditRequest.build_with_files(other, prompt="edit")) == key_blue
    masked = EditRequest.build_with_files(other, mask_bytes((64, 64), (0, 0, 8, 8)), prompt="edit")
    assert cache_key(masked) != key_blue


def test_budget_reserves_names_the_cap_and_gives_back() -> None:
    run = "run-budget-test"
    first = budget.reserve(run, images=2, cost=1.0, max_images=3, max_cost=None)
    with pytest.raises(BudgetExceededError, match="max_images_per_run=3") as caught:
        budget.reserve(run, images=2, cost=1.0, max_images=3, max_cost=None)
    assert caught.value.cap == "max_images_per_run"
    first.cancel()
    first.cancel()  # idempotent
    assert budget.spent(run) == (0, 0.0)
    budget.reserve(run, images=1, cost=0.5, max_images=None, max_cost=1.0)
    with pytest.raises(BudgetExceededError, match="max_cost_per_run") as caught:
        budget.reserve(run, images=2, cost=1.0, max_images=None, max_cost=1.0)
    assert caught.value.cap == "max_cost_per_run"
    assert budget.spent(run) == (1, 0.5)


def test_spool_round_trip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GPT_IMAGE_SPOOL", str(tmp_path / "spool"))
    data = png_bytes()
    path = spool.save("k" * 64, [(data, "a" * 64, "png", {"m": 1}, {"r": 2})], {"prompt": "p"})
    assert path == tmp_path / "spool" / ("k" * 64)
    entry = spool.load("k" * 64)
    assert entry is not None and entry.request == {"prompt": "p"}
    assert entry.images[0].path.read_bytes() == data and entry.images[0].manifest == {"m": 1}
    spool.clear("k" * 64)
    assert spool.load("k" * 64) is None


def test_refs_compare_without_their_links() -> None:
    ref = ImageRef(
        uri="s3://b/k.png",
        sha256="a" * 64,
        width=1,
        height=1,
        format="png",
        size_bytes=1,
        prompt="p",
        link="x",
    )
    assert ref == ref.model_copy(update={"link": "y"})
    assert ref != ref.model_copy(update={"cost": 1.0})
    assert len({ref, ref.model_copy(update={"link": None})}) == 1
    assert ref.without_link().link is None


def test_settings_build_the_client_config() -> None:
    settings = GptImageSettings(read_timeout_seconds=42, max_attempts=2, retry_outcome_unknown=True)
    config = GptImageCredentials(api_key="sk-x", base_url="http://127.0.0.1:9/v1/").client_config(settings)
    assert config.base_url == "http://127.0.0.1:9/v1"
    assert (
        config.timeouts.read == 42 and config.retry.max_attempts == 2 and config.retry.retry_outcome_unknown
    )
    assert "sk-x" not in repr(config)
    with pytest.raises(ValueError, match="multiples of 16"):
        GptImageSettings(size="1000x1000")
    with pytest.raises(ValueError, match="output_compression"):
        GptImageSettings(output_compression=50)
    assert settings.call_deadline_seconds() > 2 * 42


def test_the_client_pool_has_room_for_every_slot_and_a_download_each() -> None:
    """A call holds its connection until the API answers (up to minutes); a result download
    that queued behind such calls for a connection would wait as long."""
    credentials = GptImageCredentials(api_key="sk-x", base_url="http://127.0.0.1:9/v1")
    assert credentials.client_config(GptImageSettings(concurrency_limit=100)).max_connections == 200
    assert credentials.client_config(GptImageSettings(concurrency_limit=4)).max_connections == 64
