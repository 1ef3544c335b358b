import json

from prefect_gpt_image.flows import batch_generate

plan = batch_generate(manifest="kites.csv", plan_only=True, settings_block="proxy")
print(plan.summary())
# plan: 5 call(s) to make for 8 image(s), 0 cache hit(s), 0 invalid;
#   estimated $0.8178 (openai-gpt-image-2+settings@settings)
print("RESULT " + json.dumps({"summary": plan.summary(), "cost": plan.cost, "price_model": plan.price_model}))
