"""`osteotel bench receive` at a tiny size (its plain codec, osteotel/mqttcodec.py, is tested
against paho in tests/test_mqttcodec.py)."""

import argparse

from apps.bench import receive

RECEIVERS = ("source", "wire", "paho", "mqtt5", "plain", "mosquitto_sub")


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
    assert len(figures) == 3 + 9 * 6 + 4 * 5
