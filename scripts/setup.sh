#!/usr/bin/env bash
# Sets up a fresh machine for hubscout: the offline datasets, a virtualenv in .venv, the package and its tools.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
apt_install() {  # from the package lists as they are, else after refreshing them
  $SUDO apt-get install -y -q "$@" >/dev/null 2>&1 \
    || { $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y -q "$@" >/dev/null; }
}
[ -d /usr/share/datasets/fashion-mnist ] || apt_install dataset-fashion-mnist
# Headless Chromium for the web page's end-to-end test (Playwright drives this binary; it downloads none).
[ -x /usr/bin/chromium ] || apt_install chromium

PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
.venv/bin/python -m pip install -q -e '.[dev]'
# animal-mnist's declared dependencies are heavy and unused: it is only a data file for us.
.venv/bin/python -m pip install -q --no-deps animal-mnist
.venv/bin/python -c "import hubscout, torch, timm; print('hubscout', hubscout.__version__, '| torch', torch.__version__)"
