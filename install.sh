#!/usr/bin/env bash
# One-command setup on Debian with Python 3.11: system library for MedMNIST-C, then a venv with medrobust[dev].
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
if ! ldconfig -p | grep -q libMagickWand-6.Q16; then
  $SUDO apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libmagickwand-6.q16-6 >/dev/null
fi
# PostgreSQL server for the sweeps' multi-machine storage tests (a throwaway cluster on loopback)
if ! command -v initdb >/dev/null && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  $SUDO apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
fi
# A real headless browser for the leaderboard page's test (benchmark/): Debian's chromium and its WebDriver
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  $SUDO apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[dev]'
# the docs site's and the page test's tools, a second call: they and torchattacks pin different requests (pyproject)
.venv/bin/python -m pip install -q -e '.[docs]'
echo "medrobust installed in .venv: activate with 'source .venv/bin/activate'"
