"""The device registry: which hubs exist, which devices they serve, and how each is set up.

Read from a TOML file (format in docs/registry.md) with the standard library's tomllib and
checked by pydantic; every problem becomes a `ConfigError` naming the file and the location.
`RegistryFile` reloads the file when it changes, keeping the last good registry if the new
one is invalid.
"""

import logging
import math
import os
import tomllib
from datetime import date
from pathlib import Path
from typing import Annotated, Any, Literal, Self, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from devices.contract import DeviceId
from osteotel.errors import ConfigError
from osteotel.logs import kv

__all__ = [
    "PATIENT_PATTERN",
    "Calibration",
    "Device",
    "Hub",
    "Protocol",
    "Registry",
    "RegistryFile",
    "SensorRange",
    "Site",
]

_log = logging.getLogger(__name__)
_M = TypeVar("_M", bound=BaseModel)

PATIENT_PATTERN = "^[A-Z0-9][A-Z0-9-]{2,31}$"
"""Patient pseudonyms: uppercase letters, digits and dashes, 3 to 32 long.

No spaces, lowercase letters, `@` or `.`, so a name or an e-mail address fails to load. The
pattern cannot tell a pseudonym from a bare number; docs/registry.md says where they come from.
"""

Site = Literal["tibia", "femur", "humerus", "mandible", "other"]


class _Config(BaseModel):
    # strict: a quoted "1.0" in the file is a mistake to report, not to coerce.
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class Hub(_Config):
    """A bedside gateway that relays its devices' messages to the broker."""

    id: DeviceId
    description: str = ""


