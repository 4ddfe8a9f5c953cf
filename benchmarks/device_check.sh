#!/usr/bin/env bash
# The device check: everything a session lent a GPU should run, in one call, with a time
# limit on every step (docs/calibration.md, "Running on a GPU: the device-check script").
#
#   benchmarks/device_check.sh            # on the device machine: writes under $OUT
#   benchmarks/device_check.sh --tiny     # the same steps on this CPU, tiny sizes (< 1 min)
#
# Steps (each under `timeout`; a failed or killed step does not stop the next):
#   1. env        nvidia-smi -q essentials, torch / CUDA / cuDNN versions, the card's facts
#   2. micro      targeted microbenchmarks (calibrate/device_check.py), one CSV row a case
#   3. compare    each microbenchmark beside `xpusim op ... --json` on the card's profile
#   4. calibrate  xpusim calibrate --device cuda --quick (GPU grids, bf16)
#   5. validate   xpusim validate on the calibration's held-out cases (timed in step 4)
#   6. revalidate the held-out cases timed again, if the time budget leaves room
# Everything lands in $WORK/results and is packed after every step into
# $OUT/device_check.tar.gz (so a kill keeps what was done); $OUT also gets log.txt,
# summary.txt and compare.csv: 4 files, within the device tool's 8.
#
# Environment: OUT (default out/device_check), PYTHON (default python3: on the device
# machine the one that holds torch), DC_TOTAL_S (whole-script budget, default 480 s).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
ROOT=$PWD
TINY=0
case "${1:-}" in
    --tiny) TINY=1 ;;
    "") ;;
    *) echo "usage: $0 [--tiny]" >&2; exit 2 ;;
esac
PY=${PYTHON:-python3}
OUT=${OUT:-$ROOT/out/device_check}
TOTAL_S=${DC_TOTAL_S:-480}
mkdir -p "$OUT"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/xpusim_device_check.XXXXXX")
RES=$WORK/results
mkdir -p "$RES/calib"
LOG=$OUT/log.txt
: >"$LOG"
START=$(date +%s)
exec > >(tee -a "$LOG") 2>&1

