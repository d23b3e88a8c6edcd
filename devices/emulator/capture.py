"""Capture files: what crosses the broker, one JSON line per message, to record and replay.

    {"topic":"osteotel/v1/HUB-001/DX-0001/telemetry","t_ns":1700000000000000000,"qos":1,"retain":false,"payload":{...}}
    {"topic":"osteotel/v1/HUB-002/DX-0002/telemetry","t_ns":1700000000010000000,"qos":1,"retain":false,"payload_b64":"T1RGMQEA..."}

The header keys come first, in this order, compact; the payload key is last. `payload` holds the
original bytes verbatim when they are a strict JSON object in UTF-8 on one line; every other
payload (binary, NaN/Infinity, a BOM, a newline, not an object) is base64 in `payload_b64`.
Because the payload is never re-serialised, a replayed payload is byte-identical to the recorded
one. A path ending in `.gz` is gzip (mtime 0, no file name, so equal content gives equal bytes).
The format is specified in docs/capture.md.
"""

import asyncio
import base64
import contextlib
import gzip
import heapq
import io
import itertools
import json
import re
import time
from collections.abc import Collection, Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Final, Self

import aiomqtt
from paho.mqtt.subscribeoptions import SubscribeOptions

from devices.codec import encode_event, encode_frame_binary, encode_frame_json, encode_status
from devices.contract import (
    SUBSCRIPTIONS,
    HubStatus,
    events_topic,
    status_topic,
    telemetry_topic,
)
from devices.emulator.fastpub import DEFAULT_WINDOW, FastPublisher, PublishError
from devices.emulator.fleet import FleetPlan, bad_payloads, hub_stream
from osteotel.errors import OsteotelError
from osteotel.settings import MqttSettings

__all__ = [
    "REPLAY_WINDOW",
    "CaptureError",
    "CaptureWriter",
    "CapturedMessage",
    "capture_fleet",
    "capture_line",
    "read_capture",
    "record",
    "replay",
]

REPLAY_WINDOW: Final = DEFAULT_WINDOW
"""Publishes replay keeps in flight (sent, not yet acknowledged) before it waits for room."""

_BUFFER_BYTES: Final = 1 << 20
_GZIP_LEVEL: Final = 6  # level 9 costs about three times the CPU for a few percent less size
_PAYLOAD_KEY: Final = b',"payload'
_RAW_PREFIX: Final = b'"payload":'
_B64_PREFIX: Final = b'"payload_b64":"'
_HEADER_KEYS: Final = ("topic", "t_ns", "qos", "retain")
_PLAIN_HEADER: Final = re.compile(
    rb'\{"topic":"([^"\\]*)","t_ns":(-?[0-9]+),"qos":([012]),"retain":(true|false),"payload'
)
_CONNECT_TIMEOUT_S: Final = 10.0
_ACK_TIMEOUT_S: Final = 30.0  # every in-flight publish must be acknowledged within this
_REPLAY_BATCH: Final = 1_000  # messages read per worker-thread hop
_MAX_WINDOW: Final = 65_535  # MQTT packet ids are 16 bits
_RECORD_QUEUE: Final = 10_000  # messages between the MQTT receiver and the file writer
_RECORD_BATCH: Final = 1_000


class CaptureError(OsteotelError):
    """A capture could not be read, recorded or replayed.

    Attributes:
        line: the 1-based line of the capture file at fault, when a line is.
    """

    def __init__(self, message: str, *, line: int | None = None) -> None:
        super().__init__(message if line is None else f"line {line}: {message}")
        self.line = line


@dataclass(frozen=True, slots=True)
class CapturedMessage:
    """One message of a capture.

    Attributes:
        topic: the MQTT topic.
        payload: the payload bytes, exactly as published.
        t_ns: receive time (record) or simulated publish time (emulate), UTC epoch ns.
        qos: the MQTT QoS it was delivered (record) or published (emulate) with.
        retain: whether it was published retained.
    """

    topic: str
    payload: bytes
    t_ns: int
    qos: int = 1
    retain: bool = False


def _refuse_constant(name: str) -> object:
    # NaN and Infinity are Python extensions, not JSON: such a payload goes to base64.
    raise ValueError(f"{name} is not JSON")


