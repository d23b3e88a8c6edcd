"""The measurement catalogue: every measurement, tag and field a board or the report reads.

It holds exactly what ingest and the alert service write today (docs/schema.md); a test
compares the two, and `apps.grafana.panels` refuses any name not listed here, so a rename
on either side fails the suite instead of leaving an empty panel.
"""

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

__all__ = ["MEASUREMENTS", "Measurement"]


@dataclass(frozen=True, slots=True)
class Measurement:
    """What a board may read from one measurement.

    Attributes:
        name: the measurement name.
        tags: tag keys.
        fields: field keys, as docs/schema.md lists them.
        writer: which service writes it.
    """

    name: str
    tags: tuple[str, ...]
    fields: tuple[str, ...]
    writer: Literal["ingest", "alerts"] = "ingest"

    def has(self, name: str) -> bool:
        """Whether `name` is one of this measurement's tags or fields."""
        return name in self.tags or name in self.fields


def _catalogue(*items: Measurement) -> dict[str, Measurement]:
    return {item.name: item for item in items}


# Fields every estimate point carries besides its own (dsp.estimator.EstimateRecord).
_PROVENANCE = ("version", "calibration_id", "t_start_ns", "t_end_ns")

MEASUREMENTS: Mapping[str, Measurement] = _catalogue(
    # ingest: what arrived (ingest/records.py).
    Measurement("raw", ("hub", "device"), ("force_n", "disp_mm", "ref_load_n")),
    Measurement(
        "raw_1s",
        ("hub", "device"),
        (
            "force_n_mean",
            "force_n_min",
            "force_n_max",
            "disp_mm_mean",
            "disp_mm_min",
            "disp_mm_max",
            "n",
        ),
    ),
    Measurement(
        "frame",
        ("hub", "device", "encoding"),
        ("seq", "n", "rate_hz", "temp_c", "battery_pct"),
    ),
    Measurement(
        "event",
        ("hub", "device", "type"),
        ("v", "delta_mm", "source", "pct", "code", "detail"),
    ),
    Measurement("hub_status", ("hub",), ("online",)),
    Measurement(
        "rejection",
        ("reason", "hub"),
        ("topic", "field", "index", "detail", "payload_bytes"),
    ),
    Measurement(
        "device_info",
        ("hub", "device", "patient", "site"),
        (
            "active",
            "target_mm",
            "rate_mm_per_day",
            "steps_per_day",
            "latency_days",
            "osteotomy_ns",
        ),
    ),
    # ingest: the DSP estimates (ingest/estimates.py over dsp/estimator.py's records).
    Measurement(
        "step",
        ("hub", "device", "kind"),
        (
            *_PROVENANCE,
            "number",
            "t_onset_ns",
            "ramp_s",
            "delta_mm",
            "delta_event_mm",
            "k_inst_n_per_mm",
            "k_inst_std_n_per_mm",
            "k_peak_n_per_mm",
            "k_eq_n_per_mm",
            "k_eq_std_n_per_mm",
            "tau_fast_s",
            "tau_slow_s",
            "f_residual_n",
            "f_peak_n",
            "f_inst_n",
            "f_settled_n",
            "fit_rmse_n",
            "fit_r2",
            "fit_status",
            "closed_by",
            "n_samples",
            "flags",
        ),
    ),
    Measurement(
        "load_share",
        ("hub", "device"),
        (
            *_PROVENANCE,
            "share",
            "share_std",
            "f_offset_n",
            "r2",
            "resid_sd_n",
            "ref_range_n",
            "status",
            "n_samples",
            "k_device_n_per_mm",
            "flags",
            "usable",
            "removal_criterion_met",
        ),
    ),
    Measurement(
        "daily",
        ("hub", "device", "phase"),
        (
            *_PROVENANCE,
            "steps_done",
            "steps_prescribed",
            "missed_steps",
            "extra_steps",
            "mm_done",
            "mm_prescribed",
            "adherence",
            "gained_mm",
            "k_inst_n_per_mm",
            "k_eq_n_per_mm",
            "f_residual_n",
            "probe_k_inst_n_per_mm",
            "probe_k_eq_n_per_mm",
            "k_track_n_per_mm",
            "load_share",
            "load_share_std",
            "n_load_tests",
            "n_load_tests_usable",
            "k_device_n_per_mm",
            "consolidation_index",
            "trend_slope_per_day",
            "trend_slope_std_per_day",
            "projected_ready_ns",
            "projected_ready_lo_ns",
            "projected_ready_hi_ns",
            "projection_status",
            "projection_horizon_ns",
            "flags",
        ),
    ),
    Measurement(
        "quality",
        ("hub", "device", "channel"),
        (
            *_PROVENANCE,
            "noise_rms",
            "flatline",
            "n_flat",
            "n_saturated",
            "n_spikes",
            "n_nonfinite",
            "n_samples",
            "n_frames",
        ),
    ),
    # ingest: its own accounting (ingest/metrics.py).
    Measurement(
        "ingest_stats",
        ("device", "instance"),
        (
            "frames_received",
            "frames_stored",
            "samples_stored",
            "frames_duplicate",
            "seq_gaps",
            "frames_out_of_order",
            "seq_resets",
        ),
    ),
    Measurement("ingest_rejections", ("hub", "reason", "instance"), ("rejected", "rejected_again")),
    Measurement(
        "ingest_status",
        ("instance",),
        (
            "spool_bytes",
            "spool_batches",
            "spool_max_bytes",
            "raw_points",
            "raw_1s_points",
            "raw_1s_samples",
        ),
    ),
    Measurement(
        "catchup",
        ("hub", "device"),
        ("status", "from_ns", "frames", "samples", "events", "records"),
    ),
    # alerts: the history channel (alerts/engine.py, docs/alerts.md).
    Measurement(
        "alert",
        ("device", "hub", "patient", "rule", "severity"),
        ("alert_id", "event", "state", "value", "summary", "acked"),
        writer="alerts",
    ),
    Measurement(
        "alert_ack",
        ("device", "patient", "rule"),
        ("alert_id", "by", "note"),
        writer="alerts",
    ),
)
