"""The complete estimator's state arrays for a number of devices: every tracker's rows, the
estimator's own int and float rows (`dsp.layout`), and the fused frame kernel's arguments
that hold them. `dsp.estimator` keeps one and replaces it by a larger one when it is full.
"""

from typing import Any

from numpy.typing import NDArray

from dsp.config import EstimatorConfig, kernel_params
from dsp.layout import new_rows
from dsp.loadshare import LoadShareTracker
from dsp.quality import QualityMonitor
from dsp.rows import DeviceRows
from dsp.steps import StepTracker
from dsp.tracking import StiffnessTracker

__all__ = ["FleetState"]


class FleetState:
    """State rows for `n_devices` devices.

    Attributes:
        steps, tracking: the step and stiffness trackers.
        share, k_device: the load-share tracker (force on reference load) and the device's
            own (force on displacement), fed during weight-bearing tests.
        force_q, disp_q: the quality monitors of the two channels.
        ei, df: the estimator's own rows.
        kernel_head, kernel_tail: the fused kernel's state arguments before and after the
            step tracker's window pool (`steps.bins`), which Python may replace between calls.
    """

    def __init__(
        self, config: EstimatorConfig, n_devices: int, *, grown_from: "FleetState | None" = None
    ) -> None:
        """Allocate the rows of n_devices devices; with `grown_from`, a smaller state whose
        devices' rows it takes over."""
        self.steps = StepTracker(n_devices, config.step)
        self.tracking = StiffnessTracker(n_devices, config.tracking)
        self.share = LoadShareTracker(n_devices)
        self.k_device = LoadShareTracker(n_devices)
        self.force_q = QualityMonitor(n_devices, config.force_quality)
        self.disp_q = QualityMonitor(n_devices, config.disp_quality)
        self.ei, self.df = new_rows(n_devices)
        if grown_from is not None:
            grown = self.trackers().values()
            for prev, new in zip(grown_from.trackers().values(), grown, strict=True):
                prev.copy_rows_to(new)
            m = grown_from.ei.shape[0]
            self.ei[:m] = grown_from.ei
            self.df[:m] = grown_from.df
        fp, ip = kernel_params(config)
        # Gathered once: per call only the frames change, and the window pool.
        self.kernel_head = (self.ei, self.steps.float_state, self.steps.int_state)
        self.kernel_tail = (
            self.tracking.float_state,
            self.tracking.int_state,
            self.share.float_state,
            self.share.int_state,
            self.share.rows()["begin_ns"],
            self.share.rows()["end_ns"],
            self.k_device.float_state,
            self.k_device.int_state,
            self.k_device.rows()["begin_ns"],
            self.k_device.rows()["end_ns"],
            self.force_q.float_state,
            self.force_q.int_state,
            self.disp_q.float_state,
            self.disp_q.int_state,
            fp,
            ip,
        )

    @property
    def n_devices(self) -> int:
        """Devices the rows have room for."""
        return self.steps.n_devices

    def trackers(self) -> dict[str, DeviceRows]:
        """The trackers, by their names in a snapshot."""
        return {
            "steps": self.steps,
            "tracking": self.tracking,
            "share": self.share,
            "k_device": self.k_device,
            "force_q": self.force_q,
            "disp_q": self.disp_q,
        }

    def rows(self) -> dict[str, NDArray[Any]]:
        """The state arrays with one row per device, by their names in a snapshot."""
        rows: dict[str, NDArray[Any]] = {"ei": self.ei, "df": self.df}
        for name, tracker in self.trackers().items():
            rows |= {f"{name}_{key}": array for key, array in tracker.rows().items()}
        return rows

    def parts_per_device(self, n_seen: int) -> dict[str, int]:
        """Bytes per device: "trackers" (the trackers' rows), "windows" (share of the step
        windows' pool over the n_seen devices) and "histories" (the estimator's own rows)."""
        trackers = sum(
            row[0].nbytes for tracker in self.trackers().values() for row in tracker.rows().values()
        )
        windows = self.steps.windows()
        pool = windows["bins"].nbytes + windows["slot_owner"].nbytes
        return {
            "trackers": trackers,
            "windows": round(pool / max(n_seen, 1)),
            "histories": int(self.ei[0].nbytes + self.df[0].nbytes),
        }
