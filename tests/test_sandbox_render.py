"""The sandbox's cheap and realistic result images (``render="template"``, ``texture``)."""

from __future__ import annotations

import argparse

import httpx
import pytest

from prefect_gpt_image.api.images import InputImage, probe_image
from prefect_gpt_image.sandbox import SandboxServer
from prefect_gpt_image.sandbox.cli import add_arguments, config_from_args
from prefect_gpt_image.sandbox.render import Renderer, RenderSpec
from tests.support.images import png_bytes


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp"])
def test_template_results_are_distinct_valid_images(fmt: str) -> None:
    renderer = Renderer("template")
    results = [renderer(RenderSpec(prompt=f"p{i}", width=1024, height=640, format=fmt)) for i in range(3)]
    assert len({r.sha256 for r in results}) == 3
    again = renderer(RenderSpec(prompt="p0", width=1024, height=640, format=fmt))
    assert again.sha256 == results[0].sha256  # deterministic
    for result in results:
        info = probe_image(result.data)
        assert (info.format, info.width, info.height) == (fmt, 1024, 640)


def test_template_edits_differ_by_input_and_keep_the_size() -> None:
    renderer = Renderer("template")
    inputs = [
        InputImage.from_bytes(png_bytes((256, 256), colour=colour), f"in{i}.png")
        for i, colour in enumerate(["red", "blue"])
    ]
    results = [
        renderer(RenderSpec(prompt="same edit", width=512, height=512, inputs=(image,))) for image in inputs
    ]
    drawn = renderer(RenderSpec(prompt="same edit", width=512, height=512))
    assert len({r.sha256 for r in [*results, drawn]}) == 3  # each input its own result
    again = renderer(RenderSpec(prompt="same edit", width=512, height=512, inputs=(inputs[0],)))
    assert again.sha256 == results[0].sha256
    assert (probe_image(results[1].data).width, probe_image(results[1].data).height) == (512, 512)


def test_texture_makes_files_as_large_as_real_ones() -> None:
    spec = RenderSpec(prompt="a fox", width=1024, height=1024)
    flat = Renderer("template")(spec)
    grainy = Renderer("template", texture=True)(spec)
    assert len(flat.data) < 200_000 < 1_000_000 < len(grainy.data)


def test_template_partials_and_server_round_trip() -> None:
    with SandboxServer(render="template", texture=False) as server:
        with httpx.Client(timeout=30) as client:
            answer = client.post(
                f"{server.base_url}/images/generations",
                json={"model": "gpt-image-2", "prompt": "a boat", "size": "1024x1024"},
                headers={"Authorization": "Bearer sk-x"},
            )
            answer.raise_for_status()
            image = client.get(answer.json()["data"][0]["url"]).content
    assert probe_image(image).width == 1024
    spec = RenderSpec(prompt="a boat", width=1024, height=1024, partials=2)
    assert len(Renderer("template")(spec).partials) == 2


def test_render_flags() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    config = config_from_args(parser.parse_args(["--render", "template", "--texture"]))
    assert config.render == "template" and config.texture
    with pytest.raises(ValueError):
        Renderer("fast")
