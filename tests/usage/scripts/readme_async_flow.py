import asyncio

from prefect import flow

from prefect_gpt_image.tasks import generate_image


@flow(log_prints=True)
async def still_lifes(prompts: list[str]) -> None:
    calls = (generate_image(prompt, size="1024x1024", quality="low") for prompt in prompts)
    for refs in await asyncio.gather(*calls):
        print(refs[0].uri)


if __name__ == "__main__":
    asyncio.run(still_lifes(["a bowl of lemons on a blue table", "a fox reading a newspaper"]))
