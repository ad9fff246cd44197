#!/usr/bin/env bash
# fcos_parity: our o2m-only FCOS (torchvision's recipe and the paper's) against torchvision's FCOS on the same
# ResNet-18 FPN body, data, loader, optimiser, 1x schedule and seeds {0,1,2} (9 runs, sequential on this CPU).
# Goal: ours (torchvision recipe) >= torchvision's, within one std. Results: experiments/results/fcos_parity/.
#   experiments/fcos_parity.sh [Hydra overrides for every run]
# Environment: PYTHON (python), SEEDS (0,1,2), OUT (experiments/results/fcos_parity), REUSE (a folder of finished
#   date.train runs: those with the same config as a recipe and seed are taken instead of retrained).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
"$PYTHON" experiments/fcos_parity.py --out "${OUT:-experiments/results/fcos_parity}" --seeds "${SEEDS:-0,1,2}" \
  ${REUSE:+--reuse "$REUSE"} "$@"
