"""The consolidation report, rendered from an emulator run in a real InfluxDB and read back
with `pdftotext` (Debian poppler-utils)."""

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from test_grafana import DEVICES, END_NS, load_emulation

from dsp.estimator import LoadShareRecord
from ingest.estimates import estimate_line
from osteotel.report import DeviceInfo, PageSummary, render_report
from osteotel.services import InfluxDB, free_port
from osteotel.settings import InfluxSettings
from osteotel.store.influx import InfluxStore

NS_PER_DAY = 86_400 * 10**9
START_NS = END_NS - 30 * NS_PER_DAY
READY_DAY = 35  # the stand-in load shares reach 10 % exactly 35 days after START_NS
READY_DATE = "2026-01-06"  # START_NS + 35 days: 2025-12-02 + 35 d
INFOS = [DeviceInfo(device, patient, site, 4) for device, _hub, patient, site, _ in DEVICES]
ORANGE = np.array([1.0, 0.498, 0.055])  # matplotlib's tab:orange, the trend line


def _load_share_points(device: str, hub: str) -> bytes:
    """Daily load shares whose log stiffness ratio is a line crossing the 10 % criterion.

    share = 1 / (1 + 9 e^(0.15 (d - READY_DAY))), written as ingest writes an estimate.
    """
    lines = []
    for day in range(10, 30):
        t_ns = START_NS + day * NS_PER_DAY
        record = LoadShareRecord(
            device=device, t_ns=t_ns, kind="load_share", version="dsp.loadshare/1",
            calibration_id=None, t_start_ns=t_ns - 60 * 10**9, t_end_ns=t_ns,
            share=float(1.0 / (1.0 + 9.0 * np.exp(0.15 * (day - READY_DAY)))), share_std=0.01,
            f_offset_n=0.0, r2=0.99, ref_range_n=200.0, status="ok", n_samples=600,
            k_device_n_per_mm=500.0,
        )  # fmt: skip
        lines.append(estimate_line(hub, record))
    return b"".join(lines)


@pytest.fixture(scope="module")
def store(influxdb: InfluxDB, tmp_path_factory: pytest.TempPathFactory) -> Iterator[InfluxStore]:
    """A database with two emulated devices, their estimates and alerts, known load shares."""
    name = f"osteotel_test_report_{free_port()}"
    settings = InfluxSettings(url=influxdb.url, database=name, api="v1")
    with InfluxStore(settings) as influx:
        influx.ensure_database()
        load_emulation(influx, tmp_path_factory.mktemp("report"))
        device, hub = DEVICES[0][0], DEVICES[0][1]
        # The emulated load tests all fall in its last 4 h: known shares take their place, so
        # the projection can be checked against a known crossing day.
        influx.query(f'DROP SERIES FROM "load_share" WHERE "device" = \'{device}\'')
        influx.write(_load_share_points(device, hub))
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


def _alerts(store: InfluxStore, device: str) -> tuple[int, int]:
    """Distinct alerts of `device` in the period, and how many of them were acknowledged."""
    where = f"WHERE \"device\" = '{device}' AND time >= {START_NS} AND time <= {END_NS}"
    raised = {
        row[1] for s in store.query(f'SELECT "alert_id" FROM "alert" {where}') for row in s.values
    }
    acked = {
        row[1]
        for s in store.query(f'SELECT "alert_id" FROM "alert_ack" {where}')
        for row in s.values
    }
    return len(raised), len(raised & acked)


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
    raised, acked = _alerts(store, INFOS[0].device)
    assert (summaries[0].alerts, summaries[0].acknowledged) == (raised, acked)
    assert acked == 1
    assert f"Alerts {raised}, acknowledged 1" in first
    [series] = store.query(
        f'SELECT first("summary") FROM "alert" WHERE "device" = \'{INFOS[0].device}\' '
        f"AND \"event\" = 'firing' AND time >= {START_NS} AND time <= {END_NS}"
    )
    assert series.values[0][1] in first
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
