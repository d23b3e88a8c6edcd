"""The per-device estimator: every tracker of `dsp` behind one call per frame and per event,
returning plain estimate records with provenance.

    fleet = FleetEstimator(EstimatorConfig())
    records = fleet.frame("DX-0001", force_n, disp_mm, ref_load_n, t0_ns, rate_hz)
    records += fleet.step("DX-0001", t_ns, delta_mm, kind="step")
    fleet.load_test_start("DX-0001", t_ns); records += fleet.load_test_end("DX-0001", t_ns)
    records += fleet.flush()

Device ids map to dense indices into the trackers' state arrays, which double in size when
full. Per frame there is a fixed amount of Python work and one numba call per tracker; no
Python runs per sample. Records: `StepRecord` (kind "step" or "probe"), `LoadShareRecord`
("load_share"), `QualityRecord` ("quality"), `DailyRecord` ("daily", one per device and UTC
day, emitted when the device's data pass into the next day, with phase, adherence,
consolidation and anomaly `flags`). docs/dsp.md lists every field.

This module dispatches; the rest of the estimator is in rooms of its own, each a set of
functions of one device's rows: `dsp.state` (the state arrays, grown by doubling),
`dsp.steprecord`, `dsp.loadtest`, `dsp.qualityrecord` and `dsp.daily` (each record kind with
the rules it feeds), `dsp.config` (the settings) and `dsp.layout` (the rows' columns).
"""

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any

import numpy as np
from numpy.typing import NDArray

from dsp import _kernels as kern
from dsp.adherence import Protocol
from dsp.checks import as_float_array, check_batch, check_rate
from dsp.config import EstimatorConfig
from dsp.daily import ESTIMATOR_VERSION, close_day, hold_probe_values, hold_step_values
from dsp.layout import DI_N_RECENT_K, DI_SIGN_BAD, NS_PER_DAY
from dsp.loadtest import device_stiffness, load_share_record
from dsp.qualityrecord import quality_record
from dsp.records import (
    DailyRecord,
    EstimateRecord,
    LoadShareRecord,
    Phase,
    QualityRecord,
    StepKind,
    StepRecord,
)
from dsp.state import FleetState
from dsp.steprecord import note_step_event, step_record
from dsp.steps import StepEstimate

__all__ = [
    "ESTIMATOR_VERSION",
    "DailyRecord",
    "DeviceEstimator",
    "EstimateRecord",
    "EstimatorConfig",
    "FleetEstimator",
    "LoadShareRecord",
    "Phase",
    "QualityRecord",
    "StepRecord",
]

# Bumped whenever the meaning of a state array changes while its shape does not.
_SNAPSHOT_FORMAT = 3


_QUALITY_COUNTERS = (kern.QI_N_FLAT, kern.QI_N_SATURATED, kern.QI_N_SPIKES, kern.QI_N_NONFINITE)


