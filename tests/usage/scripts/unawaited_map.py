import json
import os
from pathlib import Path

from prefect import flow
from prefect.task_runners import ThreadPoolTaskRunner

from prefect_gpt_image.tasks import generate_image

PROMPTS = ["a paper boat", "a glass of lemonade"] + [f"a paper crane, number {i}" for i in range(8)]


@flow
def fire_and_forget() -> None:
    # no .result(): the flow still waits for its mapped calls before it ends, also for those
    # that start after its body returned (10 calls: 8 in front of the default limit of 4 at once)
    generate_image.map(PROMPTS, size="1024x1024", quality="low")


@flow(task_runner=ThreadPoolTaskRunner(max_workers=2))
def bounded() -> list[str]:
    futures = generate_image.map(["a red door", "a blue door", "a green door"], size="1024x1024")
    return [f.result()[0].sha256 for f in futures]


if __name__ == "__main__":
    fire_and_forget()
    stored = len(list((Path(os.environ["GPT_IMAGE_STORAGE"]) / "images").rglob("*.png")))
    print("RESULT " + json.dumps({"stored_when_the_flow_ended": stored, "bounded": bounded()}))