def _is_verbatim_json(payload: bytes) -> bool:
    """Tell whether `payload` can sit in a capture line as it is: a strict JSON object, one line."""
    if b"\n" in payload or b"\r" in payload:
        return False
    try:
        value = json.loads(payload.decode("utf-8"), parse_constant=_refuse_constant)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return False
    return isinstance(value, dict)


def capture_line(
    topic: str,
    payload: bytes,
    t_ns: int,
    qos: int,
    retain: bool,
    *,
    strict_json_object: bool | None = None,
) -> bytes:
    """One message as a capture line (docs/capture.md), its final newline included.

    Args:
        topic, payload, t_ns, qos, retain: the message (see `CapturedMessage`).
        strict_json_object: True when the caller knows the payload is a strict JSON object in
            UTF-8 (it parsed it so: ingest's accepted JSON frames), sparing the parse here;
            False for a payload that is not; None to find out. Either way a payload holding
            a line break goes to base64.
    """
    header = (
        f'{{"topic":{json.dumps(topic)},"t_ns":{t_ns:d},"qos":{qos:d},'
        f'"retain":{"true" if retain else "false"}'
    ).encode()
    if strict_json_object is None:
        verbatim = _is_verbatim_json(payload)
    else:
        verbatim = strict_json_object and b"\n" not in payload and b"\r" not in payload
    if verbatim:
        return b"".join((header, b",", _RAW_PREFIX, payload, b"}\n"))
    return b"".join((header, b",", _B64_PREFIX, base64.b64encode(payload), b'"}\n'))


class CaptureWriter:
    """Writes a capture file, as a context manager; a path ending in `.gz` is gzip-compressed.

    Args:
        path: the file to create (replaced if it exists).
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.count = 0
        self._raw: IO[bytes] | None = None
        self._out: IO[bytes] | None = None

    def __enter__(self) -> Self:
        self._raw = self.path.open("wb", buffering=_BUFFER_BYTES)
        if self.path.suffix == ".gz":
            # No name and mtime 0 in the gzip header: the same messages give the same bytes.
            gz = gzip.GzipFile(
                filename="", mode="wb", fileobj=self._raw, compresslevel=_GZIP_LEVEL, mtime=0
            )
            self._out = io.BufferedWriter(gz, _BUFFER_BYTES)
        else:
            self._out = self._raw
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if self._out is not None and self._out is not self._raw:
                self._out.close()  # flushes and writes the gzip trailer
        finally:
            if self._raw is not None:
                self._raw.close()
            self._out = self._raw = None

    def write(
        self, topic: str, payload: bytes, *, t_ns: int, qos: int = 1, retain: bool = False
    ) -> None:
        """Append one message.

        Args:
            topic: the MQTT topic.
            payload: the payload bytes.
            t_ns: receive or publish time, UTC epoch ns.
            qos: MQTT QoS, 0, 1 or 2.
            retain: whether the message is retained.

        Raises:
            ValueError: `qos` is not 0, 1 or 2.
        """
        if self._out is None:
            raise RuntimeError("CaptureWriter.write outside its `with` block")
        if qos not in (0, 1, 2):
            raise ValueError(f"qos is {qos!r}, must be 0, 1 or 2")
        self._out.write(capture_line(topic, payload, int(t_ns), qos, bool(retain)))
        self.count += 1

    def write_many(self, messages: Iterable[CapturedMessage]) -> None:
        """Append messages in order (see `write`)."""
        for message in messages:
            self.write(
                message.topic,
                message.payload,
                t_ns=message.t_ns,
                qos=message.qos,
                retain=message.retain,
            )


def _parse_line(line: bytes, number: int) -> CapturedMessage:
    if not line.endswith(b"}"):
        raise CaptureError("a line must be one JSON object ending in '}'", line=number)
    fast = _PLAIN_HEADER.match(line)
    if fast is not None:
        # The common case (a topic with no escapes) costs half of json.loads on the header.
        topic_b, t_ns_b, qos_b, retain_b = fast.groups()
        topic, t_ns, qos, retain = topic_b.decode(), int(t_ns_b), int(qos_b), retain_b == b"true"
        payload = _payload(line[fast.end() - len(_PAYLOAD_KEY) + 1 :], number)
        return CapturedMessage(topic, payload, t_ns, qos, retain)
    # Inside the JSON-escaped topic every '"' is preceded by '\', so the first ',"payload'
    # is the payload key; the header before it is tiny and parsed with json.
    cut = line.find(_PAYLOAD_KEY)
    if cut < 0:
        raise CaptureError("no payload or payload_b64 key", line=number)
    try:
        header = json.loads(line[:cut] + b"}")
    except ValueError as exc:
        raise CaptureError(f"header is not JSON: {exc}", line=number) from None
    if not isinstance(header, dict) or tuple(header) != _HEADER_KEYS:
        raise CaptureError(f"header keys must be {list(_HEADER_KEYS)}, in order", line=number)
    topic, t_ns, qos, retain = (header[key] for key in _HEADER_KEYS)
    if (
        not isinstance(topic, str)
        or type(t_ns) is not int
        or qos not in (0, 1, 2)
        or type(qos) is not int
        or type(retain) is not bool
    ):
        raise CaptureError(f"bad header values: {header!r}", line=number)
    return CapturedMessage(topic, _payload(line[cut + 1 :], number), t_ns, qos, retain)


def _payload(rest: bytes, number: int) -> bytes:
    """The payload bytes from the end of a line, starting at its `"payload` key."""
    if rest.startswith(_RAW_PREFIX):
        return rest[len(_RAW_PREFIX) : -1]
    if rest.startswith(_B64_PREFIX) and rest.endswith(b'"}'):
        try:
            return base64.b64decode(rest[len(_B64_PREFIX) : -2], validate=True)
        except ValueError as exc:
            raise CaptureError(f"payload_b64 is not base64: {exc}", line=number) from None
    raise CaptureError("the payload key must be last, after the header", line=number)


def read_capture(path: Path, *, topics: Collection[str] | None = None) -> Iterator[CapturedMessage]:
    """Read a capture file, lazily, in file order; `.gz` files are decompressed.

    Args:
        path: the capture file.
        topics: only the messages of these topics; every other line is passed over unparsed,
            told by its start (`{"topic":"...",`, fixed by the format), and so not checked.
            None for every message.

    Yields:
        Each message, its payload byte-identical to what was written.

    Raises:
        CaptureError: a line read breaks the format (its number is in the error).
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    # Checking a line's start costs a tenth of parsing it: a reader of one device in a hub's
    # file of ten reads it several times faster.
    starts = None if topics is None else tuple(_line_start(topic) for topic in topics)
    with opener(path, "rb") as lines:
        for number, line in enumerate(lines, start=1):
            if starts is None or line.startswith(starts):
                yield _parse_line(line.rstrip(b"\n"), number)


