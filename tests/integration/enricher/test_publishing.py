"""The pipelined JetStream publisher: acks, no-stream and stream errors, duplicates,
atomic batches (encoded by the publisher: the same bytes and stored messages as nats-py's
``publish``) and the pipeline's fallback to one ack per message."""

from __future__ import annotations

import asyncio
import base64
import re
import socket

import nats
import orjson
import pytest
from flowscope.core import codec, messaging, subjects
from flowscope.core.messaging import NatsSettings
from flowscope.enricher import _flowcore
from flowscope.enricher.consuming import Pipeline, raw_message_id
from flowscope.enricher.enriching import Enricher, Observers, Output
from flowscope.enricher.local import LocalResolver
from flowscope.enricher.metrics import Metrics
from flowscope.enricher.names import NameCache
from flowscope.enricher.processes import SocketTable
from flowscope.enricher.publishing import (
    ATOMIC_DISABLED,
    ATOMIC_DUPLICATE,
    ATOMIC_MAX,
    NO_SUCH_ID,
    AckedPublisher,
    Message,
    PublishError,
    _send_frame,
    cancel_all,
    encode,
    frame_lines,
    gather_lines,
)
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import StreamConfig
from prometheus_client import CollectorRegistry

from tests.support import nats_server
from tests.support.nats_server import NatsServer


async def test_acks_errors_and_duplicates(clean_nc: NATS) -> None:
    js = clean_nc.jetstream()
    await js.add_stream(StreamConfig(name="ENRICHER_PUB_TEST", subjects=["enricher-pub-test.>"],
                                     max_msg_size=1000))  # fmt: skip
    publisher = AckedPublisher(clean_nc)
    await publisher.start()
    try:
        acks = [await publisher.publish(f"enricher-pub-test.{i}", b"x", {"Nats-Msg-Id": f"m{i}"})
                for i in range(50)]  # fmt: skip
        results = [orjson.loads(r) for r in await asyncio.gather(*acks)]
        assert [r["seq"] for r in results] == list(range(1, 51))
        again = await (await publisher.publish("enricher-pub-test.0", b"x", {"Nats-Msg-Id": "m0"}))
        assert orjson.loads(again).get("duplicate") is True
        with pytest.raises(PublishError, match="no stream"):
            await (await publisher.publish("nowhere.at.all", b"x", {}))
        with pytest.raises(PublishError, match="error"):
            await (await publisher.publish("enricher-pub-test.big", b"x" * 2000, {}))
        assert not publisher._pending  # every answered future is forgotten
    finally:
        await publisher.close()
        await js.delete_stream("ENRICHER_PUB_TEST")


async def test_atomic_batches_store_all_or_nothing(clean_nc: NATS) -> None:
    js = clean_nc.jetstream()
    await js.add_stream(StreamConfig(name="ENRICHER_ATOMIC_TEST", subjects=["enricher-atomic.>"],
                                     allow_atomic=True))  # fmt: skip
    await js.add_stream(StreamConfig(name="ENRICHER_PLAIN_TEST", subjects=["enricher-plain.>"]))
    publisher = AckedPublisher(clean_nc)
    await publisher.start()
    try:
        batch = [(f"enricher-atomic.{i % 7}", b"r%d\n" % i, {"Nats-Msg-Id": f"a{i}"})
                 for i in range(30)]  # fmt: skip
        ack = orjson.loads(await (await publisher.publish_atomic(batch)))
        assert (ack["seq"], ack["count"]) == (30, 30)
        # one message id already stored: the whole batch is refused, nothing doubled
        again = [*batch[25:], ("enricher-atomic.x", b"new\n", {"Nats-Msg-Id": "fresh"})]
        with pytest.raises(PublishError) as refused:
            await (await publisher.publish_atomic(again))
        assert refused.value.code == ATOMIC_DUPLICATE
        assert (await js.stream_info("ENRICHER_ATOMIC_TEST")).state.messages == 30
        with pytest.raises(PublishError) as disabled:
            await (await publisher.publish_atomic([("enricher-plain.a", b"x\n", {})]))
        assert disabled.value.code == ATOMIC_DISABLED
        assert (await js.stream_info("ENRICHER_PLAIN_TEST")).state.messages == 0
        for size in (0, ATOMIC_MAX + 1):
            with pytest.raises(ValueError):
                await publisher.publish_atomic(batch[:1] * size)
        assert not publisher._pending
    finally:
        await publisher.close()
        await js.delete_stream("ENRICHER_ATOMIC_TEST")
        await js.delete_stream("ENRICHER_PLAIN_TEST")


