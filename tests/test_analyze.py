"""`osteotel analyze`: the estimator over a capture file, written as JSON Lines."""

import argparse
import json
from pathlib import Path
from typing import Any

import pytest

from apps.analyze import analyze_emulated, configure, main
from devices.codec import encode_event, encode_frame_binary, encode_frame_json
from devices.contract import events_topic, status_topic, telemetry_topic
from devices.emulator.capture import CaptureWriter
from devices.emulator.generator import DeviceConfig, generate

NS_PER_DAY = 86_400 * 1_000_000_000
START_NS = 1_699_920_000_000_000_000
CONFIG = DeviceConfig(device="DX-0001", hub="HUB-A", seed=5, target_mm=2.0)
END_NS = START_NS + 9 * NS_PER_DAY


def _capture(path: Path, *, binary: bool) -> None:
    with CaptureWriter(path) as out:
        for item in generate(CONFIG, start_ns=START_NS, end_ns=END_NS):
            if item.frame is not None:
                encode = encode_frame_binary if binary else encode_frame_json
                topic = telemetry_topic(CONFIG.hub, CONFIG.device)
                out.write(topic, encode(item.frame), t_ns=item.t_ns)
            elif item.event is not None:
                topic = events_topic(CONFIG.hub, CONFIG.device)
                out.write(topic, encode_event(item.event), t_ns=item.t_ns)
        out.write(status_topic(CONFIG.hub), b'{"v":1}', t_ns=END_NS)  # a bad status: skipped


def _run(capture: Path, out: Path) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser()
    configure(parser)
    assert main(parser.parse_args([str(capture), "--out", str(out), "--target-mm", "2"])) == 0
    return [json.loads(line) for line in out.read_text().splitlines()]


@pytest.mark.parametrize("binary", [False, True], ids=["json-frames", "binary-frames"])
def test_capture_gives_the_same_records_as_the_live_stream(tmp_path: Path, binary: bool) -> None:
    """Analysing a capture writes, per estimate, what the estimator makes of the live stream."""
    capture = tmp_path / "run.capture.jsonl"
    _capture(capture, binary=binary)
    lines = _run(capture, tmp_path / "out.jsonl")
    live = list(analyze_emulated(CONFIG, start_ns=START_NS, end_ns=END_NS))
    assert [(r["kind"], r["t_ns"]) for r in lines] == [(r.kind, r.t_ns) for r in live]
    steps = [r for r in lines if r["kind"] == "step"]
    assert steps
    assert {"device", "t_ns", "kind", "k_inst_n_per_mm", "version", "t_start_ns"} <= set(steps[0])


def test_every_line_names_device_time_and_kind(tmp_path: Path) -> None:
    """Each JSONL line has device, t_ns and one of the documented kinds."""
    capture = tmp_path / "run.capture.jsonl"
    _capture(capture, binary=False)
    for line in _run(capture, tmp_path / "out.jsonl"):
        assert line["device"] == CONFIG.device
        assert isinstance(line["t_ns"], int)
        assert line["kind"] in {"step", "probe", "load_share", "daily", "quality"}
