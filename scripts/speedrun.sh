#!/usr/bin/env bash
# Set up (or reuse) .venv, then run the main job: `scratchlm speedrun` on the default corpus.
# Extra arguments go to `scratchlm speedrun` (e.g. --train-minutes 5, --set model.n_layer=6).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/setup.sh"
cd "$ROOT"
exec scratchlm speedrun "$@"
