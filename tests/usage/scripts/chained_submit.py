import json

from prefect import flow

from prefect_gpt_image.tasks import blend_images, generate_image


@flow
def chained() -> dict[str, str]:
    first = generate_image.submit("a lighthouse on a rock", size="1024x1024", quality="low")
    # a future as a parameter: the blend starts once the image it needs is stored
    blend = blend_images.submit("the lighthouse in winter", images=first, size="1024x1024", quality="low")
    # wait_for: starts after the blend, though it needs nothing from it
    after = generate_image.submit("a boat", size="1024x1024", quality="low", wait_for=[blend])
    return {
        "generated": first.result()[0].sha256,
        "blended": blend.result()[0].sha256,
        "after": after.result()[0].sha256,
    }


if __name__ == "__main__":
    print("RESULT " + json.dumps(chained()))
