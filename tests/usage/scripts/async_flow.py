import asyncio
import json

from prefect import flow

from prefect_gpt_image.tasks import generate_image

OPTIONS = {"size": "1024x1024", "quality": "low"}
PROMPTS = ["a bowl of lemons on a blue table", "a fox reading a newspaper", "a red paper kite"]


@flow
async def still_lifes() -> list[str]:
    first = await generate_image("a lighthouse in a storm, ink drawing", **OPTIONS)
    # Several calls at once; the same prompt twice at once is paid for once.
    more = await asyncio.gather(*(generate_image(prompt, **OPTIONS) for prompt in [*PROMPTS, PROMPTS[0]]))
    return [refs[0].sha256 for refs in (first, *more)]


if __name__ == "__main__":
    print("RESULT " + json.dumps(asyncio.run(still_lifes())))