def _raw_message(nc: NATS, sequence: int, delivered: int = 1, stored_ns: int = 1700000000) -> Msg:
    """A work message as a pull consumer delivers it (its reply subject carries the
    raw stream sequence and stored time the output's message ids are derived from, and
    how many times it was delivered)."""
    reply = (f"$JS.ACK.{subjects.STREAM_RAW}.enricher-flows.{delivered}.{sequence}.{sequence}"
             f".{stored_ns}.0")  # fmt: skip
    return Msg(_client=nc, subject=subjects.raw_flows("n1"), reply=reply, data=b"")


def _raw_id(sequence: int) -> str:
    """The raw message id of ``_raw_message(nc, sequence)``."""
    return raw_message_id(_raw_message(NATS(), sequence).metadata)


async def _pipeline(nc: NATS, atomic: bool, local: frozenset[str] = frozenset()) -> Pipeline:
    """A started pipeline over fresh output streams, with or without atomic batches, its
    enricher in local mode (``local``: this machine's addresses)."""
    js = nc.jetstream()
    if atomic:
        await messaging.ensure_streams(js, NatsSettings(url=nc.connected_url.geturl()))
    else:
        for spec in subjects.STREAMS:
            await js.add_stream(StreamConfig(name=spec.name, subjects=list(spec.subjects)))
    enricher = Enricher(LocalResolver(local), SocketTable(10, 1), NameCache(1, 2, 10),
                        Observers(1))  # fmt: skip
    pipeline = Pipeline(nc, enricher, Metrics.create(CollectorRegistry()))
    await pipeline.publisher.start()
    assert await pipeline.use_atomic() is atomic
    return pipeline


async def test_pipeline_publishes_a_redelivered_batch_exactly_once() -> None:
    """The output of one raw batch, published again after part or all of it was stored
    (a crash between publishing and acking), ends up stored exactly once."""
    server = nats_server.start()
    nc = await nats.connect(server.url)
    try:
        js = nc.jetstream()
        pipeline = await _pipeline(nc, atomic=True)
        pipeline.max_bytes = 2048  # several chunks per subject
        output = Output(by_subject={
            subjects.flows(f"ns{i}", "_external"): [{"flow.n": i, "pad": "x" * 500}] * (i + 1)
            for i in range(12)
        })  # fmt: skip
        expected = len(pipeline._messages(codec.FLOW, output, _raw_id(5)))
        # an earlier attempt stored a few of the messages one by one, then crashed
        for subject, body, headers in pipeline._messages(codec.FLOW, output, _raw_id(5))[:3]:
            await (await pipeline.publisher.publish(subject, body, headers))
        for _ in range(2):  # redelivered, then redelivered again after everything is stored
            assert await pipeline._publish(codec.FLOW, output, _raw_message(nc, 5))
            info = await js.stream_info(subjects.STREAM_FLOWS)
            assert info.state.messages == expected
        assert await pipeline._publish(codec.FLOW, output, _raw_message(nc, 6))  # atomic
        assert (await js.stream_info(subjects.STREAM_FLOWS)).state.messages == 2 * expected
        records = 0
        sub = await js.pull_subscribe(subjects.FLOWS_ALL, "count", stream=subjects.STREAM_FLOWS)
        for msg in await sub.fetch(2 * expected, timeout=5):
            records += len(codec.decode(codec.FLOW, msg.headers, msg.data))
        assert records == 2 * sum(i + 1 for i in range(12))
        await pipeline.publisher.close()
    finally:
        await nc.close()
        server.close()


