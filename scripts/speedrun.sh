#!/usr/bin/env bash
# Set up (or reuse) .venv, then run the main job on the default corpus. Extra arguments go to
# `scratchlm tokenizer train`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/setup.sh"
cd "$ROOT"
RUN="${SCRATCHLM_RUN_DIR:-runs/speedrun}"
scratchlm data fetch shakespeare
scratchlm tokenizer train --corpus shakespeare --vocab-size 8192 --output "$RUN/tokenizer" "$@"
scratchlm tokenizer stats "$RUN/tokenizer" --corpus shakespeare
