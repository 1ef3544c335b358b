import json
import sys

from prefect_gpt_image.flows import batch_pipeline

# generate, let a person keep the good ones, then edit and blend only those
result = batch_pipeline(
    manifest=sys.argv[1],  # e.g. s3://catalogue/products.csv: id,product,surface,backdrop,frame
    steps=[
        {"kind": "generate", "prompt": "{product} on a {surface}, studio photo"},
        {"kind": "review", "timeout_seconds": 8 * 3600, "max_rounds": 3},
        {
            "kind": "edit",
            "prompt": "a {backdrop} backdrop",
            "region": {"left": 0, "top": 0, "right": 1, "bottom": 0.3},
        },
        {"kind": "blend", "prompt": "add the brand frame", "references": ["frame"]},
    ],
    options={"quality": "low"},
)
print(result)
statuses = {steps[0].id: [step.status for step in steps] for steps in result.rows().values()}
print("RESULT " + json.dumps(statuses))