def _oriented(shape: str, client_first: bool) -> Output:
    """One raw batch's output as two replicas can make it: a flow the replica with the
    client's connect event orients ``shop`` → ``data`` and a replica without it the
    other way (another subject), next to records both orient alike."""
    flow = {"flow.n": 1, "source.port": 40000 if client_first else 5432}
    pair = ("shop", "data") if client_first else ("data", "shop")
    records = {subjects.flows(*pair): [flow],
               **{subjects.flows("web", f"api{i}"): [{"flow.n": 2 + i}] for i in range(3)}}  # fmt: skip
    if shape == "records":
        return Output(by_subject=records)
    return Output(lines={s: [orjson.dumps(r) + b"\n" for r in rs] for s, rs in records.items()})


async def _stored(js: JetStreamContext) -> list[tuple[str, str]]:
    """(subject, Nats-Msg-Id) of every message in the flows stream, in stream order."""
    count = (await js.stream_info(subjects.STREAM_FLOWS)).state.messages
    got = [await js.get_msg(subjects.STREAM_FLOWS, seq) for seq in range(1, count + 1)]
    return [(m.subject or "", (m.headers or {}).get("Nats-Msg-Id", "")) for m in got]


@pytest.mark.parametrize(
    ("shape", "atomic", "delivered"),
    [
        ("lines", True, 1),
        ("lines", True, 2),
        ("records", True, 1),
        ("records", True, 2),
        ("records", False, 2),
    ],
)
async def test_a_batch_enriched_otherwise_after_a_crash_is_stored_once(
    shape: str, atomic: bool, delivered: int
) -> None:
    """A replica stores a raw batch's output and dies before acking; the replica it is
    redelivered to lacks the client's connect event (older than its replay) and puts a
    flow under another subject. Its output is not stored again: the raw batch's marker
    (the last message's id) says the first one stored it all. (``delivered`` 1: as if
    this replica did not know; the atomic batch is refused for the marker.)"""
    server = nats_server.start()
    nc = await nats.connect(server.url)
    try:
        js = nc.jetstream()
        pipeline = await _pipeline(nc, atomic)
        assert await pipeline._publish(codec.FLOW, _oriented(shape, True), _raw_message(nc, 9))
        first = await _stored(js)
        assert len(first) == 4 and first[-1][1] == f"enricher:flow:{_raw_id(9)}:done"
        again = _raw_message(nc, 9, delivered)
        assert await pipeline._publish(codec.FLOW, _oriented(shape, False), again)
        assert await _stored(js) == first  # nothing more: not data.shop next to shop.data
        # another raw batch's output is stored in full, its marker last
        assert await pipeline._publish(codec.FLOW, _oriented(shape, False), _raw_message(nc, 10))
        stored = await _stored(js)
        assert len(stored) == 8 and stored[-1][1] == f"enricher:flow:{_raw_id(10)}:done"
        assert subjects.flows("data", "shop") in {subject for subject, _ in stored[4:]}
        await pipeline.publisher.close()
    finally:
        await nc.close()
        server.close()


