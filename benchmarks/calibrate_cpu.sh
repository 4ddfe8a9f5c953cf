#!/usr/bin/env bash
# Regenerate the committed CPU calibration (calibrate/data/cpu-host/) and the table and
# figure of docs/calibration.md. Run on a QUIET machine (nothing else busy): the
# harness flags noisy cases but cannot make them quiet. About 2 x 1.5 min + 1.5 min
# on the 2-core dev VM (478 cases per calibration, 166 held-out cases validated).
#
#   THREADS=1 MODE=full benchmarks/calibrate_cpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
# Use the project's virtual environment when there is one.
if [ -x .venv/bin/xpusim ]; then PATH="$PWD/.venv/bin:$PATH"; fi
THREADS=${THREADS:-1}
MODE=${MODE:-full}
QUICK=""
[ "$MODE" = "quick" ] && QUICK="--quick"
OUT=calibrate/data/cpu-host

# 1. Calibrate twice in a row: the second run measures repeatability.
xpusim calibrate --device cpu --threads "$THREADS" $QUICK \
    --out "$OUT/overlay.toml" --measurements "$OUT/measurements.csv"
xpusim calibrate --device cpu --threads "$THREADS" $QUICK \
    --out "$OUT/overlay-repeat.toml" --measurements "$OUT/measurements-repeat.csv"

# 2. Validate: re-measure the held-out cases, predict with calibrated and uncalibrated
#    profiles, compare the two calibrations' predictions.
xpusim validate --device cpu --calibration "$OUT/overlay.toml" \
    --compare "$OUT/overlay-repeat.toml" --out "$OUT/validation" || true

# 3. Docs: the scatter plot and the error table.
mkdir -p docs/img
cp "$OUT/validation/validation.png" docs/img/calibration_cpu_scatter.png
python -m calibrate.docs_table "$OUT/validation/validation.json" docs/calibration.md
echo "updated $OUT, docs/img/calibration_cpu_scatter.png and docs/calibration.md"
