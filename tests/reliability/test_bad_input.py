"""Bad input is refused before money is spent, through the TASKS and the FLOWS (the client alone is
covered by tests/api/test_validation.py): every contract rule, malformed sizes, wrong types,
17 images, masks of the wrong size or without alpha, non-image and unreadable files, bad URIs,
forbidden fields, and flow parameters as the UI sends them (JSON through Prefect's parameter
validation). Each refusal names the field and the rule; the sandbox sees zero requests.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from prefect import flow
from prefect.exceptions import ParameterTypeError

from prefect_gpt_image.blocks import GptImageCredentials
from prefect_gpt_image.flows import BatchResult, batch_generate, image_pipeline
from prefect_gpt_image.local_s3 import LocalS3Server
from prefect_gpt_image.tasks import ImageRef, blend_images, edit_image, generate_image

from .conftest import CANARY_KEY, SIZE, fast_settings, image_files, save_block

pytestmark = pytest.mark.usefixtures("rel_env")

W, H = (int(v) for v in SIZE.split("x"))


def _png(size: tuple[int, int], mode: str = "RGB", colour: Any = "teal") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, colour).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture
def files(tmp_path: Path) -> dict[str, str]:
    """Input files, good and bad, by name."""
    d = tmp_path / "inputs"
    d.mkdir()
    made: dict[str, bytes] = {
        "good.png": _png((W, H)),
        "mask.png": _png((W, H), "RGBA", (0, 0, 0, 0)),
        "mask-small.png": _png((512, 320), "RGBA", (0, 0, 0, 0)),
        "mask-rgb.png": _png((W, H), "RGB"),
        "notes.txt": b"a shopping list, not an image\n",
        "empty.png": b"",
        "truncated.png": _png((W, H))[:100],
        "fake.png": b"\x89PNG\r\n\x1a\n" + b"garbage" * 20,
    }
    buf = io.BytesIO()
    Image.new("RGB", (W, H), "teal").save(buf, "GIF")
    made["anim.gif"] = buf.getvalue()
    buf = io.BytesIO()
    Image.new("RGB", (W, H), "teal").save(buf, "JPEG")
    made["mask.jpg"] = buf.getvalue()
    buf = io.BytesIO()  # random pixels do not compress: a PNG mask over the 4 MB cap
    Image.frombytes("RGBA", (1100, 1100), os.urandom(1100 * 1100 * 4)).save(buf, "PNG", compress_level=0)
    made["mask-huge.png"] = buf.getvalue()
    for name, data in made.items():
        (d / name).write_bytes(data)
    (d / "a-folder.png").mkdir()
    (d / "dangling.png").symlink_to(d / "gone.png")
    return {name: str(d / name) for name in [*made, "a-folder.png", "dangling.png"]}


Case = tuple[str, str, str, Callable[[dict[str, str]], tuple[Any, ...]]]
"""(id, field named in the error, rule named in the error, files -> (task, args, kwargs))."""


def gen(**kwargs: Any) -> Callable[[dict[str, str]], tuple[Any, ...]]:
    prompt = kwargs.pop("prompt", "a paper boat")
    return lambda files: (generate_image, (prompt,), kwargs)


def edit(
    image: str | Any = "good.png", mask: str | None = None, **kwargs: Any
) -> Callable[[dict[str, str]], tuple[Any, ...]]:
    def make(files: dict[str, str]) -> tuple[Any, ...]:
        source = files.get(image, image) if isinstance(image, str) else image
        return (edit_image, ("add a sail", source, files.get(mask, mask) if mask else None), kwargs)

    return make


def blend(images: list[str], **kwargs: Any) -> Callable[[dict[str, str]], tuple[Any, ...]]:
    return lambda files: (blend_images, ("mix them", [files.get(i, i) for i in images]), kwargs)


TASK_CASES: list[Case] = [
    # every rule of a generation, through generate_image
    ("empty-prompt", "prompt", "must not be empty", gen(prompt="")),
    ("blank-prompt", "prompt", "must not be empty", gen(prompt="  \n ")),
    ("long-prompt", "prompt", "at most 32000 characters", gen(prompt="x" * 32_001)),
    ("prompt-not-text", "prompt", "valid string", gen(prompt=["a", "list"])),
    ("n-zero", "n", "greater than or equal to 1", gen(n=0)),
    ("n-eleven", "n", "less than or equal to 10", gen(n=11)),
    ("n-bool", "n", "not a boolean", gen(n=True)),
    ("n-fraction", "n", "valid integer", gen(n=2.5)),
    ("n-word", "n", "valid integer", gen(n="two")),
    ("size-not-16", "size", "multiples of 16", gen(size="1000x1000")),
    ("size-side", "size", "at most 3840", gen(size="4096x1024")),
    ("size-few-pixels", "size", "between 655360 and 8294400", gen(size="512x512")),
    ("size-many-pixels", "size", "between 655360 and 8294400", gen(size="3840x3840")),
    ("size-ratio", "size", "at most 3", gen(size="2400x768")),
    ("size-star", "size", "WIDTHxHEIGHT", gen(size="1024*1024")),
    ("size-word", "size", "WIDTHxHEIGHT", gen(size="large")),
    ("size-negative", "size", "WIDTHxHEIGHT", gen(size="-1024x1024")),
    ("size-spaces", "size", "WIDTHxHEIGHT", gen(size="1024 x 1024")),
    ("size-int", "size", "valid string", gen(size=1024)),
    ("quality-standard", "quality", "rejected", gen(quality="standard")),
    ("quality-unknown", "quality", "'auto', 'low', 'medium' or 'high'", gen(quality="ultra")),
    ("background-transparent", "background", "not supported", gen(background="transparent")),
    ("background-white", "background", "'auto' or 'opaque'", gen(background="white")),
    ("format-gif", "output_format", "'png', 'jpeg' or 'webp'", gen(output_format="gif")),
    ("compression-png", "output_compression", "jpeg or webp", gen(output_compression=50)),
    (
        "compression-high",
        "output_compression",
        "less than or equal to 100",
        gen(output_format="jpeg", output_compression=101),
    ),
    (
        "compression-negative",
        "output_compression",
        "greater than or equal to 0",
        gen(output_format="webp", output_compression=-1),
    ),
    ("moderation-strict", "moderation", "'auto' or 'low'", gen(moderation="strict")),
    ("partials-without-stream", "partial_images", "only allowed with stream=true", gen(partial_images=2)),
    ("partials-four", "partial_images", "less than or equal to 3", gen(stream=True, partial_images=4)),
    ("stream-n2", "n", "use n=1", gen(stream=True, n=2)),
    ("model-empty", "model", "at least 1 character", gen(model="")),
    ("user-not-text", "user", "valid string", gen(user=12345)),
    (
        "forbidden-response-format",
        "response_format",
        "unexpected keyword argument",
        gen(response_format="b64_json"),
    ),
    ("forbidden-style", "style", "unexpected keyword argument", gen(style="vivid")),
    # edits: the input image, through edit_image
    ("image-not-image", "images[0]", "not a PNG, JPEG or WebP image", edit("notes.txt")),
    ("image-gif", "images[0]", "not a PNG, JPEG or WebP image", edit("anim.gif")),
    ("image-empty-file", "images[0]", "empty file", edit("empty.png")),
    ("image-truncated", "images[0]", "does not decode", edit("truncated.png")),
    ("image-fake-header", "images[0]", "does not decode", edit("fake.png")),
    ("image-missing", "images[0]", "No such file or directory", edit("/nowhere/cat.png")),
    ("image-is-folder", "images[0]", "Is a directory", edit("a-folder.png")),
    ("image-dangling-link", "images[0]", "No such file or directory", edit("dangling.png")),
    ("image-scheme-gs", "images[0]", "unsupported scheme gs://", edit("gs://bucket/cat.png")),
    ("image-scheme-ftp", "images[0]", "unsupported scheme ftp://", edit("ftp://example.com/cat.png")),
    ("image-file-uri-missing", "images[0]", "No such file or directory", edit("file:///nowhere/cat.png")),
    ("image-s3-missing", "images[0]", "no object at", edit("s3://{bucket}/nothing-here.png")),
    ("image-s3-bad-bucket", "images[0]", "Invalid bucket name", edit("s3://Not_A_Bucket!/cat.png")),
    ("image-s3-no-bucket", "images[0]", "not an s3://bucket/key URI", edit("s3:///cat.png")),
    ("image-s3-no-key", "images[0]", "not an s3://bucket/key URI", edit("s3://{bucket}/")),
    ("image-http-404", "images[0]", "answered HTTP 404", edit("{sandbox}/media/nothing-here.png")),
    ("image-wrong-type", "images[0]", "expected an ImageRef, a path", edit(42)),
    ("image-ref-changed", "images[0]", "no longer matches its ref's sha256", edit("{stale-ref}")),
    # edits: the mask
    (
        "mask-wrong-size",
        "mask",
        "must have the first image's size 1024x640, not 512x320",
        edit(mask="mask-small.png"),
    ),
    ("mask-no-alpha", "mask", "must have an alpha channel", edit(mask="mask-rgb.png")),
    ("mask-jpeg", "mask", "must be a PNG", edit(mask="mask.jpg")),
    ("mask-not-image", "mask", "not a PNG, JPEG or WebP image", edit(mask="notes.txt")),
    ("mask-over-4mb", "mask", "must be under 4194304 bytes", edit(mask="mask-huge.png")),
    ("mask-missing", "mask", "No such file or directory", edit(mask="/nowhere/mask.png")),
    # edits: the request fields
    ("edit-quality", "quality", "rejected", edit(mask="mask.png", quality="standard")),
    ("edit-size", "size", "multiples of 16", edit(size="1000x600")),
    ("edit-n", "n", "less than or equal to 10", edit(n=12)),
    ("edit-compression-png", "output_compression", "jpeg or webp", edit(output_compression=10)),
    # blends: how many images, and each of them
    ("blend-17-images", "images", "1..16", blend(["good.png"] * 17)),
    ("blend-no-images", "images", "1..16", blend([])),
    (
        "blend-one-bad-of-16",
        "images[9]",
        "not a PNG, JPEG or WebP image",
        blend(["good.png"] * 9 + ["notes.txt"] + ["good.png"] * 6),
    ),
    ("blend-background", "background", "not supported", blend(["good.png"], background="transparent")),
]


def _resolve(value: Any, context: dict[str, Any]) -> Any:
    """``{name}`` placeholders: an object when the whole value is one, else text substitution."""
    if not isinstance(value, str):
        return value
    for name, found in context.items():
        if value == f"{{{name}}}":
            return found
        if isinstance(found, str):
            value = value.replace(f"{{{name}}}", found)
    return value


def test_tasks_refuse_bad_input_before_paying(
    make_sandbox: Any,
    files: dict[str, str],
    tmp_path: Path,
    local_s3: LocalS3Server,
    s3_bucket: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sandbox = make_sandbox()
    for name, value in local_s3.env().items():
        monkeypatch.setenv(name, value)
    credentials = GptImageCredentials(api_key=CANARY_KEY, base_url=sandbox.base_url)
    settings = fast_settings()
    storage = str(tmp_path / "store")
    good = Path(files["good.png"]).read_bytes()
    stale = ImageRef(
        uri=files["mask.png"],  # a different file than its sha256 says
        sha256=hashlib.sha256(good).hexdigest(),
        width=W,
        height=H,
        format="png",
        size_bytes=len(good),
        prompt="an earlier image",
    )
    context: dict[str, Any] = {"bucket": s3_bucket, "sandbox": sandbox.url, "stale-ref": stale}

    @flow(name="bad-task-input")
    async def attempt() -> dict[str, tuple[str, str]]:
        outcomes: dict[str, tuple[str, str]] = {}
        for case_id, _field, _rule, make in TASK_CASES:
            task, args, kwargs = make(files)
            args = tuple(_resolve(a, context) for a in args)
            try:
                await task(*args, credentials=credentials, settings=settings, storage=storage, **kwargs)
                outcomes[case_id] = ("accepted", "")
            except Exception as exc:
                outcomes[case_id] = (type(exc).__name__, str(exc))
        return outcomes

    outcomes = asyncio.run(attempt())
    problems = []
    for case_id, field, rule, _ in TASK_CASES:
        kind, message = outcomes[case_id]
        named = any(form in message for form in (f"{field}:", f" {field}", f"{field}=", f"'{field}'"))
        if not (named and rule in message) or kind not in (
            "RequestValidationError",
            "InputImageError",
            "UnknownOptionError",  # a keyword that is no parameter: refused before Prefect binds it
        ):
            problems.append(f"{case_id}: expected {field!r} and {rule!r}, got {kind}: {message[:300]}")
    assert not problems, "\n".join(problems)
    assert sandbox.ledger.requests == []
    assert image_files(tmp_path / "store") == []


BAD_ROWS: list[tuple[dict[str, Any] | str, str, str]] = [
    ({"prompt": ""}, "prompt", "must not be empty"),
    ({"prompt": "a kite", "size": "1000x1000"}, "size", "multiples of 16"),
    ({"prompt": "a kite", "size": "4000x2000"}, "size", "at most 3840"),
    ({"prompt": "a kite", "n": 0}, "n", "greater than or equal to 1"),
    ({"prompt": "a kite", "n": "many"}, "n", "valid integer"),
    ({"prompt": "a kite", "quality": "standard"}, "quality", "rejected"),
    ({"prompt": "a kite", "quality": "best"}, "quality", "'auto', 'low', 'medium' or 'high'"),
    ({"prompt": "a kite", "background": "transparent"}, "background", "not supported"),
    ({"prompt": "a kite", "output_format": "bmp"}, "output_format", "'png', 'jpeg' or 'webp'"),
    ({"prompt": "a kite", "output_compression": 80}, "output_compression", "jpeg or webp"),
    ({"prompt": "a kite", "moderation": "none"}, "moderation", "'auto' or 'low'"),
    ({"prompt": "a kite", "style": "vivid"}, "style", "Extra inputs are not permitted"),
    ({"prompt": "a kite", "response_format": "url"}, "response_format", "Extra inputs are not permitted"),
    ({"size": "1024x1024"}, "prompt", "Field required"),
    ('{"prompt": "a kite", ', "line", "not valid JSON"),
    ('["a kite"]', "line", "must be an object with a 'prompt'"),
]


def test_batch_refuses_bad_rows_before_paying(make_sandbox: Any, tmp_path: Path) -> None:
    sandbox = make_sandbox()
    settings_block = save_block(fast_settings(), "rel-bad-rows")
    credentials_block = save_block(
        GptImageCredentials(api_key=CANARY_KEY, base_url=sandbox.base_url), "rel-bad-rows"
    )
    manifest = tmp_path / "rows.jsonl"
    manifest.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r, _, _ in BAD_ROWS) + "\n")
    state = batch_generate(
        manifest=str(manifest),
        storage=str(tmp_path / "store"),
        settings_block=settings_block,
        credentials_block=credentials_block,
        return_state=True,
    )
    assert state.is_failed()
    result = state.result(raise_on_failure=False)
    assert [r.status for r in result.rows] == ["invalid"] * len(BAD_ROWS)
    problems = []
    for row, (_, field, rule) in zip(result.rows, BAD_ROWS, strict=True):
        if field not in (row.error or "") or rule not in (row.error or ""):
            problems.append(f"row {row.row}: expected {field!r} and {rule!r}, got {row.error}")
    assert not problems, "\n".join(problems)
    assert f"{len(BAD_ROWS)} of {len(BAD_ROWS)} rows failed" in (state.message or "")
    assert sandbox.ledger.requests == []
    assert image_files(tmp_path / "store") == []


# Parameters as the UI (or `prefect deployment run --param`, or run_deployment) sends them: JSON.
# Refused by Prefect's parameter validation (the typed parameters) ...
UI_TYPE_ERRORS: list[tuple[Any, dict[str, Any], str, str]] = [
    (
        image_pipeline,
        {"prompt": "x", "options": {"size": "1000x1000"}},
        "options.size",
        "Input should be 'auto'",
    ),
    (
        image_pipeline,
        {"prompt": "x", "options": {"quality": "standard"}},
        "options.quality",
        "Input should be",
    ),
    (
        image_pipeline,
        {"prompt": "x", "options": {"output_compression": 150}},
        "options.output_compression",
        "less than or equal to 100",
    ),
    (
        image_pipeline,
        {"prompt": "x", "options": {"output_format": "gif"}},
        "options.output_format",
        "Input should be 'png', 'jpeg' or 'webp'",
    ),
    (
        image_pipeline,
        {"prompt": "x", "options": {"background": "transparent"}},
        "options.background",
        "Input should be 'auto' or 'opaque'",
    ),
    (image_pipeline, {"prompt": "x", "options": {"style": "vivid"}}, "options.style", "Extra inputs"),
    (
        image_pipeline,
        {"prompt": "x", "edit": {"prompt": " ", "mask_uri": "m.png"}},
        "edit.prompt",
        "must not be empty",
    ),
    (
        image_pipeline,
        {
            "prompt": "x",
            "edit": {"prompt": "y", "region": {"left": 0.5, "top": 0, "right": 0.2, "bottom": 1}},
        },
        "edit.region",
        "right must exceed left",
    ),
    (
        image_pipeline,
        {"prompt": "x", "edit": {"prompt": "y", "region": {"left": -1, "top": 0, "right": 1, "bottom": 1}}},
        "edit.region.left",
        "greater than or equal to 0",
    ),
    (
        image_pipeline,
        {"prompt": "x", "blend": {"prompt": "y", "references": []}},
        "blend.references",
        "at least 1 item",
    ),
    (
        image_pipeline,
        {"prompt": "x", "blend": {"prompt": "y", "references": ["a.png"] * 16}},
        "blend.references",
        "at most 15 items",
    ),
    (image_pipeline, {"prompt": "x", "variant": "new"}, "variant", "valid integer"),
    (image_pipeline, {"options": {}}, "prompt", "Field required"),
    (batch_generate, {"prompts": "a kite"}, "prompts", "valid list"),
    (batch_generate, {"prompts": ["a kite"], "n": "many"}, "n", "valid integer"),
    (
        batch_generate,
        {"prompts": ["a kite"], "options": {"size": "999x999"}},
        "options.size",
        "Input should be",
    ),
]
# ... or by the flow itself, with the contract's rules, before the first paid call.
UI_FLOW_ERRORS: list[tuple[Any, dict[str, Any], str, str]] = [
    (image_pipeline, {"prompt": " "}, "prompt", "must not be empty"),
    (
        image_pipeline,
        {"prompt": "x", "options": {"output_format": "png", "output_compression": 50}},
        "output_compression",
        "jpeg or webp",
    ),
    (
        image_pipeline,
        {
            "prompt": "x",
            "options": {"size": "1024x1024"},
            "edit": {"prompt": "y", "region": {"left": 0, "top": 0, "right": 2000, "bottom": 10}},
        },
        "region",
        "outside the 1024x1024 image",
    ),
    (
        image_pipeline,
        {"prompt": "x", "edit": {"prompt": "y", "mask_uri": "{dir}/none.png"}},
        "edit.mask_uri",
        "No such file or directory",
    ),
    (
        image_pipeline,
        {"prompt": "x", "edit": {"prompt": "y", "mask_uri": "{notes.txt}"}},
        "edit.mask_uri",
        "not a PNG, JPEG or WebP image",
    ),
    (
        image_pipeline,
        {"prompt": "x", "edit": {"prompt": "y", "mask_uri": "{mask-rgb.png}"}},
        "mask",
        "alpha channel",
    ),
    (image_pipeline, {"prompt": "x", "edit": {"prompt": "y", "mask_uri": "{mask.jpg}"}}, "mask", "PNG"),
    (
        image_pipeline,
        {
            "prompt": "x",
            "options": {"size": "1024x1024"},
            "edit": {"prompt": "y", "mask_uri": "{mask-small.png}"},
        },
        "mask",
        "1024x1024",
    ),
    (
        image_pipeline,
        {"prompt": "x", "blend": {"prompt": "y", "references": ["gs://b/ref.png"]}},
        "blend.references[0]",
        "unsupported scheme gs://",
    ),
    (
        image_pipeline,
        {"prompt": "x", "blend": {"prompt": "y", "references": ["{good.png}", "{anim.gif}"]}},
        "blend.references[1]",
        "not a PNG, JPEG or WebP image",
    ),
    (batch_generate, {"prompts": ["a kite", "a boat"], "n": 0}, "n", "greater than or equal to 1"),
    (batch_generate, {"prompts": ["", "  "]}, "prompt", "must not be empty"),
    (
        batch_generate,
        {"prompts": ["a kite"], "options": {"output_compression": 30}},
        "output_compression",
        "jpeg or webp",
    ),
]


def _fill(value: Any, files: dict[str, str], folder: str) -> Any:
    if isinstance(value, dict):
        return {k: _fill(v, files, folder) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, files, folder) for v in value]
    if isinstance(value, str) and value.startswith("{"):
        name, _, rest = value[1:].partition("}")
        return (folder if name == "dir" else files[name]) + rest
    return value


def test_flow_parameters_from_the_ui_are_validated_before_paying(
    make_sandbox: Any, files: dict[str, str], tmp_path: Path
) -> None:
    sandbox = make_sandbox()
    common = {
        "storage": str(tmp_path / "store"),
        "settings_block": save_block(fast_settings(), "rel-ui"),
        "credentials_block": save_block(
            GptImageCredentials(api_key=CANARY_KEY, base_url=sandbox.base_url), "rel-ui"
        ),
    }
    problems = []
    for fl, params, field, rule in UI_TYPE_ERRORS:
        try:
            fl.validate_parameters({**params, **common})
            problems.append(f"{fl.name} {params}: accepted by Prefect's validation")
        except ParameterTypeError as exc:
            if f" - {field}: " not in str(exc) or rule not in str(exc):
                problems.append(f"{fl.name} {params}: expected {field!r} and {rule!r}, got {exc}")
    for fl, params, field, rule in UI_FLOW_ERRORS:
        raw = {**_fill(params, files, str(tmp_path)), **common}
        # the same path a deployment run takes: Prefect validates the JSON, then the flow runs
        validated = fl.validate_parameters(json.loads(json.dumps(raw)))
        state = fl(**validated, return_state=True)
        error = state.result(raise_on_failure=False)
        text = f"{state.message} {error}"
        if isinstance(error, BatchResult):  # a batch reports each refused row in its result
            text += " ".join(r.error or "" for r in error.rows)
        if not state.is_failed() or field not in text or rule not in text:
            problems.append(
                f"{fl.name} {params}: expected a failure naming {field!r} and {rule!r}, got {text}"
            )
        if sandbox.ledger.requests:
            problems.append(f"{fl.name} {params}: the sandbox got {len(sandbox.ledger.requests)} request(s)")
            sandbox.reset()
    assert not problems, "\n".join(problems)
    assert image_files(tmp_path / "store") == []
