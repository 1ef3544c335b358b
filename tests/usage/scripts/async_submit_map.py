import asyncio
import json

from prefect import flow

from prefect_gpt_image.tasks import generate_image

PROMPTS = ["a harbour at night", "a stack of old books", "a harbour at night"]


@flow
async def fan_out() -> list[str]:
    future = generate_image.submit("a desert under the stars", size="1024x1024", quality="low")
    futures = generate_image.map(PROMPTS, size="1024x1024", quality="low")
    refs = [future.result()[0], *(f.result()[0] for f in futures)]
    return [ref.sha256 for ref in refs]


if __name__ == "__main__":
    print("RESULT " + json.dumps(asyncio.run(fan_out())))
