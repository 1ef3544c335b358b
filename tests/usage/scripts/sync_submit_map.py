import json

from prefect import flow

from prefect_gpt_image.tasks import generate_image

PROMPTS = ["a windmill at dusk", "a teapot made of glass", "a windmill at dusk"]


@flow
def fan_out() -> list[str]:
    future = generate_image.submit("a snowy mountain village", size="1024x1024", quality="low")
    futures = generate_image.map(PROMPTS, size="1024x1024", quality="low")
    refs = [future.result()[0], *(f.result()[0] for f in futures)]
    return [ref.sha256 for ref in refs]


if __name__ == "__main__":
    print("RESULT " + json.dumps(fan_out()))
