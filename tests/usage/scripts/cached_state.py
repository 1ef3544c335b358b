import json

from prefect import flow
from prefect.runtime import flow_run

from prefect_gpt_image.tasks import generate_image


@flow
def twice() -> str:
    generate_image("a lantern in the fog", size="1024x1024", quality="low")
    generate_image("a lantern in the fog", size="1024x1024", quality="low")  # Cached: no API call
    return flow_run.id


if __name__ == "__main__":
    print("RESULT " + json.dumps({"flow_run_id": twice()}))
