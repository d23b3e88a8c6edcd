#!/usr/bin/env bash
# osteotel's two entry points on a fresh Debian/Ubuntu machine:
#   bash dev.sh demo   local Mosquitto + InfluxDB, emulated hubs into ingest for a minute, then what landed
#   bash dev.sh test   ruff, mypy and the whole test suite against real servers
# Both install what is missing first: Debian packages (apt-get, as root or through sudo) and the venv.
set -euo pipefail
cd "$(dirname "$0")"

VENV=${OSTEOTEL_VENV:-.venv}
DEBIAN_PACKAGES=(python3 python3-venv mosquitto mosquitto-clients influxdb victoria-metrics
                 prometheus-alertmanager openssl docker-compose poppler-utils systemd)
# The binary each package must leave on the machine; a missing one triggers the install.
# openssl: the security tests make their own throw-away CA and certificates; docker-compose
# validates deploy/compose.yaml (no Docker engine needed); pdftotext reads the report back;
# systemd-analyze verifies the systemd units.
BINARIES=(python3 mosquitto mosquitto_pub influxd victoria-metrics prometheus-alertmanager openssl
          docker-compose pdftotext systemd-analyze)

have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ]; }

install_debian_packages() {
  local missing=0 b
  for b in "${BINARIES[@]}"; do have "$b" || missing=1; done
  python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || missing=1
  [ "$missing" = 1 ] || return 0
  local sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  echo "dev.sh: installing Debian packages: ${DEBIAN_PACKAGES[*]}"
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${DEBIAN_PACKAGES[@]}"
}

install_venv() {
  [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
  local stamp="$VENV/.osteotel-installed"
  if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    "$VENV/bin/python" -m pip install -q --upgrade pip
    "$VENV/bin/python" -m pip install -q -e '.[test]'
    touch "$stamp"
  fi
}

case "${1:-}" in
  demo)
    install_debian_packages; install_venv
    shift; exec "$VENV/bin/osteotel" demo "$@" ;;
  test)
    install_debian_packages; install_venv
    shift
    "$VENV/bin/ruff" check .
    "$VENV/bin/ruff" format --check .
    "$VENV/bin/mypy"
    exec "$VENV/bin/pytest" "$@" ;;
  *)
    echo "usage: bash dev.sh demo|test" >&2; exit 2 ;;
esac