async def test_whether_a_marker_is_stored_is_asked_without_storing(clean_nc: NATS) -> None:
    """``AckedPublisher.stored``: true for an id stored (one by one or in an atomic
    batch), false for one not stored, and the stream holds nothing more for asking —
    the order of nats-server's checks (duplicate id before ``Nats-Expected-Last-Msg-Id``)
    the pipeline's exactly-once relies on. A core subscriber of the subject asked on
    receives each question as a batch of no records of the schema given."""
    js = clean_nc.jetstream()
    stream, prefix = "ASKED", "enricher-asked"
    await js.add_stream(StreamConfig(name=stream, subjects=[f"{prefix}.>"], allow_atomic=True))
    publisher = AckedPublisher(clean_nc)
    await publisher.start()
    questions: list[list] = []

    async def heard(msg: Msg) -> None:
        try:
            questions.append(codec.decode(codec.FLOW, msg.headers, msg.data))
        except codec.CodecError as e:
            questions.append([str(e)])

    sub = await clean_nc.subscribe(f"{prefix}.z", cb=heard)
    try:
        await (await publisher.publish(f"{prefix}.a", b"1\n", {"Nats-Msg-Id": "one"}))
        await (await publisher.publish_atomic(
            [(f"{prefix}.b", b"2\n", {"Nats-Msg-Id": "two"}),
             (f"{prefix}.c", b"3\n", {"Nats-Msg-Id": "three"})]
        ))  # fmt: skip
        for msg_id, stored in [("one", True), ("three", True), ("two", True), ("four", False)]:
            assert await publisher.stored(f"{prefix}.z", msg_id, codec.FLOW.header) is stored
        assert await publisher.stored(f"{prefix}.z", "four", codec.FLOW.header) is False
        assert (await js.stream_info(stream)).state.messages == 3
        await clean_nc.flush()
        for _ in range(500):  # delivered before their answers; bounded all the same
            if len(questions) == 5:
                break
            await asyncio.sleep(0.01)
        assert questions == [[]] * 5
    finally:
        await sub.unsubscribe()
        await publisher.close()
        await js.delete_stream(stream)


async def test_a_raw_stream_made_again_does_not_take_a_stored_batchs_ids() -> None:
    """The raw stream deleted and made again: its sequences restart at 1 while the
    enriched stream still remembers the ids of what it stored (its duplicate window). A
    new raw batch with an old one's sequence has another stored time: its output is
    stored, not refused as a duplicate (nor skipped for the old one's marker)."""
    server = nats_server.start()
    nc = await nats.connect(server.url)
    try:
        js = nc.jetstream()
        pipeline = await _pipeline(nc, atomic=True)
        assert await pipeline._publish(codec.FLOW, _oriented("records", True), _raw_message(nc, 1))
        assert len(await _stored(js)) == 4
        made_again = _raw_message(nc, 1, stored_ns=1800000000000)
        assert await pipeline._publish(codec.FLOW, _oriented("records", True), made_again)
        assert len(await _stored(js)) == 8
        redelivered = _raw_message(nc, 1, delivered=2, stored_ns=1800000000000)
        assert await pipeline._publish(codec.FLOW, _oriented("records", True), redelivered)
        assert len(await _stored(js)) == 8
        await pipeline.publisher.close()
    finally:
        await nc.close()
        server.close()


async def test_a_stream_that_stores_the_question_turns_the_marker_off() -> None:
    """Should the stream ever store the question (here: its last message has the id
    the question expects, which only this test gives a message), the pipeline stops
    relying on the marker and the raw batch is published again, whole, ids by subject."""
    server = nats_server.start()
    nc = await nats.connect(server.url)
    try:
        js = nc.jetstream()
        pipeline = await _pipeline(nc, atomic=True)
        given = subjects.flows("x", "y")
        await (await pipeline.publisher.publish(given, b"{}\n", {"Nats-Msg-Id": NO_SUCH_ID}))
        assert not await pipeline._publish(codec.FLOW, _oriented("records", True),
                                           _raw_message(nc, 3, delivered=2))  # fmt: skip
        assert pipeline.markers is False
        assert await pipeline._publish(codec.FLOW, _oriented("records", True),
                                       _raw_message(nc, 3, delivered=3))  # fmt: skip
        ids = [msg_id for _, msg_id in await _stored(js)]
        assert ids[2:] == [f"enricher:flow:{_raw_id(3)}:{subject}:0" for subject in
                           _oriented("records", True).by_subject]  # fmt: skip
        await pipeline.publisher.close()
    finally:
        await nc.close()
        server.close()