class FleetEstimator:
    """The complete estimator for any number of devices, called per frame and per event.

    Per device, frames and events must come in time order (as the device's hub publishes
    them); late frames older than the device's current day still feed the trackers but do
    not move the day back. Every call returns the records it completed, oldest first.
    """

    def __init__(self, config: EstimatorConfig | None = None, *, capacity: int = 16) -> None:
        """Create an empty fleet.

        Args:
            config: estimator settings; defaults if None.
            capacity: devices to allocate state for at first (it doubles when full).
        """
        self.config = config or EstimatorConfig()
        # Per device only its id and index live in Python; everything else is in the rows.
        self._index: dict[str, int] = {}
        self._ids: list[str] = []
        # Rare per-device settings, kept only for devices that have them.
        self._calibration: dict[int, str] = {}
        self._protocols: dict[int, Protocol] = {}
        # The day's step values beyond the row's room (more than TODAY_STEPS steps a day).
        self._today_extra: dict[int, list[tuple[float, float, float]]] = {}
        self._probes_extra: dict[int, list[tuple[float, float]]] = {}
        # One-frame argument arrays of `frame`, reused so a frame allocates none of its own.
        self._one_row = np.zeros(1, dtype=np.int64)
        self._one_offsets = np.zeros(2, dtype=np.int64)
        self._one_t0 = np.zeros(1, dtype=np.int64)
        self._one_dt = np.zeros(1)
        self._q_delta = np.zeros((2, 4), dtype=np.int64)
        self._state = FleetState(self.config, max(capacity, 1))
        self._block_ns = round(self.config.tracking.block_s * 1e9)
        self._hold_ns = round(self.config.tracking.hold_s * 1e9)

    @property
    def devices(self) -> list[str]:
        """Ids of the devices seen so far, in order of first appearance."""
        return list(self._ids)

    def state_bytes_per_device(self) -> int:
        """Bytes of numeric state per device: its rows in every array, plus its share of the
        step windows' pool (pool bytes over the devices seen). Python objects not included."""
        return sum(self.state_parts_per_device().values())

    def state_parts_per_device(self) -> dict[str, int]:
        """The parts of `state_bytes_per_device` (bytes): "trackers" (the trackers' rows),
        "windows" (share of the step windows' pool, which holds one 2.5 KiB slot per open
        window) and "histories" (the estimator's own rows: histories and the day's tallies)."""
        return self._state.parts_per_device(len(self._ids))

    def snapshot(self) -> dict[str, NDArray[Any]]:
        """The fleet's whole state as named arrays, for `restore` (e.g. through `numpy.savez`).

        Everything a later estimate depends on is in it: each tracker's rows, the open step
        windows, the histories and the day's tallies, and, as JSON bytes under `meta`, the
        device ids, calibrations, prescriptions and the configuration it was made with.
        """
        meta = {
            "format": _SNAPSHOT_FORMAT,
            "config": repr(self.config),
            "ids": self._ids,
            "calibration": self._calibration,
            "protocols": {i: asdict(protocol) for i, protocol in self._protocols.items()},
            "today_extra": self._today_extra,
            "probes_extra": self._probes_extra,
        }
        arrays: dict[str, NDArray[Any]] = {
            "meta": np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
        }
        windows = {f"step_{name}": array for name, array in self._state.steps.windows().items()}
        return arrays | windows | self._state.rows()

    @classmethod
    def restore(
        cls, arrays: Mapping[str, NDArray[Any]], config: EstimatorConfig | None = None
    ) -> "FleetEstimator":
        """A fleet in the state a `snapshot` captured.

        Args:
            arrays: what `snapshot` returned (or `numpy.load` read back).
            config: the settings to run with; they must be the ones the snapshot was made with.

        Raises:
            ValueError: the snapshot is of another format, was made with other settings, or
                its arrays do not have this build's layout.
        """
        meta = json.loads(bytes(arrays["meta"]).decode())
        fleet = cls(config, capacity=int(arrays["ei"].shape[0]))
        if meta.get("format") != _SNAPSHOT_FORMAT:
            raise ValueError(f"snapshot format {meta.get('format')!r}, not {_SNAPSHOT_FORMAT}")
        if meta.get("config") != repr(fleet.config):
            raise ValueError("the snapshot was made with other estimator settings")
        for name, target in fleet._state.rows().items():
            source = arrays[name]
            if source.shape != target.shape or source.dtype != target.dtype:
                raise ValueError(f"snapshot array {name!r} is {source.dtype}{source.shape}, "
                                 f"this build's is {target.dtype}{target.shape}")  # fmt: skip
            target[...] = source  # in place: the kernels' argument tuples hold these arrays
        fleet._state.steps.set_windows(
            {name: arrays[f"step_{name}"] for name in ("bins", "slot_owner", "free")}
        )
        fleet._ids = list(meta["ids"])
        fleet._index = {device: i for i, device in enumerate(fleet._ids)}
        # JSON keys are strings; the rows are ints.
        fleet._calibration = {int(i): c for i, c in meta["calibration"].items()}
        fleet._protocols = {int(i): Protocol(**p) for i, p in meta["protocols"].items()}
        fleet._today_extra = {
            int(i): [(a, b, c) for a, b, c in rows] for i, rows in meta["today_extra"].items()
        }
        fleet._probes_extra = {
            int(i): [(a, b) for a, b in rows] for i, rows in meta["probes_extra"].items()
        }
        return fleet

    def _device(self, device: str) -> int:
        index = self._index.get(device)
        if index is None:
            index = len(self._ids)
            if index >= self._state.n_devices:
                self._state = FleetState(
                    self.config, 2 * self._state.n_devices, grown_from=self._state
                )
            self._index[device] = index
            self._ids.append(device)
        return index

    def set_calibration(self, device: str, calibration_id: str | None) -> None:
        """Record the calibration in force for a device; later records carry its id."""
        i = self._device(device)
        current = self._calibration.get(i)
        if calibration_id != current:
            # Old stiffness estimates were made in other units of force, and perhaps the other
            # polarity: start afresh, the sign check too.
            self._state.tracking.reset(i)
            self._state.ei[i, DI_SIGN_BAD] = 0
            self._state.ei[i, DI_N_RECENT_K] = 0
        if calibration_id is None:
            self._calibration.pop(i, None)
        else:
            self._calibration[i] = calibration_id

    def set_protocol(self, device: str, protocol: Protocol | None) -> None:
        """Set a device's prescription (None: the configured default)."""
        i = self._device(device)
        if protocol is None:
            self._protocols.pop(i, None)
        else:
            self._protocols[i] = protocol

    # ---- events ------------------------------------------------------------------------

    def step(
        self, device: str, t_ns: int, delta_mm: float, *, kind: StepKind = "step"
    ) -> list[EstimateRecord]:
        """A distraction step (kind "step") or probe (kind "probe") started at t_ns.

        Args:
            device: device id.
            t_ns: start of the step (UTC epoch ns).
            delta_mm: elongation (mm); a probe's return has a negative one.
            kind: "step" or "probe".

        Returns:
            Daily records of days this event closed.
        """
        i = self._device(device)
        out = self._advance_day(i, t_ns)
        self._state.steps.event(i, t_ns, delta_mm)
        self._touch(i, t_ns, t_ns)
        note_step_event(self._state.ei[i], self._state.df[i], t_ns, delta_mm, kind)
        return out

    def load_test_start(self, device: str, t_ns: int) -> list[EstimateRecord]:
        """A weight-bearing test starts (UTC epoch ns); returns daily records it closed."""
        i = self._device(device)
        out = self._advance_day(i, t_ns)
        self._state.share.start(i, t_ns)
        self._state.k_device.start(i, t_ns)
        self._state.ei[i, kern.EI_LOAD_TEST] = 1
        return out

    def load_test_end(self, device: str, t_ns: int) -> list[EstimateRecord]:
        """A weight-bearing test ends (UTC epoch ns); returns its load-share record."""
        i = self._device(device)
        out = self._advance_day(i, t_ns)
        ei, df = self._state.ei[i], self._state.df[i]
        if not ei[kern.EI_LOAD_TEST]:
            return out
        ei[kern.EI_LOAD_TEST] = 0
        est = self._state.share.end(i, t_ns)
        k_est = self._state.k_device.end(i, t_ns)
        k_dev = math.nan
        if k_est.status == "ok":
            noise_var = float(self._state.disp_q.float_state[i, kern.QF_NOISE_VAR])
            k_dev = device_stiffness(self._state.k_device.float_state[i], noise_var)
        record = load_share_record(
            ei, df, est, t_ns=t_ns, k_device_n_per_mm=k_dev, config=self.config,
            device=self._ids[i], calibration_id=self._calibration.get(i),
        )  # fmt: skip
        return [*out, record]

    # ---- frames ------------------------------------------------------------------------

    def frame(  # noqa: PLR0917 - one positional per field of a frame, as ingest holds them
        self,
        device: str,
        force_n: NDArray[np.floating] | list[float],
        disp_mm: NDArray[np.floating] | list[float],
        ref_load_n: NDArray[np.floating] | list[float] | None,
        t0_ns: int,
        rate_hz: float,
    ) -> list[EstimateRecord]:
        """Process one frame of a device.

        Args:
            device: device id.
            force_n: force samples (N).
            disp_mm: displacement samples (mm), same length.
            ref_load_n: reference load (N) during a weight-bearing test, else None.
            t0_ns: time of the first sample (UTC epoch ns).
            rate_hz: sample rate (Hz).

        Returns:
            Records completed by this frame: daily records of days it closed, step and probe
            records of windows it closed, quality records of signal problems.
        """
        force = as_float_array("force_n", force_n)
        disp = as_float_array("disp_mm", disp_mm)
        if force.shape != disp.shape:
            raise ValueError(f"force_n has {force.size} samples, disp_mm {disp.size}")
        dt_ns = check_rate(rate_hz)
        ref = None if ref_load_n is None else as_float_array("ref_load_n", ref_load_n)
        if ref is not None and ref.shape != force.shape:
            raise ValueError(f"force_n has {force.size} samples, ref_load_n {ref.size}")
        i = self._device(device)
        self._one_row[0] = i
        self._one_offsets[1] = force.size
        self._one_t0[0] = t0_ns
        self._one_dt[0] = dt_ns
        _, stop = kern._fleet_frames(
            0,
            self._one_row,
            self._one_offsets,
            force,
            disp,
            force if ref is None else ref,
            ref is not None,
            self._one_t0,
            self._one_dt,
            *self._state.kernel_head,
            self._state.steps.bins,
            *self._state.kernel_tail,
            self._q_delta,
        )
        if stop == kern.STOP_NONE:
            return []
        if stop == kern.STOP_QUALITY:
            return self._quality_records(i, force.size, t0_ns, dt_ns)
        return self._frame_slow(i, force, disp, ref, t0_ns, rate_hz)

    def frames(  # noqa: PLR0917 - the columns of a batch of frames
        self,
        devices: Sequence[str],
        offsets: NDArray[np.integer],
        force_n: NDArray[np.floating],
        disp_mm: NDArray[np.floating],
        ref_load_n: NDArray[np.floating] | None,
        t0_ns: NDArray[np.integer],
        rate_hz: NDArray[np.floating],
    ) -> list[EstimateRecord]:
        """Process many frames at once; the same records as `frame` called on each in order.

        Frame j is device devices[j] with samples offsets[j]:offsets[j + 1] of the sample
        arrays. One numba call runs every frame that closes nothing through all trackers;
        Python handles only the rare frames that close a day, a step window or a quality
        stretch, in their place in the order.

        Args:
            devices: device id of each frame (n frames).
            offsets: n + 1 sample offsets, from 0 to the sample count, non-decreasing.
            force_n: force samples of all frames, concatenated (N).
            disp_mm: displacement samples, aligned with force_n (mm).
            ref_load_n: reference load aligned with force_n (N), or None if no frame has one
                (then it is ignored as `frame` ignores None).
            t0_ns: time of each frame's first sample (UTC epoch ns).
            rate_hz: sample rate of each frame (Hz).

        Returns:
            The records completed by these frames, in the order `frame` would return them.
        """
        n_frames = len(devices)
        force = as_float_array("force_n", force_n)
        disp = as_float_array("disp_mm", disp_mm)
        ref = None if ref_load_n is None else as_float_array("ref_load_n", ref_load_n)
        offs = np.ascontiguousarray(offsets, dtype=np.int64)
        t0 = np.ascontiguousarray(t0_ns, dtype=np.int64)
        rate = np.ascontiguousarray(rate_hz, dtype=np.float64)
        check_batch(n_frames, offs, force, disp, ref, t0, rate)
        rows = np.empty(n_frames, dtype=np.int64)
        for j, device in enumerate(devices):
            rows[j] = self._device(device)
        # After every device exists: growing would replace the state arrays under the kernel.
        dt = 1e9 / rate
        out: list[EstimateRecord] = []
        j = 0
        while j < n_frames:
            j, stop = kern._fleet_frames(
                j,
                rows,
                offs,
                force,
                disp,
                force if ref is None else ref,
                ref is not None,
                t0,
                dt,
                *self._state.kernel_head,
                self._state.steps.bins,
                *self._state.kernel_tail,
                self._q_delta,
            )
            if stop == kern.STOP_NONE:
                break
            i = int(rows[j])
            a, b = int(offs[j]), int(offs[j + 1])
            t0_j = int(t0[j])
            if stop == kern.STOP_QUALITY:
                out += self._quality_records(i, b - a, t0_j, float(dt[j]))
            else:
                out += self._frame_slow(
                    i,
                    force[a:b],
                    disp[a:b],
                    None if ref is None else ref[a:b],
                    t0_j,
                    float(rate[j]),
                )
            j += 1
        return out

    def _frame_slow(  # noqa: PLR0917 - a frame's fields, checked by the caller
        self,
        i: int,
        force: NDArray[np.float64],
        disp: NDArray[np.float64],
        ref: NDArray[np.float64] | None,
        t0_ns: int,
        rate_hz: float,
    ) -> list[EstimateRecord]:
        """A frame that may close a day or a step window: one tracker call at a time."""
        state = self._state
        dt_ns = 1e9 / rate_hz
        out = self._advance_day(i, t0_ns)
        t_end_ns = t0_ns + round((force.size - 1) * dt_ns) if force.size else t0_ns
        self._touch(i, t0_ns, t_end_ns)
        for est in state.steps.frame(i, force, disp, t0_ns, rate_hz):
            out.append(self._step_record(i, est))
        if force.size:
            tc = self.config.tracking
            kern._rls_push(
                state.tracking.float_state[i],
                state.tracking.int_state[i],
                force,
                disp,
                t0_ns,
                dt_ns,
                self._block_ns,
                tc.forgetting,
                tc.excite_mm,
                self._hold_ns,
                tc.sigma_alpha,
            )
            if state.ei[i, kern.EI_LOAD_TEST]:
                if ref is not None:
                    state.share.frame(i, force, ref, t0_ns, rate_hz)
                state.k_device.frame(i, force, disp, t0_ns, rate_hz)
            q_delta = self._q_delta
            for row, (monitor, values) in enumerate(((state.force_q, force), (state.disp_q, disp))):
                qi = monitor.int_state[i]
                before = qi.copy()
                qc = monitor.config
                kern._quality_push(
                    monitor.float_state[i],
                    qi,
                    values,
                    qc.full_scale,
                    qc.flat_eps,
                    qc.flat_samples,
                    qc.spike_k,
                    qc.noise_alpha,
                )
                q_delta[row] = (qi - before)[list(_QUALITY_COUNTERS)]
            out += self._quality_records(i, force.size, t0_ns, dt_ns)
        return out

    def _quality_records(
        self, i: int, n_samples: int, t0_ns: int, dt_ns: float
    ) -> list[EstimateRecord]:
        """Quality records of a frame whose samples went through both monitors; the counter
        increments are in `_q_delta` (force row 0, displacement row 1)."""
        t_end_ns = t0_ns + round((n_samples - 1) * dt_ns)
        out: list[EstimateRecord] = []
        for row, (channel, monitor) in enumerate(
            (("force", self._state.force_q), ("disp", self._state.disp_q))
        ):
            record = quality_record(
                self._state.ei[i],
                monitor.float_state[i],
                monitor.int_state[i],
                monitor_config=monitor.config,
                row=row,
                channel=channel,
                counts=[int(v) for v in self._q_delta[row]],
                n_samples=n_samples,
                t0_ns=t0_ns,
                t_end_ns=t_end_ns,
                quality_every_s=self.config.quality_every_s,
                device=self._ids[i],
                calibration_id=self._calibration.get(i),
            )
            if record is not None:
                out.append(record)
        return out

    # ---- closing -----------------------------------------------------------------------

    def flush(self, device: str | None = None) -> list[EstimateRecord]:
        """Close open step windows and the current day of one device (None: of all devices).

        Use at shutdown or at the end of a recording: the day's record is then partial.
        """
        out: list[EstimateRecord] = []
        for i in [self._index[device]] if device is not None else range(len(self._ids)):
            est = self._state.steps.flush(i)
            if est is not None:
                out.append(self._step_record(i, est))
            if self._state.ei[i, kern.EI_DAY] >= 0:
                out.append(self._close_day(i))
        return out

    def _touch(self, i: int, t_start_ns: int, t_end_ns: int) -> None:
        ei = self._state.ei[i]
        if t_start_ns // NS_PER_DAY < ei[kern.EI_DAY]:
            return  # a late item from an earlier day
        if ei[kern.EI_T_FIRST] < 0:
            ei[kern.EI_T_FIRST] = t_start_ns
        ei[kern.EI_T_LAST] = max(int(ei[kern.EI_T_LAST]), t_end_ns)

    def _close_day(self, i: int) -> DailyRecord:
        # The day's values beyond the row's places end with the day.
        return close_day(
            self._state.ei[i],
            self._state.df[i],
            config=self.config,
            protocol=self._protocols.get(i) or self.config.protocol,
            device=self._ids[i],
            calibration_id=self._calibration.get(i),
            k_track_n_per_mm=self._state.tracking.estimate(i).k_eq_n_per_mm,
            extra_steps=self._today_extra.pop(i, []),
            extra_probes=self._probes_extra.pop(i, []),
        )

    def _advance_day(self, i: int, t_ns: int) -> list[EstimateRecord]:
        day = t_ns // NS_PER_DAY
        ei = self._state.ei[i]
        if ei[kern.EI_DAY] < 0:
            ei[kern.EI_DAY] = day
            return []
        out: list[EstimateRecord] = []
        # One record per day passed, so adherence sees days without steps; bounded by a year.
        while ei[kern.EI_DAY] < day:
            out.append(self._close_day(i))
            ei[kern.EI_DAY] = max(int(ei[kern.EI_DAY]) + 1, day - 366)
        return out

    def _step_record(self, i: int, est: StepEstimate) -> StepRecord:
        ei, df = self._state.ei[i], self._state.df[i]
        record = step_record(
            ei, df, est, config=self.config, device=self._ids[i],
            calibration_id=self._calibration.get(i),
        )  # fmt: skip
        # The day's values for its record; those beyond the row's places wait in a list.
        if record.kind == "step":
            if est.t_step_ns // NS_PER_DAY >= ei[kern.EI_DAY]:
                values = (est.k_inst_n_per_mm, est.k_eq_n_per_mm, est.f_residual_n)
                if not hold_step_values(ei, df, values):
                    self._today_extra.setdefault(i, []).append(values)
        elif est.delta_mm > 0.0:
            probe = (est.k_inst_n_per_mm, est.k_eq_n_per_mm)
            if not hold_probe_values(ei, df, probe):
                self._probes_extra.setdefault(i, []).append(probe)
        return record


