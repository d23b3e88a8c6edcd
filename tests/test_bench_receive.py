"""`osteotel bench receive` at a tiny size, and its plain-Python MQTT 5 codec against `mqtt5`."""

import argparse

import mqtt5
from hypothesis import given, settings
from hypothesis import strategies as st

from apps.bench import receive
from apps.bench.receivers import PlainCodec

RECEIVERS = ("source", "paho", "mqtt5", "plain", "mosquitto_sub")


def test_a_tiny_receive_bench_counts_every_message_for_every_receiver() -> None:
    """Three rotated runs of 1,500 messages (more than the broker's in-flight window of 1,000,
    so the count also shows the acknowledgements reached it), queued and live: every receiver
    gets exactly every message, none DUP-flagged, and spends CPU on them."""
    parser = argparse.ArgumentParser()
    receive.configure(parser)
    figures = receive.run(
        parser.parse_args(["--messages", "1500", "--repeats", "3", "--timeout-s", "30"])
    )
    assert figures["messages"] == 1500
    assert figures["repeats"] == 3
    assert figures["frame_bytes"] == 824  # a 100-sample binary frame
    for receiver in RECEIVERS:
        assert figures[f"{receiver}_messages_received"] == 4500, receiver
        assert figures[f"{receiver}_dup_messages"] == 0, receiver
        cpu_us = figures[f"{receiver}_cpu_us_per_message"]
        assert isinstance(cpu_us, float)
        assert cpu_us > 0, receiver
        rate = figures[f"{receiver}_messages_per_s"]
        assert isinstance(rate, float)
        assert rate > 0, receiver
        broker_us = figures[f"{receiver}_mosquitto_cpu_us_per_message"]
        assert isinstance(broker_us, float)
        assert broker_us >= 0, receiver  # /proc ticks of 10 ms: a tiny run may read none
    for receiver in RECEIVERS[:-1]:  # live: the Python receivers keep pace with the publisher
        assert figures[f"live_{receiver}_messages_received"] == 4500, receiver
        assert figures[f"live_{receiver}_dup_messages"] == 0, receiver
        cpu_us = figures[f"live_{receiver}_cpu_us_per_message"]
        assert isinstance(cpu_us, float)
        assert cpu_us > 0, receiver
    assert figures["source_cpu_vs_source"] == 1.0
    assert figures["source_cpu_us_saved_per_message"] == 0.0
    assert figures["live_source_cpu_us_saved_per_message"] == 0.0
    assert figures["paho_cpu_vs_paho"] == 1.0
    assert len(figures) == 3 + 9 * 5 + 4 * 4


_TOPICS = st.text(
    st.characters(codec="utf-8", exclude_characters="#+\x00", exclude_categories=("Cs", "Cc")),
    min_size=1,
    max_size=60,
)


@settings(max_examples=200, deadline=None)
@given(
    topic=_TOPICS,
    payload=st.binary(max_size=2000),
    qos=st.sampled_from([mqtt5.QoS.AT_MOST_ONCE, mqtt5.QoS.AT_LEAST_ONCE]),
    packet_id=st.integers(1, 65535),
    dup=st.booleans(),
    expiry_s=st.none() | st.integers(0, 2**32 - 1),
    user=st.lists(st.tuples(st.text(max_size=8), st.text(max_size=8)), max_size=2),
)
def test_the_plain_codec_reads_every_publish_mqtt5_writes(
    *,
    topic: str,
    payload: bytes,
    qos: mqtt5.QoS,
    packet_id: int,
    dup: bool,
    expiry_s: int | None,
    user: list[tuple[str, str]],
) -> None:
    """A PUBLISH written by `mqtt5`, properties included, reads back field for field, and
    every shorter prefix of it reads as incomplete."""
    qos1 = qos == mqtt5.QoS.AT_LEAST_ONCE
    written = mqtt5.PublishPacket(
        topic,
        payload,
        qos=qos,
        packet_id=packet_id if qos1 else None,
        duplicate=dup and qos1,  # MQTT 5, 3.3.1.1: DUP is 0 for QoS 0
        message_expiry_interval=expiry_s,
        user_properties=user,
    ).write()
    codec = PlainCodec()
    data = b"\xd0\x00" + written  # after a PINGRESP: reading starts mid-buffer
    packet, end = codec.read(data, 2)
    assert end == len(data)
    assert not isinstance(packet, tuple | None)
    assert (packet.topic, packet.payload, packet.qos) == (topic, payload, int(qos))
    assert (packet.packet_id, packet.dup) == ((packet_id, dup) if qos1 else (0, False))
    for cut in range(2, len(data)):
        assert codec.read(data[:cut], 2) == (None, 2)


def test_what_the_plain_codec_writes_mqtt5_reads_as_meant() -> None:
    """CONNECT, PUBACK, UNSUBSCRIBE and DISCONNECT from the plain codec are the packets meant."""
    codec = PlainCodec()
    connect, size = mqtt5.read(memoryview(codec.connect("bench-rx-1")))
    assert isinstance(connect, mqtt5.ConnectPacket)
    assert size == len(codec.connect("bench-rx-1"))
    assert (connect.client_id, connect.clean_start, connect.keep_alive) == ("bench-rx-1", False, 0)
    assert (connect.session_expiry_interval, connect.receive_max) == (3600, 1000)
    puback, _ = mqtt5.read(memoryview(codec.puback(513)))
    assert isinstance(puback, mqtt5.PubAckPacket)
    assert (puback.packet_id, puback.reason_code) == (513, mqtt5.PubAckReasonCode.SUCCESS)
    unsubscribe, _ = mqtt5.read(memoryview(codec.unsubscribe(7, "a/b")))
    assert isinstance(unsubscribe, mqtt5.UnsubscribePacket)
    assert (unsubscribe.packet_id, unsubscribe.patterns) == (7, ["a/b"])
    disconnect, _ = mqtt5.read(memoryview(codec.disconnect()))
    assert isinstance(disconnect, mqtt5.DisconnectPacket)
    assert disconnect.reason_code == mqtt5.DisconnectReasonCode.NORMAL_DISCONNECTION
