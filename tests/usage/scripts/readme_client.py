from prefect_gpt_image.api import ImagesClient

with ImagesClient() as client:  # GPT_IMAGE_API_KEY / GPT_IMAGE_BASE_URL from the environment
    images = client.generate("a lighthouse at dawn", size="1536x1024", quality="low", n=2)
    edited = client.edit("add a rainbow", [images[0].read_bytes()], size="1536x1024", quality="low")
for image in images + edited:
    print(image.sha256, image.width, image.height, image.format, image.request_id)
