"""deploy/: the compose file validates with the compose CLI, images are pinned, secrets come
from the env file only, and the systemd units pass `systemd-analyze verify`.

No Docker engine runs here: `docker-compose config` (Debian's `docker-compose` 1.29) parses,
interpolates and validates the file against its compose schema without one.
"""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from apps.grafana import provisioning_files

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
COMPOSE = DEPLOY / "compose.yaml"
SERVICES = {"mosquitto", "influxdb", "influxdb-dbrp", "grafana", "ingest", "alerts", "emulator"}


def _tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not found: install it with `apt-get install {package}`")
    return path


def _filled_env(tmp_path: Path) -> Path:
    """deploy/env.example with every empty secret set to a throw-away value."""
    text = (DEPLOY / "env.example").read_text("utf-8")
    filled = re.sub(r"^(OSTEOTEL_\w+)=$", r"\1=test-only-value", text, flags=re.MULTILINE)
    path = tmp_path / "env"
    path.write_text(filled, encoding="utf-8")
    return path


def _compose(env_file: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [_tool("docker-compose", "docker-compose"), "-f", str(COMPOSE)]
    return subprocess.run(
        [*command, "--env-file", str(env_file), *args],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO,
        timeout=120,
    )


def test_compose_config_validates(tmp_path: Path) -> None:
    """`docker-compose config` accepts the file once the env file's secrets are filled in."""
    result = _compose(_filled_env(tmp_path), "config", "--services")
    assert result.returncode == 0, result.stderr
    assert set(result.stdout.split()) == SERVICES


def test_compose_refuses_missing_secrets() -> None:
    """With the secrets of env.example left empty, compose refuses and names the missing key."""
    result = _compose(DEPLOY / "env.example", "config", "-q")
    assert result.returncode != 0
    assert "set OSTEOTEL_" in result.stderr


def test_every_compose_variable_is_documented_in_env_example() -> None:
    """Each ${VARIABLE} the compose file reads has a line in deploy/env.example."""
    used = set(re.findall(r"\$\{(\w+)", COMPOSE.read_text("utf-8")))
    documented = set(
        re.findall(r"^(\w+)=", (DEPLOY / "env.example").read_text("utf-8"), re.MULTILINE)
    )
    assert used
    assert used <= documented, used - documented


def test_images_are_pinned_to_versions() -> None:
    """Every third-party image names an exact version, never `latest` or a bare name."""
    images = re.findall(r"^\s+image:\s*(\S+)", COMPOSE.read_text("utf-8"), re.MULTILINE)
    third_party = [image for image in images if not image.startswith("${")]
    assert len(third_party) >= 4
    for image in third_party:
        assert re.fullmatch(r"[\w./-]+:\d+(\.\d+)+", image), image


def test_no_secret_values_in_compose() -> None:
    """Passwords and tokens in the compose file are variables, never literal values."""
    for line in COMPOSE.read_text("utf-8").splitlines():
        key = re.match(r"^\s+(\w*(PASSWORD|TOKEN)\w*):\s*(\S.*)$", line)
        if key:
            assert key.group(3).startswith("${"), line


def test_grafana_mounts_match_provisioning() -> None:
    """Compose mounts deploy/grafana where the generated provisioning files expect it."""
    text = COMPOSE.read_text("utf-8")
    provider = provisioning_files()["provisioning/dashboards/osteotel.yaml"]
    dashboards_path = re.search(r"path: (\S+)", provider)
    assert dashboards_path is not None
    assert f"./grafana/dashboards:{dashboards_path.group(1)}:ro" in text
    assert "./grafana/provisioning:/etc/grafana/provisioning:ro" in text


@pytest.mark.parametrize(
    "unit",
    sorted(p.name for p in (DEPLOY / "systemd").glob("*.service")),
    ids=sorted(p.name for p in (DEPLOY / "systemd").glob("*.service")),
)
def test_systemd_unit_verifies(tmp_path: Path, unit: str) -> None:
    """The unit passes `systemd-analyze verify` with no warning (ExecStart pointed at true)."""
    analyze = _tool("systemd-analyze", "systemd")
    text = (DEPLOY / "systemd" / unit).read_text("utf-8")
    # verify insists the executable exists; the venv is not installed on a test machine.
    copy = tmp_path / unit
    copy.write_text(text.replace("/opt/osteotel/venv/bin/osteotel", "/bin/true"), "utf-8")
    result = subprocess.run(
        [analyze, "verify", str(copy)], capture_output=True, text=True, check=False, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == ""
    assert "ExecStart=/opt/osteotel/venv/bin/osteotel " in text