class Calibration(_Config):
    """How a device's raw readings map to physical units: value = gain * raw + offset.

    Ingest applies it to every accepted frame before anything else (storage, the DSP, the
    estimates, the alerts): stored samples are calibrated values (ingest/calibration.py,
    docs/registry.md). The force is compression positive: a force sensor mounted the other
    way round (its reading falls when the device is loaded) is corrected by a negative
    `force_gain`, which is the polarity. A gain of 0 is refused.

    Attributes:
        id: the calibration record, so stored data can say which calibration it used (a new id
            also clears the DSP's sign_inconsistent flag for the device).
        force_gain: dimensionless; negative for a sensor mounted the other way round.
        force_offset_n: N, added after the gain.
        disp_gain: dimensionless.
        disp_offset_mm: mm, added after the gain.
    """

    id: Annotated[str, Field(min_length=1, max_length=64)]
    force_gain: float = 1.0
    force_offset_n: float = 0.0
    disp_gain: float = 1.0
    disp_offset_mm: float = 0.0

    @model_validator(mode="after")
    def _finite(self) -> Self:
        for name in ("force_gain", "force_offset_n", "disp_gain", "disp_offset_mm"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be finite")
        if self.force_gain == 0.0 or self.disp_gain == 0.0:
            raise ValueError("a gain of 0 would erase the signal")
        return self

    @property
    def is_identity(self) -> bool:
        """True when applying the calibration changes nothing (gains 1, offsets 0)."""
        return (
            self.force_gain == 1.0
            and self.force_offset_n == 0.0
            and self.disp_gain == 1.0
            and self.disp_offset_mm == 0.0
        )


Bounds = Annotated[tuple[float, float], Field(strict=False)]  # lax only to take a TOML list


def _check_bounds(name: str, bounds: tuple[float, float] | None) -> None:
    if bounds is None:
        return
    lo, hi = bounds
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(f"{name} must be [lo, hi] with finite lo < hi, got {list(bounds)}")


class SensorRange(_Config):
    """The range of each sensor's raw reading, inclusive bounds, in the units on the wire.

    Checked on the raw frame, before the calibration is applied (docs/registry.md): a sample
    outside it is rejected as `out_of_range`, and the rejection names the value the device
    sent. So the range is the sensor's own, in its own sign: a force sensor mounted the other
    way round reads negative under compression, and its range must allow that. `ref_load_n`
    is the external reference load (a scale); leave it out to accept any finite reference load.
    """

    force_n: Bounds
    disp_mm: Bounds
    ref_load_n: Bounds | None = None

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        for name in ("force_n", "disp_mm", "ref_load_n"):
            _check_bounds(name, getattr(self, name))
        return self


class Protocol(_Config):
    """The prescribed lengthening, used to judge adherence and to drive the emulator.

    Defaults are the classic limb protocol (docs: docs/domain.md, "The treatment"):
    latency 5-7 days for a limb, so 7; about 1 mm/day as 4 steps of 0.25 mm.

    Attributes:
        latency_days: days from osteotomy to the first step.
        rate_mm_per_day: prescribed elongation per day, mm.
        steps_per_day: steps the daily elongation is split into (the rhythm).
        target_mm: total planned elongation, mm.
    """

    latency_days: Annotated[int, Field(ge=0, le=60)] = 7  # docs/domain.md: limb latency 5-7 days
    rate_mm_per_day: Annotated[float, Field(gt=0.0, le=5.0)] = 1.0  # docs/domain.md: about 1 mm/day
    steps_per_day: Annotated[int, Field(ge=1, le=1440)] = 4  # docs/domain.md: 4 x 0.25 mm (limb)
    target_mm: Annotated[float, Field(gt=0.0, le=500.0)]

    @property
    def step_mm(self) -> float:
        """Elongation per step, mm."""
        return self.rate_mm_per_day / self.steps_per_day


class Device(_Config):
    """One sensorized distractor, the hub that serves it and the patient it is fitted to.

    Attributes:
        osteotomy: the day the bone was cut (a TOML date, UTC), from which the boards count
            the treatment day; None when not recorded. A treatment date, not personal data.
    """

    id: DeviceId
    hub: DeviceId
    patient: Annotated[str, Field(pattern=PATIENT_PATTERN)]
    site: Site
    calibration: Calibration
    range: SensorRange
    protocol: Protocol
    # Strict: a TOML date only; a datetime or a string is a mistake to report.
    osteotomy: date | None = None
    # Alert threshold overrides for this device (docs/alerts.md), checked by the alert service.
    alerts: dict[str, float] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _calibrated_range_finite(self) -> Self:
        # Validation keeps raw readings within `range`; the calibration maps that range onto
        # what is stored and fitted, and must keep it finite there: else a reading the range
        # accepts would become an infinity that no store, fit or rejection can take.
        gains = self.calibration
        for name, gain, offset, bounds in (
            ("force_n", gains.force_gain, gains.force_offset_n, self.range.force_n),
            ("disp_mm", gains.disp_gain, gains.disp_offset_mm, self.range.disp_mm),
        ):
            calibrated = [gain * bound + offset for bound in bounds]
            if not all(map(math.isfinite, calibrated)):
                raise ValueError(
                    f"calibration maps range.{name} {list(bounds)} to {calibrated}: "
                    "beyond a finite float"
                )
        return self


class Registry(_Config):
    """All hubs and devices, each keyed by its id."""

    hubs: dict[str, Hub]
    devices: dict[str, Device]

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        for key, hub in self.hubs.items():
            if key != hub.id:
                raise ValueError(f"hub keyed {key!r} has id {hub.id!r}")
        for key, device in self.devices.items():
            if key != device.id:
                raise ValueError(f"device keyed {key!r} has id {device.id!r}")
            if device.hub not in self.hubs:
                raise ValueError(f"device {device.id!r} names unknown hub {device.hub!r}")
        return self

    @classmethod
    def from_toml(cls, text: str, *, source: str = "<string>") -> "Registry":
        """Parse and check a registry in TOML.

        Args:
            text: the TOML document, with `[[hub]]` and `[[device]]` tables.
            source: where the text came from, for error messages (a path).

        Returns:
            The registry.

        Raises:
            ConfigError: the TOML is invalid or breaks a rule; the message names `source` and
                the location (`device[2].range.force_n`).
        """
        try:
            document = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{source}: invalid TOML: {exc}") from exc
        # `[alerts]` holds the alert service's threshold overrides (docs/alerts.md); it is
        # that service's to read and check.
        unknown = sorted(set(document) - {"hub", "device", "alerts"})
        if unknown:
            raise ConfigError(
                f"{source}: unknown top-level keys {unknown}; expected hub, device, alerts"
            )
        hubs = _table_list(document, "hub", source)
        devices = _table_list(document, "device", source)
        _check_unique(hubs, "hub", source)
        _check_unique(devices, "device", source)
        parsed_hubs = [_parse(Hub, item, f"hub[{i}]", source) for i, item in enumerate(hubs)]
        parsed_devices = [
            _parse(Device, item, f"device[{i}]", source) for i, item in enumerate(devices)
        ]
        try:
            return cls(
                hubs={hub.id: hub for hub in parsed_hubs},
                devices={device.id: device for device in parsed_devices},
            )
        except ValidationError as exc:
            message = exc.errors()[0]["msg"].removeprefix("Value error, ")
            raise ConfigError(f"{source}: {message}") from exc

    @classmethod
    def load(cls, path: Path) -> "Registry":
        """Read and check the registry file at `path`.

        Raises:
            ConfigError: the file cannot be read, or `from_toml` rejects it.
        """
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: cannot read registry: {exc}") from exc
        return cls.from_toml(text, source=str(path))


def _table_list(document: dict[str, Any], key: str, source: str) -> list[dict[str, Any]]:
    tables = document.get(key, [])
    if not isinstance(tables, list) or not all(isinstance(item, dict) for item in tables):
        raise ConfigError(f"{source}: `{key}` must be an array of tables, written [[{key}]]")
    return tables


def _check_unique(items: list[dict[str, Any]], kind: str, source: str) -> None:
    seen: set[object] = set()
    for position, item in enumerate(items):
        ident = item.get("id")
        if ident in seen:
            raise ConfigError(f"{source}: {kind}[{position}].id: duplicate id {ident!r}")
        seen.add(ident)


def _parse(model: type[_M], item: dict[str, Any], where: str, source: str) -> _M:
    """Validate one table, naming the first error as `file: device[2].range.force_n: message`."""
    try:
        return model.model_validate(item)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        loc = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in first["loc"])
        message = first["msg"].removeprefix("Value error, ")
        raise ConfigError(f"{source}: {where}{loc}: {message}") from exc