# The tree under test, importable as `xpusim` without installing it: a package of
# symlinks to its folders (setup.py maps xpusim.sim -> sim/ and so on).
PKG=$WORK/pkg/xpusim
mkdir -p "$PKG"
for f in "$ROOT"/xpusim/*.py; do ln -s "$f" "$PKG/"; done
for d in sim hwprofiles kernels calibrate; do ln -s "$ROOT/$d" "$PKG/$d"; done
export PYTHONPATH="$WORK/pkg${PYTHONPATH:+:$PYTHONPATH}"
# Wheels carried for what the device image lacks (pydantic: docs/calibration.md).
if ! "$PY" -c "import pydantic" 2>/dev/null && ls "$ROOT"/.whl/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$WORK/site" "$ROOT"/.whl/*.whl && export PYTHONPATH="$PYTHONPATH:$WORK/site"
fi
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg
# Run from $WORK: in the repository root, `python -c` / `-m` would import the root's
# xpusim/ folder (two files) ahead of the package above.
cd "$WORK" || exit 2
xpusim() { "$PY" -c "import sys; from xpusim.sim.cli.main import main; sys.argv[0] = 'xpusim'; sys.exit(main())" "$@"; }

pack() {
    tar czf "$WORK/pack.tgz" -C "$WORK" results && cp "$WORK/pack.tgz" "$OUT/device_check.tar.gz"
}
left() { echo $((TOTAL_S - ($(date +%s) - START))); }
# step NAME LIMIT_S CMD...: run CMD under timeout (never beyond the script's budget).
step() {
    local name=$1 limit=$2 rc
    shift 2
    local remaining
    remaining=$(left)
    if [ "$remaining" -lt 10 ]; then echo "=== $name: skipped (budget spent)"; return 0; fi
    [ "$limit" -gt "$remaining" ] && limit=$remaining
    echo "=== $name (limit ${limit}s, $(date -u +%T) UTC, ${remaining}s of the budget left)"
    timeout --kill-after=5 "$limit" "$@"
    rc=$?
    echo "=== $name: rc $rc$( [ $rc -eq 124 ] && echo ' (timed out)')"
    pack
    return 0
}

if [ $TINY -eq 1 ]; then
    DEV=cpu MICRO=(--device cpu --tiny) LIMITS=(20 40 30 60 30)
    # A fast subset (>= 8 fit cases), so the whole CPU run stays short.
    CALIB=(--suites add,memcpy,softmax,rowmax --threads 1)
else
    DEV=cuda MICRO=(--device cuda) LIMITS=(30 150 45 210 45)
    CALIB=()
fi

env_step() {
    "$PY" -c "import xpusim, sys; print('xpusim from', xpusim.__file__); print(sys.version)"
    git -C "$ROOT" rev-parse HEAD 2>/dev/null | sed 's/^/commit /' || echo "commit: no .git here"
    if command -v nvidia-smi >/dev/null; then
        nvidia-smi -q | grep -E -i "Product Name|Driver Version|CUDA Version|VBIOS|Persistence|MIG Mode|Current +:|Bus Id|Power Limit|Max Clocks|Clocks Event|Total|ECC Mode|Performance State|GPU Current Temp|Graphics|SM +:|Memory +:" \
            >"$RES/nvidia-smi.txt"
        cat "$RES/nvidia-smi.txt"
    else
        echo "no nvidia-smi" | tee "$RES/nvidia-smi.txt"
    fi
    "$PY" -m xpusim.calibrate.device_check env --out "$RES/env.json"
}

step env "${LIMITS[0]}" bash -c "$(declare -f env_step); PY='$PY' ROOT='$ROOT' RES='$RES' env_step"
step micro "${LIMITS[1]}" "$PY" -m xpusim.calibrate.device_check micro "${MICRO[@]}" \
    --budget-s $((LIMITS[1] - 15)) --out "$RES/micro.csv"
step compare "${LIMITS[2]}" bash -c "set -o pipefail; '$PY' -m xpusim.calibrate.device_check compare \
    '$RES/micro.csv' --env '$RES/env.json' --out '$RES/compare.csv' | tee '$RES/compare.txt'"
step calibrate "${LIMITS[3]}" bash -c "$(declare -f xpusim); PY='$PY'; xpusim calibrate \
    --device $DEV --quick ${CALIB[*]} --out '$RES/calib/overlay.toml' \
    --measurements '$RES/calib/measurements.csv' --json >'$RES/calib/calibrate.json'"
step validate "${LIMITS[4]}" bash -c "$(declare -f xpusim); PY='$PY'; xpusim validate \
    --device $DEV --calibration '$RES/calib/overlay.toml' \
    --measurements '$RES/calib/measurements.csv' --out '$RES/calib/validation' \
    --json >'$RES/calib/validate.json'"
# The held-out cases timed a second time (drift since step 4), only with time to spare.
if [ "$(left)" -gt 90 ]; then
    step revalidate $(($(left) - 20)) bash -c "$(declare -f xpusim); PY='$PY'; xpusim validate \
        --device $DEV --calibration '$RES/calib/overlay.toml' \
        --out '$RES/calib/validation-remeasured' --json >'$RES/calib/revalidate.json'"
fi

{
    echo "device check, $(date -u +%FT%TZ), $(($(date +%s) - START)) s"
    grep -E "Product Name|Driver Version|CUDA Version" "$RES/nvidia-smi.txt" 2>/dev/null
    cat "$RES/compare.txt" 2>/dev/null
    "$PY" -m xpusim.calibrate.device_check summary --calibration-dir "$RES/calib"
} >"$RES/summary.txt" 2>&1
pack
cp "$RES/summary.txt" "$OUT/summary.txt"
[ -f "$RES/compare.csv" ] && cp "$RES/compare.csv" "$OUT/compare.csv"
echo "=== done in $(($(date +%s) - START)) s; files under $OUT:"
ls -la "$OUT"
cat "$RES/summary.txt"
