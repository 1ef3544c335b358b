"""The sandbox's answer hold: result downloads wait while it is armed, the test reads which ones
wait (in process and over HTTP), and a release lets them all go on."""

from __future__ import annotations

import threading
from typing import Any

import httpx

from prefect_gpt_image.sandbox import SandboxServer
from tests.support.sandbox import wait_until


def test_held_downloads_wait_until_released_and_the_count_is_readable() -> None:
    with SandboxServer() as sandbox, httpx.Client(base_url=sandbox.url, timeout=30) as http:
        headers = {"Authorization": "Bearer sk-x"}
        body = {"model": "gpt-image-2", "prompt": "a hold", "size": "1024x640", "quality": "low", "n": 2}
        answer = http.post("/v1/images/generations", json=body, headers=headers).json()
        first, second = (item["url"] for item in answer["data"])
        assert http.post("/sandbox/hold", json={"hold": True, "count": 1}).json()["armed"] is True
        results: dict[str, int] = {}
        getter = threading.Thread(target=lambda: results.update(first=http.get(first).status_code))
        getter.start()
        wait_until(lambda: len(sandbox.hold.held) == 1, "one download held")
        assert sandbox.hold.held == [first.rsplit("/", 1)[-1]]
        assert http.get("/sandbox/hold").json()["held"] == sandbox.hold.held
        # only the next download was to be held: the second goes through at once
        assert http.get(second).status_code == 200 and not sandbox.hold.armed
        assert getter.is_alive() and "first" not in results
        assert http.post("/sandbox/hold", json={"hold": False}).json()["armed"] is False
        getter.join(10)
        assert results == {"first": 200} and sandbox.hold.held == []
        assert http.get("/sandbox/hold").json() == {"armed": False, "left": None, "held": []}
        assert http.post("/sandbox/hold", json={"hold": "yes"}).status_code == 400


def test_stopping_the_server_releases_what_it_holds() -> None:
    sandbox = SandboxServer().start()
    sandbox.hold.hold()
    client = httpx.Client(base_url=sandbox.url, timeout=30)
    outcome: list[Any] = []

    def get() -> None:
        try:
            outcome.append(client.get("/media/unknown.png").status_code)
        except httpx.HTTPError as exc:
            outcome.append(type(exc).__name__)

    getter = threading.Thread(target=get)
    getter.start()
    wait_until(lambda: sandbox.hold.held == ["unknown.png"], "the unknown name's download held")
    stopped = threading.Thread(target=sandbox.stop)
    stopped.start()
    stopped.join(10)
    getter.join(10)
    assert not stopped.is_alive() and not getter.is_alive() and outcome == [404]
    client.close()
