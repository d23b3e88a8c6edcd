"""The consolidation report, rendered from an emulator run in a real InfluxDB and read back
with `pdftotext` (Debian poppler-utils)."""

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from test_grafana import DEVICES, END_NS, load_emulation

from alerts.model import RULES
from apps.report import DeviceInfo, PageSummary, render_report
from apps.services import InfluxDB, free_port
from dsp.estimator import DailyRecord, LoadShareRecord, StepRecord
from ingest.estimates import estimate_line
from osteotel.settings import InfluxSettings
from osteotel.store.influx import InfluxStore
from osteotel.store.lineproto import point_line

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


def _wrong_step(day: int) -> StepRecord:
    """A step of the wrongly signed device: its force fell, so its fit reads -100,000 N/mm."""
    t_ns = START_NS + day * NS_PER_DAY
    return StepRecord(
        device=WRONG, t_ns=t_ns, kind="step", version="dsp.steps/2", calibration_id=None,
        t_start_ns=t_ns, t_end_ns=t_ns + 600 * 10**9, number=day, t_onset_ns=t_ns, ramp_s=0.0,
        delta_mm=0.25, delta_event_mm=0.25, k_inst_n_per_mm=-100_000.0,
        k_inst_std_n_per_mm=90_000.0, k_peak_n_per_mm=-50_000.0, k_eq_n_per_mm=-40_000.0,
        k_eq_std_n_per_mm=30_000.0, tau_fast_s=1.0, tau_slow_s=60.0, f_residual_n=50.0,
        f_peak_n=-12_450.0, f_inst_n=-24_950.0, f_settled_n=-9_950.0, fit_rmse_n=5.0,
        fit_r2=0.2, fit_status="ok", closed_by="timeout", n_samples=6000,
        flags=("low_snr", "poor_fit"),
    )  # fmt: skip


def _repeated_alerts(hub: str) -> bytes:
    """Ten stiffness_drop alerts of the wrongly signed device, days 12 to 21, as the alert
    service's history writes them (one firing point each)."""
    tags = {"device": WRONG, "hub": hub, "patient": WRONG_INFO.patient,
            "rule": "stiffness_drop", "severity": "critical"}  # fmt: skip
    lines = []
    for day in range(12, 22):
        fields: dict[str, float | int | bool | str | None] = {
            "alert_id": 900 + day, "event": "firing", "state": "firing", "value": -100_000.0,
            "summary": "instantaneous stiffness -100000.0 N/mm", "acked": False,
        }  # fmt: skip
        lines.append(point_line("alert", tags, fields, START_NS + day * NS_PER_DAY))
    return b"".join(lines)


READY_INFO = DeviceInfo("DX-0012", "P-12AA", "tibia", 4)  # the DSP says ready


BUSY_INFO = DeviceInfo("DX-0011", "P-11AA", "femur", 4)  # a device with 11 rules raised
BUSY_RULES = RULES[:11]


def _many_rules(hub: str) -> bytes:
    """One alert of each of 11 rules, a day apart, for BUSY_INFO."""
    lines = []
    for day, rule in enumerate(BUSY_RULES, start=1):
        tags = {"device": BUSY_INFO.device, "hub": hub, "patient": BUSY_INFO.patient,
                "rule": rule, "severity": "warning"}  # fmt: skip
        fields: dict[str, float | int | bool | str | None] = {
            "alert_id": 700 + day, "event": "firing", "state": "firing", "summary": rule,
            "acked": False,
        }  # fmt: skip
        lines.append(point_line("alert", tags, fields, START_NS + day * NS_PER_DAY))
    return b"".join(lines)


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
        lines.append(estimate_line(hub, _wrong_step(day)))
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
        influx.write(_repeated_alerts(hub))
        influx.write(_many_rules(hub))
        ready = _daily(READY_INFO.device, phase="ready", projection="ok", ready_day=READY_DAY)
        influx.write(estimate_line(hub, ready))
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
    assert summary.steps_flagged == 20


def test_impossible_step_stiffness_is_counted_not_plotted(
    store: InfluxStore, tmp_path: Path
) -> None:
    """Steps of -100,000 N/mm the DSP flagged low_snr are counted on the page and kept off the
    stiffness axis, which stays in the plausible range (no tick at -100,000 or -50,000)."""
    out = tmp_path / "wrong.pdf"
    render_report(store, [WRONG_INFO], start_ns=START_NS, end_ns=END_NS, out=out)
    [page] = [p for p in _pdf_text(out) if p.strip()]
    assert "k_inst of 20 steps flagged low_snr, not plotted" in page
    assert "20 steps lowered the force (sign), not plotted" in page
    # The plots, before the alert list (whose summaries may quote any value).
    plots = page.split("Alerts and acknowledgements")[0]
    digits = plots.replace(",", "").replace(" ", "")
    assert "100000" not in digits
    assert "50000" not in digits
    assert "1e5" not in plots


def test_repeated_alerts_are_one_line_with_their_count_and_span(
    store: InfluxStore, tmp_path: Path
) -> None:
    """Ten alerts of one rule are one line: "rule x10, first day to last day"."""
    out = tmp_path / "wrong.pdf"
    [summary] = render_report(store, [WRONG_INFO], start_ns=START_NS, end_ns=END_NS, out=out)
    [page] = [p for p in _pdf_text(out) if p.strip()]
    assert summary.alerts == 10
    lines = [line.strip() for line in page.splitlines() if "stiffness_drop" in line]
    assert len(lines) == 1
    assert " ".join(lines[0].split()).startswith(
        "stiffness_drop x10, 2025-12-14 to 2025-12-23 critical"
    )
    assert lines[0].endswith("[0 of 10 acknowledged]")


def test_alerts_beyond_the_list_are_named_not_dropped(store: InfluxStore, tmp_path: Path) -> None:
    """With 11 rules raised, nine get their line and the last line names the other two."""
    out = tmp_path / "busy.pdf"
    [summary] = render_report(store, [BUSY_INFO], start_ns=START_NS, end_ns=END_NS, out=out)
    [page] = [p for p in _pdf_text(out) if p.strip()]
    assert summary.alerts == 11
    assert f"and 2 more rules: {BUSY_RULES[9]}, {BUSY_RULES[10]}" in page
    for rule in BUSY_RULES[:9]:
        assert f"{rule}, " in page


def test_a_ready_device_reads_met_not_a_date_ahead(store: InfluxStore, tmp_path: Path) -> None:
    """In phase ready the page says the criterion is met, and gives the trend's date as such."""
    out = tmp_path / "ready.pdf"
    [summary] = render_report(store, [READY_INFO], start_ns=START_NS, end_ns=END_NS, out=out)
    [page] = [p for p in _pdf_text(out) if p.strip()]
    assert summary.phase == "ready"
    text = " ".join(page.split())
    assert (
        "Projected readiness (< 10 %) met: the DSP's removal criterion holds "
        f"(the trend reaches it {READY_DATE})"
    ) in text
