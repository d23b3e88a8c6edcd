"""What really happened to an emulated device, as JSON Lines: the answers the DSP should find.

One JSON object per line, ordered by `t_ns` (UTC epoch ns). Every record has `type` and
`t_ns`; the schema of each type is in docs/emulator.md. The same config and times give the
same bytes.
"""

import heapq
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from devices.emulator.generator import FATES, frame_plans
from devices.emulator.physics import StepTable
from devices.emulator.timeline import DeviceConfig, Timeline, build_timeline

__all__ = ["dumps", "ground_truth", "write_ground_truth"]

Record = dict[str, Any]


def _num(value: float) -> float:
    # Six decimals keep the file readable and are far below any sensor's resolution.
    return round(float(value), 6)


def _step_records(tl: Timeline, table: StepTable, kind: str) -> Iterator[Record]:
    for j in range(len(table)):
        t_s = float(table.t_s[j])
        if t_s > tl.end_s:
            return
        record: Record = {
            "type": kind,
            "t_ns": tl.wall_ns(t_s),
            "delta_mm": _num(table.delta_mm[j]),
            "ramp_s": _num(table.ramp_s[j]),
            "k_inst_n_per_mm": _num(table.k_inst_n_per_mm[j]),
            "k_eq_n_per_mm": _num(table.k_eq_n_per_mm[j]),
            "a_inf": _num(table.a_inf[j]),
            "a_fast": _num(table.a_fast[j]),
            "a_slow": _num(table.a_slow[j]),
            "tau_fast_s": _num(table.tau_fast_s[j]),
            "tau_slow_s": _num(table.tau_slow_s[j]),
        }
        if kind == "step":
            record["number"] = j + 1
            record["source"] = tl.step_source[j]
            record["prescribed"] = bool(tl.step_prescribed[j])
        yield record


def _daily_records(tl: Timeline) -> Iterator[Record]:
    # The true load share at each daily weight-bearing test.
    for t_s in tl.tests_s.tolist():
        k_dev = float(tl.device_stiffness_n_per_mm(t_s))
        k_reg = float(tl.regenerate_ratio(t_s)) * tl.config.device_stiffness_n_per_mm
        yield {
            "type": "load_share",
            "t_ns": tl.wall_ns(t_s),
            "day": _num(float(tl.calendar_day(t_s))),
            "load_share": _num(float(tl.load_share(t_s))),
            "k_device_n_per_mm": _num(k_dev),
            "k_regenerate_n_per_mm": _num(k_reg),
        }


def _anomaly_records(tl: Timeline) -> Iterator[Record]:
    for a in tl.anomalies:
        end_s = min(a.end_s, tl.end_s)
        record: Record = {
            "type": "anomaly",
            "t_ns": tl.wall_ns(a.onset_s),
            "kind": a.kind,
            "onset_ns": tl.wall_ns(a.onset_s),
            "end_ns": tl.wall_ns(end_s),
        }
        record.update({key: _num(value) for key, value in a.detail.items()})
        if a.kind == "overload":
            record["peak_load_n"] = _num(a.detail["magnitude"] * tl.config.body_weight_n)
        yield record


def _transport_records(tl: Timeline) -> Iterator[Record]:
    # One record per frame that transport lost, duplicated, reordered or delayed.
    if not (tl.scenario.anomaly or "").startswith("transport_"):
        return
    period_ns = 1e9 / tl.config.rate_hz
    for plan in frame_plans(tl):
        for k in np.flatnonzero(plan.fate).tolist():
            t0_ns = int(plan.true_t0_ns[k])
            yield {
                "type": "transport",
                "t_ns": t0_ns,
                "fate": FATES[int(plan.fate[k])],
                "seq": int(plan.seq[k]),
                "frame_t0_ns": int(plan.t0_ns[k]),
                "frame_end_ns": t0_ns + round((int(plan.n[k]) - 1) * period_ns),
                "delay_ns": int(plan.delay_ns[k]),
            }


def ground_truth(config: DeviceConfig, *, start_ns: int, end_ns: int) -> Iterator[Record]:
    """Yield the ground-truth records of one device's treatment, ordered by `t_ns`.

    Args:
        config: the device, exactly as given to `generate`.
        start_ns: the osteotomy, UTC epoch ns.
        end_ns: "now", UTC epoch ns.

    Yields:
        JSON-ready dicts: one `device` header, then `phase`, `step`, `probe`, `load_share`,
        `anomaly` and `transport` records (docs/emulator.md gives every field and unit).
    """
    tl = build_timeline(config, start_ns=start_ns, end_ns=end_ns)
    sc = tl.scenario
    yield {
        "type": "device",
        "t_ns": start_ns,
        "device": config.device,
        "hub": config.hub,
        "site": config.site,
        "scenario": sc.name,
        "healing_curve": sc.healing_curve,
        "seed": config.seed,
        "rate_hz": config.rate_hz,
        "end_ns": tl.wall_ns(tl.end_s),
        "time_scale": config.time_scale,
        "consolidation_day": _num(tl.consolidation_day),
        "healed_day": _num(tl.healed_day),
        "device_stiffness_n_per_mm": config.device_stiffness_n_per_mm,
        # What the device was drawn to be (devices/emulator/draws.py) and what the DSP should say.
        "step_ramp_s": _num(tl.physics.step_ramp_s),
        "manual_ramp_s": _num(tl.physics.manual_ramp_s),
        "tau_fast_s": _num(tl.physics.tau_fast_s),
        "a_fast_scale": _num(tl.physics.a_fast_scale),
        "force_polarity": _num(tl.physics.force_polarity),
        "expected_flags": list(sc.expected_flags),
    }
    phases = ({"type": "phase", "t_ns": tl.wall_ns(t_s), "phase": name} for name, t_s in tl.phases)
    streams: list[Iterable[Record]] = [
        phases,
        _step_records(tl, tl.steps, "step"),
        _step_records(tl, tl.probes, "probe"),
        _daily_records(tl),
        _anomaly_records(tl),
        _transport_records(tl),
    ]
    yield from heapq.merge(*streams, key=lambda record: record["t_ns"])


def dumps(record: Record) -> str:
    """Return one record as a JSON line (keys sorted, no spaces, no trailing newline)."""
    return json.dumps(record, sort_keys=True, separators=(",", ":"), allow_nan=False)


def write_ground_truth(path: Path, config: DeviceConfig, *, start_ns: int, end_ns: int) -> int:
    """Write one device's ground truth to `path` as JSON Lines and return the line count."""
    count = 0
    with path.open("w", encoding="utf-8") as out:
        for record in ground_truth(config, start_ns=start_ns, end_ns=end_ns):
            out.write(dumps(record) + "\n")
            count += 1
    return count