def _line_start(topic: str) -> bytes:
    """How every line of `topic` begins."""
    return b'{"topic":' + json.dumps(topic).encode() + b","


# --- emulate --out -----------------------------------------------------------------------------


def _hub_messages(plan: FleetPlan, hub: str) -> Iterator[CapturedMessage]:
    """One hub's messages as `EmulatedHub` would publish them, stamped with simulated time."""

    def status(online: bool, t_ns: int) -> CapturedMessage:
        payload = encode_status(HubStatus(hub=hub, online=online, t_ns=t_ns))
        return CapturedMessage(status_topic(hub), payload, t_ns, 1, True)

    encode = (
        encode_frame_binary if plan.encodings.get(hub, "json") == "binary" else encode_frame_json
    )
    yield status(True, plan.start_ns)
    for item in hub_stream(plan, hub):
        if item.frame is not None:
            topic = telemetry_topic(hub, item.frame.device)
            yield CapturedMessage(topic, encode(item.frame), item.t_ns)
        elif item.event is not None:
            topic = events_topic(hub, item.event.device)
            yield CapturedMessage(topic, encode_event(item.event), item.t_ns)
        elif item.online is not None:
            yield status(item.online, item.t_ns)
    if plan.inject_bad_payloads:
        device = next(config.device for config in plan.devices if config.hub == hub)
        for _, topic, payload in bad_payloads(hub, device, plan.end_ns):
            yield CapturedMessage(topic, payload, plan.end_ns)
    yield status(False, plan.end_ns)


def _write_fleet(plan: FleetPlan, path: Path) -> int:
    streams = [_hub_messages(plan, hub) for hub in plan.hubs]
    with CaptureWriter(path) as writer:
        # heapq.merge is stable: equal times keep hub order, and each hub keeps its own order.
        writer.write_many(heapq.merge(*streams, key=lambda message: message.t_ns))
        return writer.count


