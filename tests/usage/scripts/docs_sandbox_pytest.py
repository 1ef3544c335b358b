import pytest

from prefect_gpt_image.api import ImagesClient


@pytest.mark.gpt_image_sandbox(latency=0.1)
def test_one_image_is_paid_once(gpt_image_sandbox):
    with ImagesClient(api_key="sk-test", base_url=gpt_image_sandbox.base_url) as client:
        images = client.generate("a red fox", size="1024x1024", quality="low")
    assert images[0].width == 1024
    assert gpt_image_sandbox.ledger.billed_images == 1
