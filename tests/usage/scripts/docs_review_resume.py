import sys

from prefect.flow_runs import resume_flow_run

flow_run_id = sys.argv[1]  # the waiting run's id: its page in the UI, or the review event's resource
resume_flow_run(
    flow_run_id,
    run_input={
        "approve_all": True,
        "redo": [{"row": "2", "note": "warmer light"}, {"row": "sku-7", "note": ""}],
        "drop": ["3"],
        "reviewer": "ann",
    },
)
