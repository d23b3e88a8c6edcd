"""What the alert service reads: DSP estimates published by ingest, device events, hub status.

Estimates arrive on `osteotel/v1/derived/{device}/estimates` as JSON objects with an envelope
(`v`, `device`, `hub`, `patient`, `t_ns`, `kind`) and the fields of the DSP records
(dsp/estimator.py: StepRecord, LoadShareRecord, QualityRecord, DailyRecord), or of ingest's
catch-up status of the device at its start (`catchup`, ingest/catchup.py). This module is the
one place that names those fields: if dsp renames one, change it here (an alias keeps the old
name readable during a migration). Unknown keys are ignored; a missing field, or a JSON null
(ingest's spelling of NaN), is NaN or empty, never an error, so a newer DSP does not stop the
alerts. An unknown `kind` is refused (a ValueError the service counts, logs and acknowledges).
"""

import json
import math
from typing import Annotated, Any, Literal

from pydantic import (
    AliasChoices,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
)

from devices.contract import DeviceId, Event, HubStatus, TimeNs
from devices.registry import PATIENT_PATTERN

__all__ = [
    "ESTIMATES_FILTER",
    "CatchupInput",
    "DailyInput",
    "Estimate",
    "LoadShareInput",
    "QualityInput",
    "StepInput",
    "estimates_topic",
    "finite",
    "input_key",
    "parse_estimate",
]

ESTIMATES_FILTER = "osteotel/v1/derived/+/estimates"
"""The MQTT filter that receives every device's estimates."""

_NAN = math.nan


def _null_is_nan(value: object) -> object:
    # ingest sends an estimate that could not be made as JSON null (strict JSON has no NaN).
    return _NAN if value is None else value


_Number = Annotated[float, BeforeValidator(_null_is_nan)]


def estimates_topic(device: str) -> str:
    """The topic ingest publishes `device`'s estimates on."""
    return f"osteotel/v1/derived/{device}/estimates"


def finite(value: float | None) -> bool:
    """Whether `value` is a number other than NaN or infinity."""
    return value is not None and math.isfinite(value)


class _Envelope(BaseModel):
    # Lax on purpose (ints where floats are expected, NaN from JSON) and tolerant of new keys.
    model_config = ConfigDict(extra="ignore", frozen=True)

    v: Literal[1]
    device: DeviceId
    hub: DeviceId
    patient: Annotated[str, Field(pattern=PATIENT_PATTERN)]
    t_ns: TimeNs


class StepInput(_Envelope):
    """A distraction step or a probe: the tissue's answer to one elongation (N/mm, N, s)."""

    kind: Literal["step", "probe"]
    delta_mm: _Number = _NAN
    k_inst_n_per_mm: _Number = _NAN
    k_eq_n_per_mm: _Number = _NAN
    tau_slow_s: _Number = _NAN
    f_residual_n: _Number = _NAN
    f_peak_n: _Number = _NAN
    fit_r2: _Number = _NAN
    fit_status: str = "ok"
    # Since issue 12 (docs/dsp.md); an older estimator's step has none of them.
    t_onset_ns: int = -1
    ramp_s: _Number = _NAN
    delta_event_mm: _Number = _NAN
    k_inst_std_n_per_mm: _Number = _NAN
    k_peak_n_per_mm: _Number = _NAN
    f_inst_n: _Number = _NAN
    flags: list[str] = []


class LoadShareInput(_Envelope):
    """A weight-bearing test: the share of the load through the device (1 = all)."""

    kind: Literal["load_share"]
    share: _Number = _NAN
    share_std: _Number = Field(_NAN, validation_alias=AliasChoices("share_std", "share_sd"))
    status: str = "ok"
    # The DSP's verdicts (docs/dsp.md): older estimators sent none, and decided nothing.
    usable: bool = True
    removal_criterion_met: bool = False
    flags: list[str] = []


class QualityInput(_Envelope):
    """Signal problems on one channel over a stretch of frames."""

    kind: Literal["quality"]
    channel: str = "force"
    # The stretch of frames the record covers (first and last problem sample); None: `t_ns`.
    t_start_ns: int | None = None
    t_end_ns: int | None = None
    flatline: bool = False
    n_saturated: int = 0
    n_spikes: int = 0
    n_nonfinite: int = 0
    n_samples: int = 0
    drift: bool = False


class DailyInput(_Envelope):
    """One device and UTC day: phase, adherence, consolidation, projected readiness."""

    kind: Literal["daily"]
    phase: str = "unknown"
    steps_done: int = 0
    steps_prescribed: int = 0
    missed_steps: int = 0
    extra_steps: int = 0
    gained_mm: _Number = _NAN
    load_share: _Number = _NAN
    load_share_std: _Number = _NAN
    n_load_tests: int = 0
    n_load_tests_usable: int = 0
    consolidation_index: _Number = _NAN
    projected_ready_ns: int = -1
    projected_ready_lo_ns: int = -1
    projected_ready_hi_ns: int = -1
    # An older estimator sent no status: its projected_ready_ns (-1 when none) was its word.
    projection_status: str = "ok"
    projection_horizon_ns: int = -1
    flags: list[str] = []


class CatchupInput(_Envelope):
    """How ingest started a device's estimator (docs/derived.md): `truncated`,
    `store_unreachable` and `capture_missing` mean its estimates lack part of its history."""

    kind: Literal["catchup"]
    status: Literal["caught_up", "rebuilt", "truncated", "store_unreachable", "capture_missing"]
    from_ns: int = -1
    frames: int = 0
    samples: int = 0
    events: int = 0
    records: int = 0


Estimate = Annotated[
    StepInput | LoadShareInput | QualityInput | DailyInput | CatchupInput,
    Field(discriminator="kind"),
]
_ESTIMATE: TypeAdapter[Estimate] = TypeAdapter(Estimate)


def input_key(item: "Estimate | Event | HubStatus") -> str:
    """What identifies an input, so that a second delivery of it is recognised.

    An estimate is its device, kind and time (and a quality record's channel: both channels
    may report a stretch from the same sample): a redelivered message and an estimate ingest
    re-derives after its own restart have the same key. A catch-up status is its device and
    the time ingest caught the device up (a new one at every start of ingest). An event is
    its device, type and time; a hub status its hub, state and time (a retained status
    comes again on every subscription).
    """
    if isinstance(item, HubStatus):
        return f"status/{item.hub}/{'online' if item.online else 'offline'}/{item.t_ns}"
    if isinstance(item, QualityInput):
        return f"estimate/{item.device}/quality/{item.channel}/{item.t_ns}"
    if isinstance(item, StepInput | LoadShareInput | DailyInput | CatchupInput):
        return f"estimate/{item.device}/{item.kind}/{item.t_ns}"
    return f"event/{item.device}/{item.type}/{item.t_ns}"


def parse_estimate(payload: bytes) -> Estimate:
    """Parse one estimate message.

    Args:
        payload: the MQTT payload, a JSON object (NaN and Infinity tokens allowed).

    Returns:
        The typed estimate.

    Raises:
        ValueError: not JSON, not an object, an unknown `kind` or a bad envelope; the
            message names the first problem.
    """
    try:
        document: Any = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"not JSON: {exc}") from exc
    if not isinstance(document, dict):
        # ValueError, not TypeError: the caller counts every bad payload as one kind of refusal.
        raise ValueError("an estimate must be a JSON object")  # noqa: TRY004
    try:
        return _ESTIMATE.validate_python(document)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(part) for part in first["loc"])
        raise ValueError(f"{where}: {first['msg']}") from None
