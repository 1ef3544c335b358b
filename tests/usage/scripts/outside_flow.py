import json

from prefect_gpt_image.flows import MaskRegion, build_mask
from prefect_gpt_image.tasks import edit_image, generate_image

if __name__ == "__main__":
    refs = generate_image("a sailing boat on a calm sea", size="1024x1024", quality="low")
    again = generate_image("a sailing boat on a calm sea", size="1024x1024", quality="low")
    boat = refs[0]
    mask = build_mask(boat.width, boat.height, MaskRegion(left=0, top=0.5, right=1, bottom=1))
    edited = edit_image("make the sea stormy", boat, mask=mask, size="1024x1024", quality="low")
    print(f"stored {boat.uri} and {edited[0].uri}")
    shas = {"generated": boat.sha256, "again": again[0].sha256, "edited": edited[0].sha256}
    print("RESULT " + json.dumps(shas))
