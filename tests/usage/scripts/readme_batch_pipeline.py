import json
import sys

from prefect_gpt_image.flows import batch_pipeline

STEPS = [
    {
        "kind": "generate",
        "prompt": "{product} on a {surface}, studio photo",
        "options": {"size": "1024x1024"},
    },
    {
        "kind": "edit",
        "prompt": "a {backdrop} backdrop",
        "region": {"left": 0, "top": 0, "right": 1, "bottom": 0.3},
    },
    {"kind": "blend", "prompt": "add the brand frame", "references": ["frame"]},  # a column holding a URI
]

if __name__ == "__main__":
    manifest = sys.argv[1]  # CSV: product,surface,backdrop,frame (local or s3://)
    result = batch_pipeline(manifest=manifest, steps=STEPS, options={"quality": "low"})
    for number in result.rows():
        print(f"row {number}:", result.final(number).uri)
    chains = [[step.images[0].sha256 for step in steps] for steps in result.rows().values()]
    print("RESULT " + json.dumps({"stored": result.stored, "chains": chains}))
