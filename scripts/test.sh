#!/usr/bin/env bash
# Set up (or reuse) .venv, then run the whole test suite. Extra arguments go to pytest.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/setup.sh"
cd "$ROOT"
# The tests never download; fetching the default corpus here (once, then cached) lets the tests
# that read it run. Offline, they skip and say why.
scratchlm -q data fetch shakespeare >/dev/null || echo "scratchlm: default corpus not fetched; the tests that need it will skip" >&2
exec python -m pytest -q "$@"
