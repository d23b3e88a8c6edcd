"""The consolidation report, rendered from an emulator run in a real InfluxDB and read back
with `pdftotext` (Debian poppler-utils)."""

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from test_grafana import DEVICES, END_NS, load_emulation

from osteotel.report import DeviceInfo, PageSummary, render_report
from osteotel.services import InfluxDB, free_port
from osteotel.settings import InfluxSettings
from osteotel.store.influx import InfluxStore
from osteotel.store.lineproto import point_line

NS_PER_DAY = 86_400 * 10**9
START_NS = END_NS - 30 * NS_PER_DAY
READY_DAY = 35  # the stand-in load shares reach 10 % exactly 35 days after START_NS
READY_DATE = "2026-01-06"  # START_NS + 35 days: 2025-12-02 + 35 d
INFOS = [DeviceInfo(device, patient, site, 4) for device, _hub, patient, site in DEVICES]
ORANGE = np.array([1.0, 0.498, 0.055])  # matplotlib's tab:orange, the trend line


def _load_share_points(device: str, hub: str) -> bytes:
    """Daily load shares whose log stiffness ratio is a line crossing the 10 % criterion.

    Stand-ins until ingest writes `load_share`: share = 1 / (1 + 9 e^(0.15 (d - READY_DAY))).
    """
    lines = []
    for day in range(10, 30):
        share = 1.0 / (1.0 + 9.0 * np.exp(0.15 * (day - READY_DAY)))
        fields = {"share": float(share), "share_std": 0.01, "r2": 0.99}
        lines.append(
            point_line(
                "load_share", {"hub": hub, "device": device}, fields, START_NS + day * NS_PER_DAY
            )
        )
    return b"".join(lines)


@pytest.fixture(scope="module")
def store(influxdb: InfluxDB, tmp_path_factory: pytest.TempPathFactory) -> Iterator[InfluxStore]:
    """A database with two emulated devices and stand-in load shares and alerts."""
    name = f"osteotel_test_report_{free_port()}"
    settings = InfluxSettings(url=influxdb.url, database=name, api="v1")
    with InfluxStore(settings) as influx:
        influx.ensure_database()
        load_emulation(influx, tmp_path_factory.mktemp("report"))
        device, hub = DEVICES[0][0], DEVICES[0][1]
        influx.write(_load_share_points(device, hub))
        alert_tags = {"hub": hub, "device": device, "severity": "red", "rule": "overload"}
        influx.write(
            point_line(
                "alert",
                alert_tags,
                {"alert_id": "A-1", "state": "firing", "message": "force spike 910 N"},
                START_NS + 12 * NS_PER_DAY,
            )
            + point_line(
                "alert_ack",
                {"hub": hub, "device": device},
                {"alert_id": "A-1", "by": "clinician-3", "note": "fall, checked"},
                START_NS + 12 * NS_PER_DAY + 3600 * 10**9,
            )
        )
        yield influx
        influx.query(f'DROP DATABASE "{name}"')


def _pdf_text(path: Path) -> list[str]:
    """The text of each page."""
    binary = shutil.which("pdftotext")
    if binary is None:
        pytest.fail("pdftotext not found: install it with `apt-get install poppler-utils`")
    text = subprocess.run(
        [binary, "-layout", str(path), "-"], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    return text.split("\f")


def _events(store: InfluxStore, device: str) -> tuple[int, float]:
    series = store.query(
        'SELECT count("delta_mm"), sum("delta_mm") FROM "event" WHERE "type" = '
        f"'distraction_step' AND \"device\" = '{device}'"
    )
    return int(series[0].values[0][1]), float(series[0].values[0][2])


def test_pdf_has_one_page_per_device_with_its_figures(store: InfluxStore, tmp_path: Path) -> None:
    """Each device's page names its pseudonym, the period, its step count and projection."""
    out = tmp_path / "report.pdf"
    summaries = render_report(store, INFOS, start_ns=START_NS, end_ns=END_NS, out=out)
    pages = [page for page in _pdf_text(out) if page.strip()]
    assert len(pages) == len(INFOS)
    for page, info, summary in zip(pages, INFOS, summaries, strict=True):
        steps, elongation_mm = _events(store, info.device)
        assert summary.steps_performed == steps
        assert summary.elongation_mm == pytest.approx(elongation_mm)
        assert f"Patient {info.patient}" in page
        assert f"Device {info.device}" in page
        assert "Period 2025-12-02 to 2026-01-01 (UTC)" in page
        assert f"Distraction steps performed {steps} ({elongation_mm:.2f} mm)" in page
    first = pages[0]
    assert f"projected readiness (< 10 %) {READY_DATE}" in first
    assert "Alerts 1, acknowledged 1" in first
    assert "force spike 910 N" in first
    assert "not projected" in pages[1]


def test_projection_comes_from_the_load_share_trend(store: InfluxStore, tmp_path: Path) -> None:
    """Shares on a log-linear path to 10 % give that crossing day as the readiness date."""
    summaries = render_report(
        store, INFOS[:1], start_ns=START_NS, end_ns=END_NS, out=tmp_path / "r.pdf"
    )
    summary: PageSummary = summaries[0]
    assert summary.projected_ready_ns is not None
    assert abs(summary.projected_ready_ns - (START_NS + READY_DAY * NS_PER_DAY)) < 3600 * 10**9
    assert summary.days_with_data >= 1
    assert summary.frames > 0


def test_png_is_not_blank(store: InfluxStore, tmp_path: Path) -> None:
    """The PNG page has drawn content, the orange trend line among it."""
    import matplotlib.image  # noqa: PLC0415 - matplotlib only for the tests that need it

    out = tmp_path / "report.png"
    render_report(store, INFOS[:1], start_ns=START_NS, end_ns=END_NS, out=out)
    pixels = matplotlib.image.imread(out)[:, :, :3]
    non_white = np.mean(np.any(pixels < 0.95, axis=2))
    assert non_white > 0.01
    assert np.any(np.all(np.abs(pixels - ORANGE) < 0.05, axis=2))


@pytest.mark.parametrize(
    ("name", "devices"),
    [("r.svg", 1), ("r.png", 2)],
    ids=["unknown-suffix", "png-several-devices"],
)
def test_bad_output_is_refused(store: InfluxStore, tmp_path: Path, name: str, devices: int) -> None:
    """An unsupported file type, or a PNG for several devices, is refused before any query."""
    with pytest.raises(ValueError, match=r"report file|PNG holds"):
        render_report(store, INFOS[:devices], start_ns=START_NS, end_ns=END_NS, out=tmp_path / name)
    assert not (tmp_path / name).exists()
