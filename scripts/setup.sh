#!/usr/bin/env bash
# Sets up a fresh machine for hubscout: the offline datasets, a virtualenv in .venv, the package and its tools.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -d /usr/share/datasets/fashion-mnist ]; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 \
    || { $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y -q dataset-fashion-mnist >/dev/null; }
fi

PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
.venv/bin/python -m pip install -q -e '.[dev]'
# animal-mnist's declared dependencies are heavy and unused: it is only a data file for us.
.venv/bin/python -m pip install -q --no-deps animal-mnist
.venv/bin/python -c "import hubscout, torch, timm; print('hubscout', hubscout.__version__, '| torch', torch.__version__)"
