import asyncio
import json

from prefect_gpt_image.api import AsyncImagesClient, ImagesClient


async def generate_async(prompt: str) -> str:
    client = AsyncImagesClient()  # never closed
    images = await client.generate(prompt, size="1024x1024", quality="low")
    return images[0].sha256


if __name__ == "__main__":
    client = ImagesClient()  # never closed
    images = client.generate("a paper boat", size="1024x1024", quality="low")
    spare = ImagesClient()  # never used, never closed
    other = asyncio.run(generate_async("a paper plane"))
    print("RESULT " + json.dumps({"sync": images[0].sha256, "async": other}))
