import json
import sys

from prefect import flow

from prefect_gpt_image.flows import batch_generate, image_pipeline

OPTIONS = {"size": "1024x1024", "quality": "low"}


@flow
def nightly(prompts: list[str]) -> int:
    batch = batch_generate(prompts=prompts, options=OPTIONS)  # a subflow of this flow
    return batch.stored


if __name__ == "__main__":
    reference = sys.argv[1]  # a PNG of yours
    result = image_pipeline(
        "a lighthouse on a cliff at dawn, watercolour",
        options=OPTIONS,
        edit={"prompt": "add a rainbow", "region": {"left": 0, "top": 0, "right": 1, "bottom": 0.35}},
        blend={"prompt": "repaint it in the colours of the reference", "references": [reference]},
    )
    print(f"pipeline: {result.final.uri}")

    state = batch_generate(
        prompts=["a red kite", "a green hill", "a blue lake"], options=OPTIONS, return_state=True
    )
    batch = state.result()
    print(f"batch: {state.message}")

    stored = nightly(["a yellow tram", "an orange cat"])
    print(
        "RESULT "
        + json.dumps(
            {
                "pipeline": [result.generated[0].sha256, result.edited[0].sha256, result.blended[0].sha256],
                "batch_stored": batch.stored,
                "batch_state": state.type.value,
                "nightly_stored": stored,
            }
        )
    )
