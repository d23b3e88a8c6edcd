"""DSP speed and accuracy: kernels and the complete estimator, against emulator ground truth.

Figures (`--json` keys), all measured in this run on one core:
    <kernel>_samples_per_s          step, rls and quality kernels over one long array
    numpy_baseline_samples_per_s    a plain-numpy pass (block means + squared differences)
    <kernel>_vs_numpy               kernel speed / numpy baseline speed
    estimator_samples_per_s         FleetEstimator over frames spread over --devices devices
    estimator_vs_numpy              its speed / numpy baseline speed
    estimator_batched_samples_per_s the same frames through FleetEstimator.frames, one batch
                                    of one frame per device at a time
    estimator_batched_vs_numpy      its speed / numpy baseline speed
    state_bytes_per_device          all state per device (tracemalloc over --devices devices after
                                    a realistic stream each: frames, two steps, a load test, a
                                    day change), bytes; its parts:
    tracker_state_bytes_per_device  the trackers' numeric rows
    window_state_bytes_per_device   share of the step windows' pool (one slot per open window)
    history_state_bytes_per_device  the estimator's rows: histories and the day's tallies
    python_state_bytes_per_device   Python objects besides the arrays (id index, dicts)
    step_window_slot_bytes          one step window slot, held while a window is open (bytes)
    import_warmup_s                 `import dsp; dsp.warm_up()` in a fresh process (s)
    first_frame_s, median_frame_s   first frame after warm-up, and the median frame (s)
    <scenario>_*                    accuracy on emulator runs (see `accuracy`)
    physics_*                       accuracy over the independent physics family of
                                    tests/physics.py (see `physics_accuracy`): written from the
                                    published formulas, not from the emulator, whose assumptions
                                    the DSP shares
"""

import argparse
import importlib.util
import itertools
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

__all__ = ["PHYSICS_PATH", "accuracy", "configure", "physics_accuracy", "run"]

PHYSICS_PATH = Path(__file__).resolve().parents[2] / "tests" / "physics.py"
"""The independent physics generator, in the repository's tests (not part of the package)."""

