import json

from prefect import flow

from prefect_gpt_image.tasks import generate_image


@flow
def first_run() -> str:
    refs = generate_image("a hot air balloon over fields", size="1024x1024", quality="low")
    return refs[0].sha256


if __name__ == "__main__":
    print("RESULT " + json.dumps({"sha256": first_run()}))