async def test_a_refused_atomic_batch_is_published_one_by_one() -> None:
    """A stream refuses a new atomic batch while 50 others are open on it (many replicas
    publishing at once); the pipeline then publishes that output message by message."""
    server = nats_server.start()
    nc = await nats.connect(server.url)
    try:
        js = nc.jetstream()
        pipeline = await _pipeline(nc, atomic=True)
        for n in range(50):  # batches started and never committed (abandoned after 10 s)
            headers = {"Nats-Batch-Id": f"open{n}", "Nats-Batch-Sequence": "1"}
            await nc.publish(subjects.flows("other", "x"), b"{}\n", headers=headers)
        probe = [(subjects.flows("a", "probe"), b"{}\n", {})]
        with pytest.raises(PublishError) as refused:  # the stream refuses atomic batches now
            await (await pipeline.publisher.publish_atomic(probe))
        assert refused.value.code not in (0, ATOMIC_DISABLED, ATOMIC_DUPLICATE)
        output = Output(by_subject={subjects.flows("a", f"b{i}"): [{"n": i}] for i in range(5)})
        assert await pipeline._publish(codec.FLOW, output, _raw_message(nc, 1))
        assert (await js.stream_info(subjects.STREAM_FLOWS)).state.messages == 5
        assert pipeline.atomic_after == 0.0  # still on: the stream does allow them
        await pipeline.publisher.close()
    finally:
        await nc.close()
        server.close()


async def test_streams_without_atomic_batches_get_one_ack_per_message() -> None:
    """An output stream that does not allow atomic batches (as on servers before 2.12,
    which do not know the setting) is published to message by message."""
    server = nats_server.start()
    nc = await nats.connect(server.url)
    try:
        js = nc.jetstream()
        pipeline = await _pipeline(nc, atomic=False)
        output = Output(by_subject={subjects.flows("a", "b"): [{"flow.n": 1}]})
        assert await pipeline._publish(codec.FLOW, output, _raw_message(nc, 1))
        # a replica that believes they are allowed (the stream was changed since its
        # start): the refusal is published one by one, and atomic batches turned off
        pipeline.atomic_after = 0.0
        assert await pipeline._publish(codec.FLOW, output, _raw_message(nc, 2))
        assert pipeline.atomic_after > 0.0  # refused: atomic batches off for a while
        assert (await js.stream_info(subjects.STREAM_FLOWS)).state.messages == 2
        await pipeline.publisher.close()
    finally:
        await nc.close()
        server.close()


class WireTap:
    """A subscriber speaking the NATS protocol over a plain socket: it keeps every
    delivered message exactly as the server relays it (``HMSG`` line, header block and
    payload bytes), which nats-py's parser would not show."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, server: NatsServer, subject: str) -> WireTap:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        await reader.readline()  # INFO
        writer.write(b'CONNECT {"verbose":false,"headers":true,"protocol":1}\r\n'
                     b"SUB %s 1\r\nPING\r\n" % subject.encode())  # fmt: skip
        while await reader.readline() != b"PONG\r\n":  # an INFO update may come first
            pass
        return cls(reader, writer)

    async def frames(self, n: int) -> list[bytes]:
        """The next ``n`` messages, each its HMSG line with the sid dropped + its bytes."""
        out: list[bytes] = []
        while len(out) < n:
            line = await asyncio.wait_for(self.reader.readline(), 10)
            if line == b"PING\r\n":
                self.writer.write(b"PONG\r\n")
            if not line.startswith(b"HMSG "):
                continue  # PING, INFO
            op, subject, _sid, *rest = line.split()
            assert op == b"HMSG", line
            data = await self.reader.readexactly(int(rest[-1]) + 2)
            out.append(b" ".join([subject, *rest]) + b"\n" + data)
        return out

    def close(self) -> None:
        self.writer.close()


def _wire_batch(prefix: str) -> list[Message]:
    """A raw batch's output as the pipeline builds it, plus the odd shapes it can take."""
    batch: list[Message] = [
        (f"{prefix}.ns{i}.ns{i % 3}", b'{"flow.n":%d}\n' % i * (i + 1),
         {"Flowscope-Schema": "flow/1", "Flowscope-Count": str(i + 1),
          "Nats-Msg-Id": f"enricher:flow:7:{prefix}.ns{i}.ns{i % 3}:0"})
        for i in range(40)
    ]  # fmt: skip
    batch.append((f"{prefix}.ünï.cödé", '{"é":"ü"}\n'.encode(), {"Nats-Msg-Id": "ü:é", "K": ""}))
    batch.append((f"{prefix}.empty.body", b"", {}))
    return batch


