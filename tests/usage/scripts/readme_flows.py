from prefect_gpt_image.flows import batch_generate, image_pipeline

if __name__ == "__main__":
    result = image_pipeline(
        "a lighthouse on a cliff at dawn, watercolour",
        options={"size": "1536x1024", "quality": "low"},
        edit={"prompt": "add a rainbow", "region": {"left": 0, "top": 0, "right": 1, "bottom": 0.35}},
    )
    print("pipeline:", result.final.uri)

    state = batch_generate(
        prompts=["a red paper kite", "a green hill", "a blue lake"],
        options={"size": "1024x1024", "quality": "low"},
        return_state=True,
    )
    print("batch:", state.message)
