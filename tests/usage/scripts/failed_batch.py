"""A batch and a pipeline whose rows fail, called from a plain script without return_state=True:
each raises BatchFailedError, a few lines long, and the stored rows are still in exc.result."""

import json
import sys

from prefect_gpt_image.flows import BatchFailedError, batch_generate, image_pipeline

OPTIONS = {"size": "1024x1024", "quality": "low"}

if __name__ == "__main__":
    rows = int(sys.argv[1])
    prompts = [f"a paper kite, number {i}" for i in range(1, rows + 1)]
    for i in range(1, rows, 2):
        prompts[i] = f"a kite [sandbox:block] number {i + 1}"  # every other row refused by moderation
    prompts[2] = ""  # refused before any call

    try:
        batch_generate(prompts=prompts, options=OPTIONS)
        raise SystemExit("batch_generate did not raise")
    except BatchFailedError as exc:
        batch_message, result = str(exc), exc.result
    stored = {row.prompt: row.images[0].sha256 for row in result.rows if row.status == "stored"}
    print(batch_message)

    region = {"left": 0, "top": 0, "right": 1, "bottom": 0.4}
    try:
        image_pipeline(
            "a lighthouse", options=OPTIONS, edit={"prompt": "a storm [sandbox:block]", "region": region}
        )
        raise SystemExit("image_pipeline did not raise")
    except BatchFailedError as exc:
        pipeline_message, steps = str(exc), exc.result.steps
    print(pipeline_message)

    print(
        "RESULT "
        + json.dumps(
            {
                "batch_message": batch_message,
                "stored": stored,
                "statuses": [row.status for row in result.rows],
                "pipeline_message": pipeline_message,
                "pipeline_steps": [
                    [s.step, s.status, s.images[0].sha256 if s.images else None] for s in steps
                ],
            }
        )
    )