def _normalised(frame: bytes, *inboxes: str) -> bytes:
    """A frame with its batch id and reply subject replaced (random per publisher)."""
    frame = re.sub(rb"Nats-Batch-Id: [0-9a-f]{32}", b"Nats-Batch-Id: B", frame)
    for inbox in inboxes:  # (and the reply's token: a fallback takes a fresh one)
        frame = re.sub(re.escape(inbox.encode()) + rb"\.\d+", b"INBOX", frame)
    return frame


async def test_encoded_messages_are_the_bytes_nats_py_publish_writes(nats_srv: NatsServer) -> None:
    """The same messages from both publishers, as an atomic batch and one ack each, as
    the server relays them to a subscriber: identical bytes — encoded ones, and ones
    the encoder leaves to ``publish`` (a header value nats-py would strip)."""
    tap = await WireTap.open(nats_srv, "enricher-wire.>")
    nc = await nats.connect(nats_srv.url)
    encoded, plain = AckedPublisher(nc), AckedPublisher(nc, encode=False)

    async def publish(publisher: AckedPublisher, messages: list[Message], atomic: bool) -> None:
        # no stream: the tap is the only responder, and stays silent
        if atomic:
            (await publisher.publish_atomic(messages)).cancel()
        else:
            cancel_all(list(await publisher.publish_each(messages)))

    try:
        await encoded.start()
        await plain.start()
        batch = _wire_batch("enricher-wire")
        replies = ["r"] * len(batch)
        assert encode(batch, replies, "b", nc.max_payload) is not None  # the new path
        assert encode(batch, replies, None, nc.max_payload) is not None
        left = [*batch[:3], ("enricher-wire.x", b"{}\n", {"K": "padded "})]
        assert encode(left, replies[:4], "b", nc.max_payload) is None  # left to publish
        for messages, atomic in ((batch, True), (batch, False), (left, True), (left, False)):
            frames = []
            for publisher in (encoded, plain):
                await publish(publisher, messages, atomic)
                frames.append(await tap.frames(len(messages)))
            inboxes = (encoded._prefix, plain._prefix)
            ours, theirs = ([_normalised(f, *inboxes) for f in fs] for fs in frames)
            assert ours == theirs
            assert all(b"INBOX" in f for f in (ours if not atomic else ours[-1:]))
            assert (b"Nats-Batch-Commit: 1" in ours[-1]) is atomic
        assert b"padded \r\n" not in ours[-1]  # nats-py stripped it, as always
    finally:
        tap.close()
        await encoded.close()
        await plain.close()
        await nc.close()


async def test_a_large_write_arrives_whole_after_what_nats_py_had_pending(
    nats_srv: NatsServer,
) -> None:
    """Encoded messages go to the socket's transport directly: a batch larger than the
    socket takes in one ``send`` (asyncio keeps the rest) arrives whole, after a command
    nats-py still had pending, byte for byte as nats-py's ``publish`` sends it."""
    tap = await WireTap.open(nats_srv, "enricher-big.>")
    nc = await nats.connect(nats_srv.url)
    encoded, plain = AckedPublisher(nc), AckedPublisher(nc, encode=False)
    batch: list[Message] = [
        (f"enricher-big.{i}", bytes([65 + i]) * 900_000 + b"\n", {"Nats-Msg-Id": f"big{i}"})
        for i in range(12)
    ]  # ~10.8 MB: more than the socket's send buffer (4 MB at most by default)
    try:
        await encoded.start()
        await plain.start()
        frames = []
        for publisher in (encoded, plain):
            await nc.publish("enricher-big.before", b"queued first", headers={"K": "v"})
            assert nc.pending_data_size > 0  # still with nats-py: its flusher has not run
            (await publisher.publish_atomic(batch)).cancel()
            frames.append(await tap.frames(len(batch) + 1))
        ours, theirs = ([_normalised(f, encoded._prefix, plain._prefix) for f in fs]
                        for fs in frames)  # fmt: skip
        assert ours == theirs
        assert ours[0].endswith(b"queued first\r\n")
        assert [f.rsplit(b"\r\n\r\n", 1)[1] for f in ours[1:]] == [
            body + b"\r\n" for _, body, _ in batch
        ]
    finally:
        tap.close()
        await encoded.close()
        await plain.close()
        await nc.close()


