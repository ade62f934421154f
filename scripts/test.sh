#!/usr/bin/env bash
# One command from a fresh clone to a full test run: virtualenv, CPU-only test dependencies,
# Debian's chromium for the browser test, @gradio/client for the API tab's JavaScript recipe,
# lint, type check (mypy), then pytest. Exits non-zero on any failure, including "no tests ran"
# (pytest exit code 5).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
# requirements-dev.txt pins torch to the CPU build; the Space itself only reads requirements.txt.
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt

if [ ! -x /usr/bin/chromium ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get install -y -q chromium >/dev/null 2>&1 \
    || { $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y -q chromium >/dev/null; }
fi

# The API tab's JavaScript recipe is run with Node in tests/test_app.py (skipped without node).
if command -v npm >/dev/null 2>&1; then
  npm ci --prefix tests/js --no-audit --no-fund --silent
fi

.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy  # tagger/ and app.py, configured in pyproject.toml

set +e
.venv/bin/python -m pytest -q "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then
  echo "pytest collected no tests: failing" >&2
  exit 1
fi
exit "$status"