async def capture_fleet(plan: FleetPlan, path: Path) -> int:
    """Write what `run_fleet(plan)` would publish to a capture file instead; no broker needed.

    Every hub's stream is encoded as `EmulatedHub` encodes it, framed by the hub's retained
    status (online at `plan.start_ns`, offline at `plan.end_ns`); `t_ns` is the simulated
    publish time and hub statuses carry it too, so one seed and end time give one file, byte
    for byte. Hubs are merged in time order. `plan.speed` is ignored.

    Args:
        plan: the fleet to emulate.
        path: the capture file to write (`.gz` for gzip).

    Returns:
        The number of messages written.
    """
    # Generating a treatment is CPU-bound numpy work: keep it off the event loop.
    return await asyncio.to_thread(_write_fleet, plan, Path(path))


# --- record ------------------------------------------------------------------------------------


def _drain(queue: "asyncio.Queue[CapturedMessage | None]") -> tuple[list[CapturedMessage], bool]:
    """Take what is queued, up to one batch; the bool says the end marker was reached."""
    batch: list[CapturedMessage] = []
    while len(batch) < _RECORD_BATCH and not queue.empty():
        message = queue.get_nowait()
        if message is None:
            return batch, True
        batch.append(message)
    return batch, False


async def _write_queue(
    writer: CaptureWriter, queue: "asyncio.Queue[CapturedMessage | None]"
) -> None:
    while True:
        first = await queue.get()
        if first is None:
            return
        batch, done = _drain(queue)
        # File writes and gzip compression are blocking: one thread hop per batch, not per line.
        await asyncio.to_thread(writer.write_many, [first, *batch])
        if done:
            return


async def record(
    mqtt: MqttSettings,
    path: Path,
    *,
    topics: Sequence[str] = SUBSCRIPTIONS,
    duration_s: float | None = None,
    max_messages: int | None = None,
    client_id: str = "osteotel-record",
    include_retained: bool = False,
    stop: asyncio.Event | None = None,
    ready: asyncio.Event | None = None,
) -> int:
    """Subscribe to `topics` and write every message received to a capture file until stopped.

    The subscription is MQTT 5, QoS 1, "retain as published" (so `retain` is what the publisher
    set) and, unless `include_retained`, without the retained messages the broker holds at
    subscription time: a capture holds traffic, not old state. `t_ns` is the receive time.

    Args:
        mqtt: broker address and credentials.
        path: the capture file to write (`.gz` for gzip).
        topics: MQTT topic filters; by default every v1 topic.
        duration_s: stop after this many seconds; None for no limit.
        max_messages: stop after this many messages; None for no limit.
        client_id: the MQTT client id (clean session).
        include_retained: also record the retained messages sent at subscription.
        stop: recording ends when this is set (the CLI sets it on SIGINT/SIGTERM).
        ready: set once the subscription is acknowledged: messages published after that are
            recorded.

    Returns:
        The number of messages written.

    Raises:
        CaptureError: the broker could not be reached or dropped the connection.
    """
    stop = stop if stop is not None else asyncio.Event()
    password = mqtt.password_text()
    client = aiomqtt.Client(
        mqtt.host,
        mqtt.port,
        username=mqtt.username,
        password=password,
        identifier=client_id,
        protocol=aiomqtt.ProtocolVersion.V5,
        keepalive=mqtt.keepalive_s,
        timeout=_CONNECT_TIMEOUT_S,
    )
    options = SubscribeOptions(
        qos=1, retainAsPublished=True, retainHandling=0 if include_retained else 2
    )
    queue: asyncio.Queue[CapturedMessage | None] = asyncio.Queue(_RECORD_QUEUE)
    received = 0

    async def receive() -> None:
        nonlocal received
        await client.subscribe([(topic, options) for topic in topics])
        if ready is not None:
            ready.set()
        async for message in client.messages:
            payload = message.payload
            if not isinstance(payload, bytes | bytearray):
                payload = str(payload).encode()  # paho always gives bytes; typed wider
            t_ns = time.time_ns()
            await queue.put(
                CapturedMessage(
                    message.topic.value, bytes(payload), t_ns, message.qos, bool(message.retain)
                )
            )
            received += 1
            if max_messages is not None and received >= max_messages:
                stop.set()
                return

    failure: BaseException | None = None
    with CaptureWriter(Path(path)) as writer:
        try:
            async with client, asyncio.TaskGroup() as tasks:
                writing = tasks.create_task(_write_queue(writer, queue), name="record.write")
                receiving = tasks.create_task(receive(), name="record.receive")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), duration_s)
                receiving.cancel()
                await queue.put(None)
                await writing
        except* aiomqtt.MqttError as group:
            # A lost connection surfaces from the task group; a refused one from `async with`.
            failure = group.exceptions[0]
        if failure is not None:
            where = f"{mqtt.host}:{mqtt.port}"
            raise CaptureError(f"recording from {where} failed: {failure}") from failure
        return writer.count