class RegistryFile:
    """A registry file that can be reloaded without restarting the service.

    Example:
        registry_file = RegistryFile(Path("deploy/registry.toml"))
        ...
        registry_file.reload_if_changed()   # e.g. every few seconds
        registry = registry_file.current
    """

    def __init__(self, path: Path) -> None:
        """Load the registry now.

        Raises:
            ConfigError: the file is missing or invalid.
        """
        self._path = path
        self._stamp = self._stat()
        self._current = Registry.load(path)

    @property
    def path(self) -> Path:
        """The registry file."""
        return self._path

    @property
    def current(self) -> Registry:
        """The last registry that loaded without error."""
        return self._current

    def _stat(self) -> tuple[int, int] | None:
        try:
            info = os.stat(self._path)
        except OSError:
            return None
        return info.st_mtime_ns, info.st_size

    def reload_if_changed(self) -> bool:
        """Reload the file if its modification time or size changed.

        An invalid or missing new file is logged as one `registry_reload_failed` line and
        the current registry stays in force; the same broken version is reported only once.

        Returns:
            True when a new registry was loaded and is now `current`.
        """
        # Stat before reading: if the file changes while it is read, the next call sees a
        # different stamp and reads it again.
        stamp = self._stat()
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        try:
            registry = Registry.load(self._path)
        except ConfigError as exc:
            _log.error(kv("registry_reload_failed", path=self._path, error=exc))
            return False
        self._current = registry
        _log.info(
            kv(
                "registry_reloaded",
                path=self._path,
                hubs=len(registry.hubs),
                devices=len(registry.devices),
            )
        )
        return True
