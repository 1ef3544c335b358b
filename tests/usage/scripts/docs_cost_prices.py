from prefect_gpt_image.blocks import GptImageSettings

# the gateway raised its price
GptImageSettings(price_per_image=0.041).save("prod", overwrite=True)

# an OpenAI-compatible proxy that bills like OpenAI, at its own rates
GptImageSettings(
    price_model="tokens",  # auto (by endpoint, the default), per_image or tokens
    image_output_usd_per_million=27.0,  # unset ones keep OpenAI's published figures
).save("proxy", overwrite=True)
