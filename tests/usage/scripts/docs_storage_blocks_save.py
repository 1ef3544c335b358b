from prefect_gpt_image.blocks import GptImageCredentials, GptImageSettings, GptImageStorage

GptImageCredentials(api_key="sk-...", base_url="https://cn.crazyrouter.com/v1").save("gpt-image")
GptImageSettings(concurrency_limit=8, max_cost_per_run=20.0).save("gpt-image")
GptImageStorage(location="s3://my-bucket/images").save("gpt-image")