_NS_PER_DAY = 86_400 * 1_000_000_000
_START_NS = 1_699_920_000_000_000_000  # a UTC midnight (2023-11-14): the osteotomy
# Scenario, prescribed gain (mm), days simulated: short runs that still show each signature.
_SCENARIOS: dict[str, tuple[float, float]] = {
    "normal": (10.0, 45.0),
    "premature_consolidation": (10.0, 12.0),
    "reversed_force_sensor": (10.0, 20.0),
    "nonunion": (10.0, 10.0),
    "separation": (10.0, 15.0),
    "loosening": (10.0, 23.0),
}
_FLAG_OF = {
    "nonunion": "poor_regenerate",
    "separation": "separation",
    "loosening": "loosening",
}
_PROJECTION_LEAD_DAYS = 14.0


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the options of `osteotel bench dsp`."""
    parser.add_argument("--samples", type=int, default=2_000_000, help="kernel array length")
    parser.add_argument("--devices", type=int, default=10_000, help="devices for the estimator")
    parser.add_argument("--frames-per-device", type=int, default=5, help="100-sample frames each")
    parser.add_argument("--no-accuracy", action="store_true", help="skip the emulator runs")
    parser.add_argument(
        "--physics-steps", type=int, default=240, help="steps of the independent family (0: skip)"
    )
    parser.add_argument(
        "--physics-load-tests", type=int, default=40, help="load tests of the independent family"
    )


def _rate(seconds: float, samples: int) -> float:
    return samples / seconds if seconds > 0 else math.inf


def _timed(fn: Any, repeat: int = 3) -> float:
    best = math.inf
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def _kernels(n: int) -> dict[str, object]:
    import numpy as np  # noqa: PLC0415 - benchmarks keep module import light

    from dsp import _kernels as kern  # noqa: PLC0415
    from dsp.quality import QualityMonitor  # noqa: PLC0415
    from dsp.steps import StepTracker  # noqa: PLC0415
    from dsp.tracking import StiffnessTracker, TrackingConfig  # noqa: PLC0415

    rng = np.random.default_rng(0)
    force = 100.0 + rng.standard_normal(n)
    disp = np.repeat(np.arange(n // 1000 + 1) * 0.25, 1000)[:n] + 0.002 * rng.standard_normal(n)
    dt_ns = 1e7

    def steps() -> None:
        tracker = StepTracker(1)
        tracker.event(0, 1_000_000_000, 0.25)
        tracker.frame(0, force, disp, 0, 100.0)

    def rls() -> None:
        tr = StiffnessTracker(1)
        cfg = TrackingConfig()
        kern._rls_push(
            tr.float_state[0], tr.int_state[0], force, disp, 0, dt_ns, 500_000_000,
            cfg.forgetting, cfg.excite_mm, 120_000_000_000, cfg.sigma_alpha,
        )  # fmt: skip

    def quality() -> None:
        QualityMonitor(1).frame(0, force, 0, 100.0)

    def numpy_baseline() -> None:
        m = n // 50 * 50
        force[:m].reshape(-1, 50).mean(axis=1)
        disp[:m].reshape(-1, 50).mean(axis=1)
        float(np.mean(np.diff(force) ** 2))

    figures: dict[str, object] = {}
    base = _rate(_timed(numpy_baseline), n)
    figures["numpy_baseline_samples_per_s"] = base
    for name, fn in (("step", steps), ("rls", rls), ("quality", quality)):
        fn()  # compile or load from cache outside the timing
        speed = _rate(_timed(fn), n)
        figures[f"{name}_samples_per_s"] = speed
        figures[f"{name}_vs_numpy"] = speed / base
    return figures


def _estimator(n_devices: int, frames_per_device: int) -> dict[str, object]:

    import numpy as np  # noqa: PLC0415

    import dsp  # noqa: PLC0415
    from dsp.estimator import FleetEstimator  # noqa: PLC0415

    dsp.warm_up()
    rng = np.random.default_rng(1)
    ids = [f"DX-{i:05d}" for i in range(n_devices)]
    force = 100.0 + rng.standard_normal((frames_per_device, 100))
    disp = 10.0 + 0.002 * rng.standard_normal((frames_per_device, 100))
    t0 = _START_NS + 8 * 3600 * 1_000_000_000
    fleet = FleetEstimator(capacity=n_devices)
    for device in ids:  # every device's first frame opens its day (the slow path)
        fleet.frame(device, force[0], disp[0], None, t0 - 1_000_000_000, 100.0)
    times: list[float] = []
    start = time.perf_counter()
    for k in range(frames_per_device):
        t0_k = t0 + k * 1_000_000_000
        for device in ids:
            t = time.perf_counter()
            fleet.frame(device, force[k], disp[k], None, t0_k, 100.0)
            times.append(time.perf_counter() - t)
    total = time.perf_counter() - start
    samples = n_devices * frames_per_device * 100
    # The batched path: the same frames, devices and days, as one batch per round.
    batch = FleetEstimator(capacity=n_devices)
    offsets = np.arange(n_devices + 1) * 100
    rates = np.full(n_devices, 100.0)
    first = np.full(n_devices, t0 - 1_000_000_000)
    batch.frames(ids, offsets, np.tile(force[0], n_devices), np.tile(disp[0], n_devices),
                 None, first, rates)  # fmt: skip
    rounds = [
        (np.tile(f, n_devices), np.tile(d, n_devices)) for f, d in zip(force, disp, strict=True)
    ]
    start = time.perf_counter()
    for k, (f_k, d_k) in enumerate(rounds):
        t0_round = np.full(n_devices, t0 + k * 1_000_000_000)
        batch.frames(ids, offsets, f_k, d_k, None, t0_round, rates)
    batched = time.perf_counter() - start
    return {
        "estimator_samples_per_s": _rate(total, samples),
        "estimator_batched_samples_per_s": _rate(batched, samples),
        **_state_per_device(ids),
        "first_frame_s": times[0],
        "median_frame_s": statistics.median(times),
    }


def _state_per_device(ids: list[str]) -> dict[str, float]:
    """State per device after each device saw a day of a realistic stream and the next day
    began, measured with tracemalloc (numpy reports its buffers to it)."""
    import tracemalloc  # noqa: PLC0415

    import numpy as np  # noqa: PLC0415

    from dsp import _kernels as kern  # noqa: PLC0415
    from dsp.estimator import FleetEstimator  # noqa: PLC0415

    rng = np.random.default_rng(2)
    s_ns = 1_000_000_000
    rest = 100.0 + rng.standard_normal(100)
    disp = 10.0 + 0.002 * rng.standard_normal(100)
    # A step: the force jumps by 5 N and relaxes over the frames that follow.
    after = [rest + 5.0 * math.exp(-k / 60.0) for k in range(4)]
    ref = 300.0 + 50.0 * np.sin(np.linspace(0.0, math.pi, 100))
    loaded = rest + 0.2 * ref  # weight bearing adds compression: load raises the force
    day_ns = _START_NS + 8 * 3600 * s_ns
    tracemalloc.start()
    fleet = FleetEstimator(capacity=len(ids))
    for device in ids:
        t = day_ns
        for _ in range(3):
            fleet.frame(device, rest, disp, None, t, 100.0)
            t += s_ns
        for _ in range(2):  # two steps, each followed by a few seconds of frames
            fleet.step(device, t + s_ns // 2, 0.25)
            for force in after:
                fleet.frame(device, force, disp + 0.25, None, t, 100.0)
                t += s_ns
        fleet.load_test_start(device, t)
        for _ in range(3):
            fleet.frame(device, loaded, disp - 0.01, ref, t, 100.0)
            t += s_ns
        fleet.load_test_end(device, t)
        # The next day's first frame: closes the windows (a gap) and the day.
        fleet.frame(device, rest, disp, None, day_ns + _NS_PER_DAY, 100.0)
    total = tracemalloc.get_traced_memory()[0] / len(ids)
    tracemalloc.stop()
    parts = fleet.state_parts_per_device()
    numeric = sum(parts.values())
    return {
        "state_bytes_per_device": total,
        "tracker_state_bytes_per_device": parts["trackers"],
        "window_state_bytes_per_device": parts["windows"],
        "history_state_bytes_per_device": parts["histories"],
        "python_state_bytes_per_device": total - numeric,
        "step_window_slot_bytes": kern.STEP_BINS_LEN * 8 + 8,
    }


def _import_warmup_s() -> float:
    code = (
        "import time; t = time.perf_counter(); import dsp; dsp.warm_up(); "
        "print(time.perf_counter() - t)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    return float(done.stdout.strip())


def accuracy(scenario: str, *, target_mm: float, days: float, seed: int = 1) -> dict[str, float]:
    """Run one emulated device through the estimator and compare with its ground truth.

    Args:
        scenario: an emulator scenario name.
        target_mm: prescribed gain (mm); shorter than a real lengthening to keep runs short.
        days: days simulated from the osteotomy.
        seed: emulator seed.

    Returns:
        Figures: `k_inst_median_rel_err`, `k_eq_median_rel_err`, `tau_slow_median_rel_err`
        (steps with a good fit whose k_inst is a measurement, i.e. not `low_snr`; k_eq only
        where its standard error is within 20 % of it, `k_eq_measured_fraction` of them),
        `steps_fitted`, `steps_low_snr_fraction`, `k_inst_within_2_5_se_fraction` (of all
        fitted steps: the estimate within 2.5 standard errors of the truth),
        `load_share_max_abs_err`, `load_share_usable_fraction`, `ready_days` (daily records
        in phase ready), `projection_err_days` (projected
        readiness made 14 days before the true healed day, minus that day; NaN if not
        reached), `detect_delay_days` (first daily flag of the scenario's anomaly after its
        onset; NaN if never or if the scenario has none), `phase_changes` (phase transitions
        seen) and `false_flags` (days with an anomaly flag in a normal run).
    """
    from apps.analyze import analyze_emulated  # noqa: PLC0415
    from devices.emulator.generator import DeviceConfig  # noqa: PLC0415
    from devices.emulator.groundtruth import ground_truth  # noqa: PLC0415

    config = DeviceConfig(
        device="DX-0001", hub="HUB-A", scenario=scenario, seed=seed, target_mm=target_mm
    )
    end_ns = _START_NS + round(days * _NS_PER_DAY)
    records = list(analyze_emulated(config, start_ns=_START_NS, end_ns=end_ns))
    truth = list(ground_truth(config, start_ns=_START_NS, end_ns=end_ns))
    return _compare(scenario, records, truth)


def _compare(scenario: str, records: list[Any], truth: list[dict[str, Any]]) -> dict[str, float]:
    header = truth[0]
    steps = {r.t_ns: r for r in records if r.kind == "step" and r.fit_status == "ok"}
    errors: dict[str, list[float]] = {"k_inst": [], "k_eq": [], "tau_slow": []}
    within, n_flagged = [], 0
    for g in truth:
        est = steps.get(g["t_ns"]) if g["type"] == "step" else None
        if est is None:
            continue
        # Within 2.5 of its standard errors: right, or visibly uncertain.
        within.append(abs(est.k_inst_n_per_mm - g["k_inst_n_per_mm"])
                      <= 2.5 * est.k_inst_std_n_per_mm)  # fmt: skip
        if "low_snr" in est.flags:  # not a measurement: no rule reads it
            n_flagged += 1
            continue
        errors["k_inst"].append(abs(est.k_inst_n_per_mm / g["k_inst_n_per_mm"] - 1.0))
        errors["tau_slow"].append(abs(est.tau_slow_s / g["tau_slow_s"] - 1.0))
        # A settled force of hundredths of a N (a_inf ~ 0.003 at the first steps) is within
        # its own noise: its k_eq says so (k_eq_std) and is no measurement.
        if est.k_eq_std_n_per_mm <= 0.2 * abs(est.k_eq_n_per_mm):
            errors["k_eq"].append(abs(est.k_eq_n_per_mm / g["k_eq_n_per_mm"] - 1.0))
    out = {
        f"{name}_median_rel_err": statistics.median(v) if v else math.nan
        for name, v in errors.items()
    }
    out["steps_fitted"] = float(len(within))
    out["k_eq_measured_fraction"] = len(errors["k_eq"]) / len(within) if within else math.nan
    out["steps_low_snr_fraction"] = n_flagged / len(within) if within else math.nan
    out["k_inst_within_2_5_se_fraction"] = sum(within) / len(within) if within else math.nan
    shares = {r.t_ns: r.share for r in records if r.kind == "load_share"}
    true_shares = {
        g["t_ns"] + 26_000_000_000: g["load_share"] for g in truth if g["type"] == "load_share"
    }
    diffs = [abs(shares[t] - s) for t, s in true_shares.items() if t in shares]
    out["load_share_max_abs_err"] = max(diffs) if diffs else math.nan
    usable = [r.usable for r in records if r.kind == "load_share"]
    out["load_share_usable_fraction"] = sum(usable) / len(usable) if usable else math.nan
    daily = [r for r in records if r.kind == "daily"]
    out["ready_days"] = float(sum(r.phase == "ready" for r in daily))
    start_ns = int(header["t_ns"])
    healed_ns = start_ns + round(header["healed_day"] * _NS_PER_DAY)
    out["projection_err_days"] = math.nan
    for r in daily:
        if r.t_ns + _NS_PER_DAY >= healed_ns - _PROJECTION_LEAD_DAYS * _NS_PER_DAY:
            if r.projected_ready_ns > 0:
                out["projection_err_days"] = (r.projected_ready_ns - healed_ns) / _NS_PER_DAY
            break
    phases = [r.phase for r in daily]
    out["phase_changes"] = float(sum(a != b for a, b in itertools.pairwise(phases)))
    anomaly_flags = set(_FLAG_OF.values())
    out["false_flags"] = float(sum(bool(anomaly_flags & set(r.flags)) for r in daily))
    out["detect_delay_days"] = math.nan
    flag = _FLAG_OF.get(scenario)
    if flag is not None:
        onsets = [g["onset_ns"] for g in truth if g["type"] == "anomaly" and g["kind"] == scenario]
        steps_ns = [g["t_ns"] for g in truth if g["type"] == "step"]
        # Scenarios that change the tissue from the start begin with the first step.
        onset = onsets[0] if onsets else (steps_ns[0] if steps_ns else start_ns)
        for r in daily:
            if flag in r.flags and r.t_ns + _NS_PER_DAY > onset:
                out["detect_delay_days"] = max(r.t_end_ns - onset, 0) / _NS_PER_DAY
                break
        out["false_flags"] = float(
            sum(bool(anomaly_flags & set(r.flags)) for r in daily if r.t_ns + _NS_PER_DAY <= onset)
        )
    return out


def _load_physics(path: Path) -> ModuleType | None:
    """tests/physics.py loaded by path (tests/ is no package, and an installed osteotel has
    no tests beside it); None if the file is absent."""
    if not path.is_file():
        return None
    spec = importlib.util.spec_from_file_location("osteotel_bench_physics", path)
    if spec is None or spec.loader is None:
        return None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it executes
    spec.loader.exec_module(module)
    return module


def physics_accuracy(
    n_steps: int, n_load_tests: int, *, path: Path = PHYSICS_PATH
) -> dict[str, object]:
    """The estimator over the independent physics family: `standard_family(n_steps)` and
    `standard_load_family(n_load_tests)` of tests/physics.py, each case through a fresh
    `DeviceEstimator` with the default configuration.

    Args:
        n_steps: distraction steps drawn (ramps from one sample to 3 min, 10-200 Hz).
        n_load_tests: weight-bearing tests drawn (half of them wrongly signed devices).
        path: where tests/physics.py is.

    Returns:
        `physics_`-prefixed figures of `summarize`: n_cases, median and p95 relative errors of
        k_inst, k_eq and tau_slow (overall, per ramp bucket and per rate), n_missing,
        identity_violations, flag counts, the load share's median abs error on correct
        devices and the wrong-sign devices flagged. {"physics_family": "absent"} when the
        repository's tests are not there (an installed package).
    """
    physics = _load_physics(path)
    if physics is None:
        print(f"physics family skipped: {path} is absent (run from a checkout)", file=sys.stderr)
        return {"physics_family": "absent"}
    from dsp.estimator import DeviceEstimator, EstimatorConfig  # noqa: PLC0415

    def make() -> DeviceEstimator:
        return DeviceEstimator("PHY-0001", EstimatorConfig())

    steps = physics.run_steps(physics.standard_family(n_steps), make)
    loads = physics.run_load_tests(physics.standard_load_family(n_load_tests), make)
    figures: dict[str, float] = physics.summarize(steps, loads)
    return {f"physics_{key}": value for key, value in figures.items()}


def run(args: argparse.Namespace) -> dict[str, object]:
    """Measure and return the figures (see the module docstring for the keys)."""
    figures: dict[str, object] = {"import_warmup_s": _import_warmup_s()}
    figures.update(_kernels(args.samples))
    figures.update(_estimator(args.devices, args.frames_per_device))
    base = figures["numpy_baseline_samples_per_s"]
    speed = figures["estimator_samples_per_s"]
    if isinstance(base, float) and isinstance(speed, float):
        figures["estimator_vs_numpy"] = speed / base
    batched = figures["estimator_batched_samples_per_s"]
    if isinstance(base, float) and isinstance(batched, float):
        figures["estimator_batched_vs_numpy"] = batched / base
    if not args.no_accuracy:
        for scenario, (target_mm, days) in _SCENARIOS.items():
            for key, value in accuracy(scenario, target_mm=target_mm, days=days).items():
                figures[f"{scenario}_{key}"] = value
    if args.physics_steps > 0:
        figures.update(physics_accuracy(args.physics_steps, args.physics_load_tests))
    return figures
