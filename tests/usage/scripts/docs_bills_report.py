from datetime import UTC, datetime

from prefect_gpt_image.flows import batch_generate, bill_report

batch_generate(["a red kite", "a blue kite"], options={"quality": "low"})  # something to pay for

today = datetime.now(UTC).date()
report = bill_report(start=today, end=today)  # storage: unset, $GPT_IMAGE_STORAGE as the batch's
print(report.bill.summary())
# 2026-12-05 to 2026-12-05: paid $0.0754 for 2 image(s) in 1 flow run(s)
print(report.json_uri, report.csv_uri, report.chart_uri)
print("RESULT " + report.bill.model_dump_json())
