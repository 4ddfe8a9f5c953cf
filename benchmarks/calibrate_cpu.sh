#!/usr/bin/env bash
# Regenerate the committed CPU calibration (calibrate/data/cpu-host/) and the table and
# figure of docs/calibration.md. Run on a QUIET machine (nothing else busy): the
# harness flags noisy cases but cannot make them quiet. About 7 min on the 2-core dev
# VM (2 x 538 cases calibrated, 201 held-out cases validated twice; 2026-12-06).
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

# 2. Validate: predict the held-out cases (never fitted) with the calibrated and the
#    uncalibrated profiles and compare the two calibrations' predictions. The table uses
#    the held-out times measured in the calibration run itself (same machine state as
#    the fit cases); validation-remeasured/ times them again now, which on a shared
#    machine also shows how much the machine drifted between runs.
xpusim validate --device cpu --calibration "$OUT/overlay.toml" \
    --compare "$OUT/overlay-repeat.toml" --measurements "$OUT/measurements.csv" \
    --out "$OUT/validation" || true
xpusim validate --device cpu --calibration "$OUT/overlay.toml" \
    --compare "$OUT/overlay-repeat.toml" --out "$OUT/validation-remeasured" || true

# 3. The named calibrated profile (--device cpu-host-calibrated) is a copy of the overlay.
{ echo "# The committed CPU calibration (copy of calibrate/data/cpu-host/overlay.toml): use it as --device cpu-host-calibrated."
  tail -n +2 "$OUT/overlay.toml"; } > hwprofiles/calibrated/cpu-host-calibrated.toml

# 4. Docs: the scatter plot and the error table.
mkdir -p docs/img
cp "$OUT/validation/validation.png" docs/img/calibration_cpu_scatter.png
python -m xpusim.calibrate.docs_table "$OUT/validation/validation.json" docs/calibration.md
echo "updated $OUT, docs/img/calibration_cpu_scatter.png and docs/calibration.md"