async def test_rendered_lines_are_sent_from_where_they_lie() -> None:
    """A raw batch's lines as the compiled core rendered them (a ``_flowcore.Lines``)
    are gathered, not joined, and sent straight to the socket; what its (small) send
    buffer does not take goes through asyncio's transport. After a command nats-py had
    pending, or with the transport already holding bytes (then all of it goes through
    the transport), the server relays exactly the bytes of the same lines framed as one
    buffer (``frame_lines``: the bytes nats-py's ``publish`` writes, test_messages.py)."""
    server = nats_server.start()
    tap = await WireTap.open(server, "flowscope.flows.>")
    nc = await nats.connect(server.url)
    sock_transport = nc._transport._io_writer.transport
    sock_transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16_384)
    publisher = AckedPublisher(nc)
    enricher = Enricher(LocalResolver(frozenset({"10.0.0.1", "10.0.0.2"})), SocketTable(10, 1),
                        NameCache(1, 2, 10), Observers(1))  # fmt: skip
    records = [{"observer": "n1", "start_ns": 1, "end_ns": 2, "end_reason": "active_timeout",
                "proto": 6, "src": f"10.0.{i % 4}.{i % 3 + 1}", "dst": f"10.0.{i % 3}.{i % 5 + 1}",
                "sport": 10_000 + i, "dport": 443, "bytes": 100 * i, "packets": i, "rbytes": 7,
                "rpackets": 1, "tcp_flags": 0x1B} for i in range(1500)]  # fmt: skip
    raw = codec.encode(codec.RAW_FLOW, records)
    lines = enricher.flow_batch(raw.headers, raw.body).rendered
    assert isinstance(lines, _flowcore.Lines) and len(lines) > 1
    args = (codec.FLOW.header, "enricher:flow:9:", "done", 1 << 20)
    texts = (codec.FLOW.header, "enricher:flow:9:", "done", "b" * 32, "_INBOX.x.1", 1 << 20)
    size = len(frame_lines(lines, *texts)[0])
    assert size > 500_000  # far more than the socket's send buffer
    big: list[Message] = [(f"flowscope.flows.big.{i}", b"x" * 900_000 + b"\n", {})
                          for i in range(12)]  # fmt: skip
    try:
        await publisher.start()
        # the helper alone: part of the frame straight to the socket, the rest after it
        frame = gather_lines(lines, *texts)[0]
        _send_frame(nc._transport, frame)
        assert 0 < size - len(frame) < size
        nc._transport.write(frame.rest())
        helper = [_normalised(f, "_INBOX.x") for f in await tap.frames(len(lines))]
        received = []
        for case in ("direct", "pending", "buffered", "joined"):
            if case == "pending":
                await nc.publish("flowscope.flows.x.before", b"queued first", headers={"K": "v"})
                assert nc.pending_data_size > 0
            if case == "buffered":  # ~10.8 MB just written: asyncio holds most of it
                (await publisher.publish_atomic(big)).cancel()
            future = await publisher.publish_lines_atomic(
                lines.lines() if case == "joined" else lines, *args
            )
            assert future is not None
            future.cancel()
            ahead = {"direct": 0, "pending": 1, "buffered": len(big), "joined": 0}[case]
            frames = await tap.frames(ahead + len(lines))
            if case == "pending":
                assert frames[0].endswith(b"queued first\r\n")
            received.append([_normalised(f, publisher._prefix) for f in frames[ahead:]])
        direct, pending, buffered, joined = received
        assert direct == pending == buffered == joined
        assert [f.split(b" ", 1)[0].decode() for f in joined] == list(lines.subjects)
        assert helper == joined
        assert b"".join(f.rsplit(b"\r\n\r\n", 1)[1][:-2] for f in joined) == b"".join(
            b"".join(ls) for ls in lines.lines().values()
        )
    finally:
        tap.close()
        await publisher.close()
        await nc.close()
        server.close()


