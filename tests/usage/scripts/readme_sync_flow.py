from prefect import flow

from prefect_gpt_image.flows import MaskRegion, build_mask
from prefect_gpt_image.tasks import blend_images, edit_image, generate_image

OPTIONS = {"size": "1024x1024", "quality": "low"}


@flow(log_prints=True)
def lighthouse() -> None:
    image = generate_image("a lighthouse on a cliff at dawn", **OPTIONS)[0]
    sky = build_mask(image.width, image.height, MaskRegion(left=0, top=0, right=1, bottom=0.35))
    edited = edit_image("add a rainbow in the sky", image, mask=sky, **OPTIONS)[0]
    poster = blend_images("a poster of these two lighthouses", [image, edited], **OPTIONS)[0]
    futures = generate_image.map(["a red kite", "a green hill", "a blue lake"], **OPTIONS)
    print(poster.uri, [future.result()[0].uri for future in futures])


if __name__ == "__main__":
    lighthouse()
