"""Reading an image request: the bearer key check, then the JSON (generations) or multipart
(edits) body validated with the api layer's own request models, so the sandbox refuses exactly
what the client refuses."""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass
from functools import partial
from typing import Any

import anyio.to_thread
from starlette.datastructures import Headers, UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import Request
from starlette.types import Message

from ..api.errors import RequestValidationError
from ..api.images import MAX_INPUT_BYTES, InputImage
from ..api.models import (
    DEFAULT_MODEL,
    MAX_INPUT_IMAGES,
    EditRequest,
    GenerateRequest,
    ImageRequest,
    parse_size,
)
from .errors import _ApiError, _invalid, _validation_error
from .exchange import _Exchange
from .ledger import Ledger, LoggedFile

_IMAGE_PARTS = ("image", "image[]")


@dataclass
class _Parsed:
    """A validated request and what the response needs to know about it."""

    request: ImageRequest
    width: int
    height: int
    input_images: int


def _auth_ok(headers: Headers, keys: tuple[str, ...]) -> bool:
    """Whether the bearer key is acceptable (constant-time compare; the key is never kept)."""
    scheme, _, key = headers.get("authorization", "").partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not key:
        return False
    if not keys:
        return True
    given = key.encode()
    return any(hmac.compare_digest(given, k.encode()) for k in keys)


def _parse_generation(ledger: Ledger, ex: _Exchange, body: bytes) -> _Parsed:
    """The JSON body through GenerateRequest.build, logged first."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise _invalid(None, "the request body is not valid JSON", "bad_request_body") from None
    if not isinstance(data, dict):
        raise _invalid(None, "the request body must be a JSON object", "bad_request_body")
    ledger.update_request(ex.request_id, fields=data)
    _check_model(data)
    try:
        req = GenerateRequest.build(**data)
    except RequestValidationError as exc:
        raise _validation_error(exc) from None
    width, height = req.dimensions or (1024, 1024)
    return _Parsed(req, width, height, 0)


async def _parse_edit(ledger: Ledger, ex: _Exchange, body: bytes) -> _Parsed:
    """The multipart body: text parts and files, logged, then decoded and validated."""
    ctype = ex.headers.get("content-type", "")
    if not ctype.lower().startswith("multipart/form-data"):
        raise _invalid(None, "images/edits takes multipart/form-data", "bad_request_body")
    sent = False

    async def replay() -> Message:
        """Hand the already-read body to the form parser."""
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return {"type": "http.disconnect"}  # pragma: no cover - the parser stops at the end

    fields: dict[str, str] = {}
    uploads: list[tuple[str, UploadFile]] = []
    request = Request(ex.scope, replay)
    try:
        form = await request.form(max_files=100, max_fields=100, max_part_size=1024 * 1024)
    except (MultiPartException, HTTPException) as exc:
        detail = getattr(exc, "message", None) or getattr(exc, "detail", "")
        raise _invalid(None, f"malformed multipart body: {detail}", "bad_request_body") from None
    files: list[tuple[str, str | None, bytes]] = []
    logged: list[LoggedFile] = []
    try:
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                uploads.append((key, value))
            elif key in fields:
                raise _invalid(key, "text field given more than once")
            else:
                fields[key] = value
        for key, upload in uploads:
            data = await upload.read()
            files.append((key, upload.filename, data))
            logged.append(
                LoggedFile(
                    field=key,
                    filename=upload.filename,
                    content_type=upload.content_type,
                    size=len(data),
                    sha256=_sha256(data),
                )
            )
    finally:
        await form.close()
    ledger.update_request(ex.request_id, fields=dict(fields), files=logged)
    for key in (*_IMAGE_PARTS, "mask"):
        if key in fields:
            raise _invalid(key, "must be a file part (with a filename)", "invalid_image_file")
    if "images" in fields:
        raise _invalid("images", "unknown field: send the images as image[] file parts")
    _check_model(fields)
    image_parts = [(name, data) for key, name, data in files if key in _IMAGE_PARTS]
    masks = [(name, data) for key, name, data in files if key == "mask"]
    for key, _, _ in files:
        if key not in (*_IMAGE_PARTS, "mask"):
            raise _invalid(key, "unknown file part: send images as image[] (or image)")
    if not image_parts:
        raise _invalid("image", "is required: send 1..16 images as image[] (or image)")
    if len(image_parts) > MAX_INPUT_IMAGES:
        raise _invalid("image", f"at most {MAX_INPUT_IMAGES} images, got {len(image_parts)}")
    if len(masks) > 1:
        raise _invalid("mask", "only one mask is allowed")
    mask = masks[0] if masks else None
    decode = partial(_build_edit, image_parts, mask, fields)
    req = await anyio.to_thread.run_sync(decode)
    size = f"{req.images[0].width}x{req.images[0].height}"
    if req.dimensions is not None:
        width, height = req.dimensions
    else:
        try:
            width, height = parse_size(size)
        except ValueError:
            width, height = 1024, 1024
    return _Parsed(req, width, height, len(req.images))


# -- answering ---------------------------------------------------------------------------


def _check_model(fields: dict[str, Any]) -> None:
    """Require ``model``; any model but gpt-image-2 is a 404 like on the gateway."""
    if "model" not in fields:
        raise _invalid("model", "is required: use gpt-image-2")
    model = fields["model"]
    if isinstance(model, str) and model != DEFAULT_MODEL:
        raise _ApiError(
            404,
            f"model {model!r} not found: this sandbox serves only {DEFAULT_MODEL}",
            "invalid_request_error",
            "model_not_found",
            "model",
        )


def _build_edit(
    image_parts: list[tuple[str | None, bytes]],
    mask_part: tuple[str | None, bytes] | None,
    fields: dict[str, str],
) -> EditRequest:
    """Check the uploads and validate the edit (CPU-bound: runs in a worker thread). A PNG is
    checked by its integrity data (every chunk's CRC, through IEND), JPEG and WebP are decoded:
    decoding every PNG's pixels cost the sandbox more CPU per edit than the client spends, on
    the same cores in tests and benchmarks, and catches no more truncated or corrupt uploads."""
    images: list[InputImage] = []
    for i, (name, data) in enumerate(image_parts):
        if len(data) >= MAX_INPUT_BYTES:
            raise _invalid("image", f"image {i} is too large: must be under 50 MB", "invalid_image_file")
        try:
            images.append(InputImage.from_bytes(data, name, decode=False))
        except ValueError as exc:
            raise _invalid("image", f"image {i} ({name}): {exc}", "invalid_image_file") from None
    mask: InputImage | None = None
    if mask_part is not None:
        name, data = mask_part
        try:
            mask = InputImage.from_bytes(data, name, decode=False)
        except ValueError as exc:
            raise _invalid("mask", f"mask ({name}): {exc}", "invalid_image_file") from None
        if mask.format != "png" or not mask.has_alpha:
            raise _invalid(
                "mask",
                "the mask must be a PNG with an alpha channel (alpha 0 marks where to edit)",
                "invalid_mask_image_format",
            )
    try:
        return EditRequest.build(images=tuple(images), mask=mask, **fields)
    except RequestValidationError as exc:
        raise _validation_error(exc) from None


def _sha256(data: bytes) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()
