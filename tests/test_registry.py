"""Loading, checking and hot-reloading the device registry."""

import logging
import os
from datetime import date
from pathlib import Path

import pytest

from devices.registry import Registry, RegistryFile
from osteotel.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parent.parent / "deploy" / "registry.example.toml"

HUB = """
[[hub]]
id = "HUB-A"
"""

DEVICE = """
[[device]]
id = "DX-0001"
hub = "HUB-A"
patient = "P-7F3A"
site = "tibia"
calibration = { id = "CAL-1" }
range = { force_n = [-2000.0, 2000.0], disp_mm = [-5.0, 120.0] }
protocol = { target_mm = 50.0 }
"""

# Where a wrong osteotomy value is reported: quoted, or with a time, it is not a TOML date.
OSTEOTOMY_AT = r"device\[0\]\.osteotomy: Input should be a valid date"


def test_example_registry_has_the_demo_hubs_and_devices() -> None:
    """The example registry holds HUB-A, HUB-B and three devices, DX-0003 a mandible on HUB-B."""
    registry = Registry.load(EXAMPLE)
    assert sorted(registry.hubs) == ["HUB-A", "HUB-B"]
    assert {d.id: d.hub for d in registry.devices.values()} == {
        "DX-0001": "HUB-A",
        "DX-0002": "HUB-A",
        "DX-0003": "HUB-B",
    }
    mandible = registry.devices["DX-0003"]
    assert mandible.site == "mandible"
    assert (mandible.protocol.steps_per_day, mandible.protocol.step_mm) == (2, 0.5)
    assert mandible.protocol.latency_days == 7
    assert {d.id: d.osteotomy for d in registry.devices.values()} == {
        "DX-0001": date(2026, 9, 1),
        "DX-0002": date(2026, 10, 6),
        "DX-0003": date(2026, 11, 2),
    }


def test_osteotomy_is_an_optional_toml_date() -> None:
    """`osteotomy` is read as a date when given and is None when left out."""
    dated = HUB + DEVICE.replace("site =", "osteotomy = 2026-09-01\nsite =")
    assert Registry.from_toml(dated).devices["DX-0001"].osteotomy == date(2026, 9, 1)
    assert Registry.from_toml(HUB + DEVICE).devices["DX-0001"].osteotomy is None


def test_omitted_keys_take_the_documented_defaults() -> None:
    """Omitted protocol and calibration keys default to the limb protocol and identity gains."""
    device = Registry.from_toml(HUB + DEVICE).devices["DX-0001"]
    protocol = device.protocol
    assert (protocol.latency_days, protocol.rate_mm_per_day, protocol.steps_per_day) == (7, 1.0, 4)
    assert protocol.step_mm == 0.25
    assert (device.calibration.force_gain, device.calibration.disp_offset_mm) == (1.0, 0.0)
    assert device.range.ref_load_n is None


def test_integers_are_taken_for_floats() -> None:
    """A TOML integer is accepted where a float is expected."""
    text = HUB + DEVICE.replace("[-2000.0, 2000.0]", "[-2000, 2000]")
    assert Registry.from_toml(text).devices["DX-0001"].range.force_n == (-2000.0, 2000.0)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[[hub]\nid = 1", "invalid TOML"),
        (HUB + HUB + DEVICE, r"hub\[1\]\.id: duplicate id 'HUB-A'"),
        (HUB + DEVICE + DEVICE, r"device\[1\]\.id: duplicate id 'DX-0001'"),
        (DEVICE, "unknown hub 'HUB-A'"),
        (HUB.replace("HUB-A", "HUB A") + DEVICE, r"hub\[0\]\.id: String should match"),
        (HUB + DEVICE.replace('"DX-0001"', '"DX/0001"'), r"device\[0\]\.id"),
        (HUB + DEVICE.replace("P-7F3A", "Jane Doe"), r"device\[0\]\.patient"),
        (HUB + DEVICE.replace("P-7F3A", "p-7f3a"), r"device\[0\]\.patient"),
        (HUB + DEVICE.replace('"tibia"', '"skull"'), r"device\[0\]\.site"),
        (HUB + DEVICE.replace("[-2000.0, 2000.0]", "[2000.0, -2000.0]"), r"range: force_n"),
        (HUB + DEVICE.replace("[-5.0, 120.0]", "[1.0, 1.0]"), r"range: disp_mm"),
        (HUB + DEVICE.replace("[-5.0, 120.0]", "[1.0]"), r"range\.disp_mm"),
        (HUB + DEVICE.replace("[-5.0, 120.0]", "[nan, 1.0]"), r"range: disp_mm"),
        (HUB + DEVICE.replace("target_mm = 50.0", 'target_mm = "50"'), r"protocol\.target_mm"),
        (HUB + DEVICE.replace("{ target_mm = 50.0 }", "{ }"), r"protocol\.target_mm: Field"),
        (HUB + DEVICE.replace("target_mm", "steps_per_day = 0, target_mm"), "steps_per_day"),
        (HUB + DEVICE.replace('{ id = "CAL-1" }', '{ id = "CAL-1", force_gain = 0.0 }'), "gain"),
        (
            HUB
            + DEVICE.replace("[-2000.0, 2000.0]", "[-1e308, 1e308]").replace(
                '{ id = "CAL-1" }', '{ id = "CAL-1", force_gain = 10.0 }'
            ),
            r"device\[0\]: calibration maps range\.force_n .* beyond a finite float",
        ),
        (HUB + DEVICE.replace("site =", "colour = 1\nsite ="), r"device\[0\]\.colour: Extra"),
        (HUB + DEVICE + "\n[[sensor]]\nid = 1\n", "unknown top-level keys"),
        (HUB + DEVICE.replace("site =", 'osteotomy = "2026-09-01"\nsite ='), OSTEOTOMY_AT),
        (HUB + DEVICE.replace("site =", "osteotomy = 2026-09-01T08:00:00\nsite ="), OSTEOTOMY_AT),
        ("hub = 1\n", "array of tables"),
    ],
    ids=[
        "bad-toml",
        "duplicate-hub",
        "duplicate-device",
        "device-on-unknown-hub",
        "bad-hub-id",
        "bad-device-id",
        "patient-with-space",
        "patient-lowercase",
        "unknown-site",
        "range-reversed",
        "range-empty",
        "range-one-value",
        "range-nan",
        "string-number",
        "missing-target",
        "zero-steps",
        "zero-gain",
        "calibrated-range-overflows",
        "unknown-key",
        "unknown-table",
        "osteotomy-string",
        "osteotomy-datetime",
        "hub-not-a-table",
    ],
)
def test_invalid_registry_raises_config_error_naming_source_and_location(
    text: str, message: str
) -> None:
    """A broken registry raises ConfigError naming the file and where the problem is."""
    with pytest.raises(ConfigError, match=message) as caught:
        Registry.from_toml(text, source="site.toml")
    assert str(caught.value).startswith("site.toml: ")


