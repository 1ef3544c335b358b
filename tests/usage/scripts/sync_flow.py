import json

from prefect import flow

from prefect_gpt_image.flows import MaskRegion, build_mask
from prefect_gpt_image.tasks import blend_images, edit_image, generate_image

OPTIONS = {"size": "1024x1024", "quality": "low"}


@flow(log_prints=True)
def lighthouse() -> dict[str, str]:
    first = generate_image("a lighthouse on a cliff at dawn", **OPTIONS)
    again = generate_image("a lighthouse on a cliff at dawn", **OPTIONS)  # the same request: cached, free
    image = first[0]
    sky = build_mask(image.width, image.height, MaskRegion(left=0, top=0, right=1, bottom=0.35))
    edited = edit_image("add a rainbow in the sky", image, mask=sky, **OPTIONS)
    blended = blend_images("the two lighthouses side by side", [image, edited[0]], **OPTIONS)
    print(f"stored {image.uri}, {edited[0].uri} and {blended[0].uri}")
    return {
        "generated": image.sha256,
        "again": again[0].sha256,
        "edited": edited[0].sha256,
        "blended": blended[0].sha256,
    }


if __name__ == "__main__":
    print("RESULT " + json.dumps(lighthouse()))
