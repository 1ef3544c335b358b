"""Errors that say what to do: a misspelled option names the closest valid one, an invalid size
the nearest valid sizes; each is raised before any call is paid, from a script, a sync flow and
an async flow alike."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from prefect import flow
from pydantic import ValidationError

from prefect_gpt_image.api import GenerateRequest, RequestValidationError
from prefect_gpt_image.api.models import parse_size
from prefect_gpt_image.api.suggest import UnknownOptionError
from prefect_gpt_image.blocks import GptImageCredentials, GptImageSettings, GptImageStorage
from prefect_gpt_image.flows import GenerateStep, ImageOptions, batch_pipeline, image_pipeline
from prefect_gpt_image.tasks import ImageRef, generate_image
from tests.support.sandbox import sandbox_requests

pytestmark = pytest.mark.usefixtures("prefect_env")

TYPO = "got an unexpected keyword argument 'qualty': did you mean 'quality'?"


@flow
def sync_flow(credentials: GptImageCredentials, settings: GptImageSettings, storage: GptImageStorage) -> Any:
    return generate_image("a kite", qualty="low", credentials=credentials, settings=settings, storage=storage)


@flow
async def async_flow(
    credentials: GptImageCredentials, settings: GptImageSettings, storage: GptImageStorage
) -> Any:
    return await generate_image(
        "a kite", qualty="low", credentials=credentials, settings=settings, storage=storage
    )


@flow
def submitting_flow(
    credentials: GptImageCredentials, settings: GptImageSettings, storage: GptImageStorage, typo: bool
) -> list[ImageRef]:
    blocks = {"credentials": credentials, "settings": settings, "storage": storage}
    if typo:
        generate_image.submit("a kite", szie="1024x1024", **blocks)
    futures = generate_image.map(["a kite", "a boat"], quality="low", **blocks)
    submitted = generate_image.submit("a kite", variant=1, **blocks)
    return [ref for future in [*futures, submitted] for ref in future.result()]


def test_a_misspelled_task_option_names_the_closest_one_everywhere(
    sandbox: Any, credentials: GptImageCredentials, settings: GptImageSettings, local_storage: GptImageStorage
) -> None:
    blocks = {"credentials": credentials, "settings": settings, "storage": local_storage}
    calls = {
        "script": lambda: generate_image("a kite", qualty="low", **blocks),
        "sync flow": lambda: sync_flow(**blocks),
        "async flow": lambda: asyncio.run(async_flow(**blocks)),
        ".map": lambda: generate_image.map(["a kite"], qualty="low", **blocks),
    }
    for where, call in calls.items():
        with pytest.raises(UnknownOptionError) as info:
            call()
        message = str(info.value)
        assert message == f"generate_image() {TYPO}", (where, message)
        assert isinstance(info.value, TypeError)
    assert sandbox_requests(sandbox) == [], "a misspelled option reached the API"


def test_submit_and_map_still_work_and_a_typo_in_submit_is_named(
    sandbox: Any, credentials: GptImageCredentials, settings: GptImageSettings, local_storage: GptImageStorage
) -> None:
    blocks = {"credentials": credentials, "settings": settings, "storage": local_storage}
    with pytest.raises(UnknownOptionError, match="'szie': did you mean 'size'"):
        submitting_flow(**blocks, typo=True)
    assert sandbox_requests(sandbox) == []
    refs = submitting_flow(**blocks, typo=False)
    assert len(refs) == 3 and len(sandbox_requests(sandbox)) == 3


def test_a_misspelled_option_or_step_field_in_a_flow_parameter(
    sandbox: Any, local_storage: GptImageStorage, tmp_path: Path
) -> None:
    with pytest.raises(ValidationError, match="did you mean 'quality'"):
        ImageOptions.model_validate({"qualty": "low"})
    with pytest.raises(ValidationError, match="Extra inputs are not permitted; did you mean 'prompt'"):
        GenerateStep.model_validate({"promt": "a kite"})
    blocks: dict[str, Any] = {"credentials_block": None, "settings_block": None}
    state = image_pipeline(
        "a kite", options={"qualty": "low"}, storage=str(local_storage.location), return_state=True, **blocks
    )
    expected = "options.qualty: Extra inputs are not permitted; did you mean 'quality'?"
    assert state.is_failed() and expected in str(state.message), state.message
    manifest = tmp_path / "rows.csv"
    manifest.write_text("id,product\nk,a kite\n")
    state = batch_pipeline(
        manifest=str(manifest),
        steps=[{"kind": "generate", "promt": "{product}"}],
        storage=str(local_storage.location),
        return_state=True,
        **blocks,
    )
    assert state.is_failed() and "did you mean 'prompt'" in str(state.message), state.message
    assert sandbox_requests(sandbox) == []
    with pytest.raises(UnknownOptionError, match=r"batch_pipeline\(\) got an .* 'mainfest': did you"):
        batch_pipeline(mainfest=str(manifest), steps=[])  # type: ignore[call-arg]


@pytest.mark.parametrize(
    "size,nearest",
    [
        ("1000x1000", ["1008x1008", "992x992"]),
        ("3840x3840", ["2880x2880"]),  # over the pixel cap: the largest square
        ("100x100", ["816x816"]),  # under it: the smallest square
        ("1536x1000", ["1536x1008", "1536x992"]),
    ],
)
def test_an_invalid_size_names_the_nearest_valid_sizes(size: str, nearest: list[str]) -> None:
    with pytest.raises(RequestValidationError) as info:
        GenerateRequest.build(prompt="a kite", size=size)
    message = str(info.value)
    named = message.split("nearest valid sizes: ")[1].split(", ")
    assert named[: len(nearest)] == nearest, message
    for valid in named:
        parse_size(valid)  # every size named is one the API takes
    with pytest.raises(ValidationError, match=f"nearest valid sizes: {nearest[0]}"):
        ImageOptions(size=size)  # type: ignore[arg-type]
