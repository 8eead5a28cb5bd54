"""The shared work consumers take the settings of the replica that subscribes: a durable
made by an earlier deployment kept its ``ack_wait`` and ``max_ack_pending`` for ever, so a
longer merge window (with the longer ack wait start-up demands of it) had every raw flow
batch redelivered while it was held, and a larger ``max_ack_pending`` changed nothing."""

from __future__ import annotations

from flowscope.core import config, messaging, subjects
from flowscope.enricher import consuming
from flowscope.enricher.settings import Settings
from nats.aio.client import Client as NATS
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy


def consumer_settings(**overrides: str) -> Settings:
    return config.load(Settings, overrides, env={})


async def test_a_durable_made_before_takes_the_new_consumer_settings(clean_nc: NATS) -> None:
    js = clean_nc.jetstream()
    await messaging.ensure_streams(js, consumer_settings().nats)
    flows = consuming.WORK[0]
    await consuming.work_subscription(js, flows, consumer_settings().consumer)
    changed = consumer_settings(**{"consumer.ack_wait": "60", "consumer.max_ack_pending": "2000"})
    sub = await consuming.work_subscription(js, flows, changed.consumer)
    info = await js.consumer_info(subjects.STREAM_RAW, "enricher-flows")
    assert (info.config.ack_wait, info.config.max_ack_pending) == (60.0, 2000)
    assert (await sub.consumer_info()).name == "enricher-flows"


async def test_a_durable_that_cannot_take_the_settings_is_still_consumed(
    clean_nc: NATS,
) -> None:
    """A durable of that name made otherwise (here: from new messages only), which the
    server will not change: bound as it is, as before."""
    js = clean_nc.jetstream()
    await messaging.ensure_streams(js, consumer_settings().nats)
    flows = consuming.WORK[0]
    other = ConsumerConfig(
        durable_name="enricher-flows", ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.NEW, filter_subject=flows.subject,
    )  # fmt: skip
    await js.add_consumer(subjects.STREAM_RAW, other)
    sub = await consuming.work_subscription(js, flows, consumer_settings().consumer)
    info = await sub.consumer_info()
    assert (info.name, info.config.deliver_policy) == ("enricher-flows", DeliverPolicy.NEW)