def test_missing_file_raises_config_error(tmp_path: Path) -> None:
    """A registry path that does not exist raises ConfigError with the path."""
    path = tmp_path / "absent.toml"
    with pytest.raises(ConfigError, match="cannot read registry") as caught:
        Registry.load(path)
    assert str(path) in str(caught.value)


def _write(path: Path, text: str, mtime_ns: int) -> None:
    path.write_text(text, encoding="utf-8")
    # Set the stamp explicitly: two writes within the filesystem's clock tick look the same.
    os.utime(path, ns=(mtime_ns, mtime_ns))


def test_reload_picks_up_a_changed_file(tmp_path: Path) -> None:
    """A changed registry file replaces the current registry; an unchanged one does not reload."""
    path = tmp_path / "registry.toml"
    _write(path, HUB + DEVICE, 1_000_000_000)
    registry_file = RegistryFile(path)
    assert registry_file.reload_if_changed() is False
    second = DEVICE.replace("DX-0001", "DX-0002")
    _write(path, HUB + DEVICE + second, 2_000_000_000)
    assert registry_file.reload_if_changed() is True
    assert sorted(registry_file.current.devices) == ["DX-0001", "DX-0002"]


def test_reload_keeps_the_old_registry_when_the_new_file_is_broken(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A broken new file is logged once and the last good registry stays in force."""
    path = tmp_path / "registry.toml"
    _write(path, HUB + DEVICE, 1_000_000_000)
    registry_file = RegistryFile(path)
    before = registry_file.current
    _write(path, HUB + DEVICE.replace("P-7F3A", "Jane Doe"), 2_000_000_000)
    with caplog.at_level(logging.ERROR, logger="devices.registry"):
        assert registry_file.reload_if_changed() is False
        assert registry_file.reload_if_changed() is False
    assert registry_file.current is before
    failures = [
        r.getMessage() for r in caplog.records if "registry_reload_failed" in r.getMessage()
    ]
    assert len(failures) == 1
    assert failures[0].startswith("registry_reload_failed path=")
    _write(path, HUB + DEVICE.replace("P-7F3A", "P-0B1C"), 3_000_000_000)
    assert registry_file.reload_if_changed() is True
    assert registry_file.current.devices["DX-0001"].patient == "P-0B1C"


def test_reload_keeps_the_old_registry_when_the_file_disappears(tmp_path: Path) -> None:
    """A deleted registry file leaves the current registry in force."""
    path = tmp_path / "registry.toml"
    _write(path, HUB + DEVICE, 1_000_000_000)
    registry_file = RegistryFile(path)
    path.unlink()
    assert registry_file.reload_if_changed() is False
    assert list(registry_file.current.devices) == ["DX-0001"]


def test_registry_file_raises_on_a_broken_first_load(tmp_path: Path) -> None:
    """RegistryFile refuses to start from an invalid file."""
    path = tmp_path / "registry.toml"
    _write(path, DEVICE, 1_000_000_000)
    with pytest.raises(ConfigError, match="unknown hub"):
        RegistryFile(path)


def test_alert_overrides_are_part_of_the_registry() -> None:
    """`[alerts]` tables and a device's `alerts` table load; the alert service reads them."""
    text = EXAMPLE.read_text(encoding="utf-8").replace(
        'id = "DX-0001"', 'id = "DX-0001"\nalerts = { force_critical_n = 800.0 }', 1
    )
    registry = Registry.from_toml("[alerts]\nbattery_warning_pct = 30.0\n" + text)
    assert registry.devices["DX-0001"].alerts == {"force_critical_n": 800.0}
    assert registry.devices["DX-0002"].alerts == {}


def test_a_negative_force_gain_is_the_polarity_of_a_reversed_sensor() -> None:
    """force_gain = -1 loads (a sensor mounted the other way); the default is the identity."""
    reversed_sensor = HUB + DEVICE.replace(
        '{ id = "CAL-1" }', '{ id = "CAL-2", force_gain = -1.0 }'
    )
    calibration = Registry.from_toml(reversed_sensor).devices["DX-0001"].calibration
    assert calibration.force_gain == -1.0
    assert not calibration.is_identity
    assert Registry.from_toml(HUB + DEVICE).devices["DX-0001"].calibration.is_identity