# --- replay ------------------------------------------------------------------------------------


def _take(messages: Iterator[CapturedMessage], count: int) -> list[CapturedMessage]:
    """The next `count` messages, fewer at the end of the file."""
    return list(itertools.islice(messages, count))


async def _publish_file(path: Path, publisher: FastPublisher, speed: float | None) -> int:
    """Publish every message of the capture in file order, paced when `speed` is given."""
    messages = read_capture(path)
    # Parsing and decompression run in a worker thread, one batch ahead of the publishing, so
    # they overlap the waits on the socket; the event loop never blocks on the file.
    reading = asyncio.ensure_future(asyncio.to_thread(_take, messages, _REPLAY_BATCH))
    sent = 0
    start_s = time.monotonic()
    first_ns: int | None = None
    try:
        while batch := await reading:
            reading = asyncio.ensure_future(asyncio.to_thread(_take, messages, _REPLAY_BATCH))
            for message in batch:
                if speed is not None:
                    first_ns = message.t_ns if first_ns is None else first_ns
                    due_s = start_s + (message.t_ns - first_ns) / 1e9 / speed
                    # A message already due goes at once: file order (hence device order) holds.
                    if (delay_s := due_s - time.monotonic()) > 0:
                        await asyncio.sleep(delay_s)
                await publisher.publish(
                    message.topic, message.payload, qos=message.qos, retain=message.retain
                )
                sent += 1
    finally:
        # The worker thread may still be inside the generator: let it finish before closing it.
        await asyncio.wait([reading])
        if not reading.cancelled():
            # Its error, if any, is either the one already raised or moot after another one.
            reading.exception()
        if isinstance(messages, Generator):
            messages.close()  # closes the file now, not when the generator is collected
    return sent


async def replay(
    path: Path,
    mqtt: MqttSettings,
    *,
    speed: float | None,
    client_id: str = "osteotel-replay",
    window: int = REPLAY_WINDOW,
) -> int:
    """Publish a capture's messages again, in file order, paced by their `t_ns`.

    Message i goes out `(t_ns[i] - t_ns[0]) / speed` seconds after the start, or at once if
    that moment has passed, so the file order is never changed: messages of one device (one
    topic) never overtake each other. Each is published with its recorded QoS and retain flag
    over one MQTT 3.1.1 session (`FastPublisher`), keeping up to `window` QoS 1/2 publishes
    in flight.

    Args:
        path: the capture file (`.gz` for gzip).
        mqtt: broker address and credentials.
        speed: how many times faster than recorded (1 = real time); None as fast as possible.
        client_id: the MQTT client id.
        window: most publishes awaiting their acknowledgement at once (1 = one at a time).

    Returns:
        The number of messages published (each QoS 1/2 one acknowledged by the broker).

    Raises:
        CaptureError: a malformed line, or the broker could not be reached, refused the
            session, dropped the connection or acknowledged nothing for 30 s.
        ValueError: `speed` is not positive, or `window` is not within 1..65535.
    """
    if speed is not None and not speed > 0:
        raise ValueError(f"speed is {speed!r}, must be > 0 (None for as fast as possible)")
    if not 1 <= window <= _MAX_WINDOW:
        raise ValueError(f"window is {window!r}, must be >= 1 and <= {_MAX_WINDOW}")
    publisher = FastPublisher(
        mqtt,
        client_id=client_id,
        window=window,
        connect_timeout_s=_CONNECT_TIMEOUT_S,
        ack_timeout_s=_ACK_TIMEOUT_S,
    )
    try:
        async with publisher:
            return await _publish_file(Path(path), publisher, speed)
    except PublishError as exc:
        raise CaptureError(str(exc)) from exc