class DeviceEstimator:
    """The complete estimator for one device: a FleetEstimator of one, without the id."""

    def __init__(self, device: str, config: EstimatorConfig | None = None) -> None:
        """Create the estimator of `device` (its id goes into every record)."""
        self.device = device
        self.fleet = FleetEstimator(config, capacity=1)

    def frame(
        self,
        force_n: NDArray[np.floating] | list[float],
        disp_mm: NDArray[np.floating] | list[float],
        ref_load_n: NDArray[np.floating] | list[float] | None,
        t0_ns: int,
        rate_hz: float,
    ) -> list[EstimateRecord]:
        """Process one frame; see `FleetEstimator.frame`."""
        return self.fleet.frame(self.device, force_n, disp_mm, ref_load_n, t0_ns, rate_hz)

    def step(self, t_ns: int, delta_mm: float, *, kind: StepKind = "step") -> list[EstimateRecord]:
        """A distraction step or probe; see `FleetEstimator.step`."""
        return self.fleet.step(self.device, t_ns, delta_mm, kind=kind)

    def load_test_start(self, t_ns: int) -> list[EstimateRecord]:
        """A weight-bearing test starts; see `FleetEstimator.load_test_start`."""
        return self.fleet.load_test_start(self.device, t_ns)

    def load_test_end(self, t_ns: int) -> list[EstimateRecord]:
        """A weight-bearing test ends; see `FleetEstimator.load_test_end`."""
        return self.fleet.load_test_end(self.device, t_ns)

    def flush(self) -> list[EstimateRecord]:
        """Close the open window and the current day; see `FleetEstimator.flush`."""
        return self.fleet.flush(self.device)
