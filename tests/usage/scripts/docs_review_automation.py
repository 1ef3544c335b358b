from prefect.automations import Automation
from prefect.blocks.notifications import SlackWebhook
from prefect.events.actions import SendNotification
from prefect.events.schemas.automations import EventTrigger, Posture

slack = SlackWebhook.load("reviews")
Automation(
    name="gpt-image review waiting",
    trigger=EventTrigger(
        expect={"prefect-gpt-image.review.waiting"},
        match={"prefect.resource.id": "prefect.flow-run.*"},
        posture=Posture.Reactive,
        threshold=1,
    ),
    actions=[
        SendNotification(
            block_document_id=slack._block_document_id,
            subject="Images waiting for review",
            body=(
                "{{ event.payload.rows }} image row(s) of step {{ event.payload.step }} "
                "(round {{ event.payload.round }}) wait for review: {{ event.payload.url }}"
            ),
        )
    ],
).create()
