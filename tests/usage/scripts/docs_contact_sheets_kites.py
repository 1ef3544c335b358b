import json

from prefect_gpt_image.flows import ImageOptions, batch_generate
from prefect_gpt_image.flows.sheets import contact_sheet
from prefect_gpt_image.storage import resolve_store

result = batch_generate(["a red kite", "a blue kite"], options=ImageOptions(quality="low"))
store = resolve_store()  # the store the batch used: $GPT_IMAGE_STORAGE or ./gpt-image-output
pages = contact_sheet(result, store, title="kites", page_rows=1)  # markdown pages, a row each
print(len(pages), pages[0][:200])
print("RESULT " + json.dumps({"pages": pages, "images": [row.images[0].sha256 for row in result.rows]}))
