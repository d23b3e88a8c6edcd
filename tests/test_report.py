"""The consolidation report, rendered from an emulator run in a real InfluxDB and read back
with `pdftotext` (Debian poppler-utils)."""

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from test_grafana import DEVICES, END_NS, load_emulation

from apps.report import DeviceInfo, PageSummary, render_report
from apps.services import InfluxDB, free_port
from dsp.estimator import DailyRecord, LoadShareRecord
from ingest.estimates import estimate_line
from osteotel.settings import InfluxSettings
from osteotel.store.influx import InfluxStore

NS_PER_DAY = 86_400 * 10**9
START_NS = END_NS - 30 * NS_PER_DAY
READY_DAY = 35  # the stand-in load shares reach 10 % exactly 35 days after START_NS
READY_DATE = "2026-01-06"  # START_NS + 35 days: 2025-12-02 + 35 d
INFOS = [DeviceInfo(device, patient, site, 4) for device, _hub, patient, site, _ in DEVICES]
ORANGE = np.array([1.0, 0.498, 0.055])  # matplotlib's tab:orange, the trend line


WRONG = "DX-0009"  # a device whose sensor is mounted the other way, uncorrected
WRONG_INFO = DeviceInfo(WRONG, "P-93D0", "tibia", 4)


def _share(device: str, day: int, share: float, *, flags: tuple[str, ...] = ()) -> LoadShareRecord:
    t_ns = START_NS + day * NS_PER_DAY
    return LoadShareRecord(
        device=device, t_ns=t_ns, kind="load_share", version="dsp.loadshare/2",
        calibration_id=None, t_start_ns=t_ns - 60 * 10**9, t_end_ns=t_ns, share=share,
        share_std=0.01, f_offset_n=0.0, r2=0.99, resid_sd_n=1.0, ref_range_n=200.0,
        status="ok", n_samples=600, k_device_n_per_mm=500.0, flags=flags, usable=not flags,
        removal_criterion_met=False,
    )  # fmt: skip


def _daily(device: str, *, phase: str, projection: str, ready_day: float | None) -> DailyRecord:
    """The DSP's last daily record of the period, with its projection."""
    ready_ns = START_NS + round(ready_day * NS_PER_DAY) if ready_day is not None else -1
    band = 2 * NS_PER_DAY if ready_day is not None else 0
    return DailyRecord(
        device=device, t_ns=END_NS, kind="daily", version="dsp.estimator/1",
        calibration_id=None, t_start_ns=END_NS, t_end_ns=END_NS, phase=phase,  # type: ignore[arg-type]
        steps_done=0, steps_prescribed=0, missed_steps=0, extra_steps=0, mm_done=0.0,
        mm_prescribed=0.0, adherence=float("nan"), gained_mm=10.0, k_inst_n_per_mm=float("nan"),
        k_eq_n_per_mm=float("nan"), f_residual_n=float("nan"),
        probe_k_inst_n_per_mm=float("nan"), probe_k_eq_n_per_mm=float("nan"),
        k_track_n_per_mm=float("nan"), load_share=float("nan"), load_share_std=float("nan"),
        n_load_tests=0, n_load_tests_usable=0, k_device_n_per_mm=float("nan"),
        consolidation_index=float("nan"), trend_slope_per_day=float("nan"),
        trend_slope_std_per_day=float("nan"), projected_ready_ns=ready_ns,
        projected_ready_lo_ns=ready_ns - band if ready_day is not None else -1,
        projected_ready_hi_ns=ready_ns + band if ready_day is not None else -1,
        projection_status=projection, projection_horizon_ns=-1,
        flags=("sign_inconsistent",) if device == WRONG else (),
    )  # fmt: skip


def _load_share_points(device: str, hub: str) -> bytes:
    """Daily usable load shares whose log stiffness ratio is a line crossing the 10 %
    criterion, share = 1 / (1 + 9 e^(0.15 (d - READY_DAY))), and the DSP's daily record
    projecting that day; and a wrongly signed device's flagged shares; written as ingest
    writes estimates."""
    lines = []
    for day in range(10, 30):
        share = float(1.0 / (1.0 + 9.0 * np.exp(0.15 * (day - READY_DAY))))
        lines.append(estimate_line(hub, _share(device, day, share)))
        wrong = _share(WRONG, day, -share, flags=("implausible", "sign_inconsistent"))
        lines.append(estimate_line(hub, wrong))
    lines.append(
        estimate_line(hub, _daily(device, phase="consolidation", projection="ok",
                                  ready_day=READY_DAY))
    )  # fmt: skip
    lines.append(
        estimate_line(hub, _daily(WRONG, phase="consolidation", projection="insufficient_days",
                                  ready_day=None))
    )  # fmt: skip
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
    assert f"Projected readiness (< 10 %) {READY_DATE}" in first
    raised, acked = _alerts(store, INFOS[0].device)
    assert (summaries[0].alerts, summaries[0].acknowledged) == (raised, acked)
    assert acked == 1
    assert f"Alerts {raised}, acknowledged 1" in first
    [series] = store.query(
        f'SELECT first("summary") FROM "alert" WHERE "device" = \'{INFOS[0].device}\' '
        f"AND \"event\" = 'firing' AND time >= {START_NS} AND time <= {END_NS}"
    )
    assert series.values[0][1] in first
    assert "no projection (" in pages[1]
    # Repeated alerts are one line per rule, with their count.
    rules = {s.tags["rule"] for s in store.query(
        f'SELECT count("alert_id") FROM "alert" WHERE "device" = \'{INFOS[0].device}\' '
        f"AND \"event\" = 'firing' AND time >= {START_NS} AND time <= {END_NS} GROUP BY \"rule\""
    )}  # fmt: skip
    lines = [line.strip() for line in first.splitlines()]
    assert rules
    for rule in rules:
        assert sum(line.startswith(rule) for line in lines) == 1, rule


def test_projection_is_the_dsps(store: InfluxStore, tmp_path: Path) -> None:
    """The readiness date is the one the DSP's last daily record projects."""
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


def test_a_wrongly_signed_device_is_never_shown_ready(store: InfluxStore, tmp_path: Path) -> None:
    """A device whose shares the DSP flags (-94 % to -3 %, sign_inconsistent) gets a page
    without a share, a trend or a date: its tests are counted as not usable and drawn apart
    with their flags, and the axis keeps to the plausible range."""
    out = tmp_path / "wrong.pdf"
    [summary] = render_report(store, [WRONG_INFO], start_ns=START_NS, end_ns=END_NS, out=out)
    assert summary.share_now is None
    assert summary.projected_ready_ns is None
    assert summary.shares_unusable == 20
    assert summary.phase == "consolidation"
    [page] = [p for p in _pdf_text(out) if p.strip()]
    assert "load share now none (20 tests not usable, left out)" in page
    assert "no projection (fewer than 3 days of usable load shares)" in page
    assert "sign_inconsistent" in page
    assert "ready" not in page.lower().replace("projected readiness", "")