async def test_encoded_messages_are_stored_as_nats_py_publish_stores_them(clean_nc: NATS) -> None:
    """Stored messages (subject, raw header block, body) from both publishers, as an
    atomic batch and one ack each, are equal but for the batch id; duplicates are
    refused (atomic) or dropped (one ack each) alike."""
    js = clean_nc.jetstream()
    stored: dict[tuple[bool, bool], list[tuple[str, bytes, bytes]]] = {}
    cases = [(encoded, atomic) for encoded in (True, False) for atomic in (True, False)]
    for n, (encoded, atomic) in enumerate(cases):
        # each case its own stream, subjects and message ids: nothing one case stored
        # (or the server still holds of it) can be taken for a duplicate in the next
        stream, prefix = f"ENRICHER_WIRE_TEST_{n}", f"enricher-store{n}"
        publisher = AckedPublisher(clean_nc, encode=encoded)
        await js.add_stream(StreamConfig(name=stream, subjects=[f"{prefix}.>"], allow_atomic=True))
        await publisher.start()
        try:
            stored[encoded, atomic] = await _publish_and_read(js, publisher, atomic, stream, prefix)
        except PublishError as e:
            raise AssertionError(f"encoded={encoded} atomic={atomic}: {e}") from e
        finally:
            await publisher.close()
            await js.delete_stream(stream)
    for atomic in (True, False):
        assert stored[True, atomic] == stored[False, atomic]
        assert [data for _, _, data in stored[True, atomic]] == [
            body for _, body, _ in _wire_batch("x")
        ]
        assert [subject for subject, _, _ in stored[True, atomic]] == [
            subject for subject, _, _ in _wire_batch("P")
        ]
    assert b"Nats-Batch-Id: B" in stored[True, True][0][1]
    assert b"Nats-Batch" not in stored[True, False][0][1]


async def _publish_and_read(
    js: JetStreamContext, publisher: AckedPublisher, atomic: bool, stream: str, prefix: str
) -> list[tuple[str, bytes, bytes]]:
    """Publish the wire batch under ``prefix``, then part of it again; (subject, header
    block, body) of every message stored in ``stream``, the prefix written ``P``."""
    batch = _wire_batch(prefix)
    if atomic:
        ack = orjson.loads(await (await publisher.publish_atomic(batch)))
        assert (ack["seq"], ack["count"]) == (len(batch), len(batch))
        with pytest.raises(PublishError) as refused:
            await (await publisher.publish_atomic(batch[5:9]))
        assert refused.value.code == ATOMIC_DUPLICATE
    else:
        acks = [orjson.loads(a) for a in await asyncio.gather(*await publisher.publish_each(batch))]
        assert [a["seq"] for a in acks] == list(range(1, len(batch) + 1))
        again = await asyncio.gather(*await publisher.publish_each(batch[5:9]))
        assert all(orjson.loads(a)["duplicate"] for a in again)
    assert (await js.stream_info(stream)).state.messages == len(batch)
    messages = []
    for seq in range(1, len(batch) + 1):
        got = await js.get_msg(stream, seq)
        block = base64.b64decode(got.hdrs or "")  # the stored header block, raw
        block = _normalised(block).replace(prefix.encode() + b".", b"P.")
        subject = (got.subject or "").replace(prefix + ".", "P.", 1)
        messages.append((subject, block, got.data or b""))
    return messages
