import json
import sys

from prefect_gpt_image.flows import batch_edit

if __name__ == "__main__":
    photos = sys.argv[1]  # a folder of png/jpeg/webp (or s3://bucket/prefix/, a list, a manifest)
    edit = {
        "prompt": "replace the background with a plain white studio wall",
        "region": {"left": 0, "top": 0, "right": 1, "bottom": 0.5},  # a mask at each image's size
        "options": {"quality": "low"},
    }
    plan = batch_edit(photos, **edit, plan_only=True)  # checks every image, pays nothing
    print(plan.summary())

    result = batch_edit(photos, **edit)
    for step in result.steps:
        print(step.source, "->", step.images[0].uri)
    rerun = batch_edit(photos, **edit, plan_only=True)  # everything is in the store now
    print("RESULT " + json.dumps({"planned": plan.to_make, "stored": result.stored, "rerun": rerun.to_make}))
