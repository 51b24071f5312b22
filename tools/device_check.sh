#!/usr/bin/env bash
# The GPU checks on a lent NVIDIA machine (H100/H200), from the repository root, in under 8
# minutes: sets up the environment, then runs tools/device_check.py, which prints ONE JSON line
# (Pallas flash attention vs cuDNN, an SD-2.1-base U-Net train step, a ~1B decoder train step;
# all bf16). Never run by the tests; `python tools/device_check.py --smoke` checks the script on
# a CPU.
#
#   bash tools/device_check.sh [--system] [device_check.py ARGS...]
#
# Default: the project's venv from the pins (tools/venv.sh, runtime only: device_check.py needs
# neither torch nor diffusers, and the dev extra's torch would pull gigabytes of CUDA wheels),
# then jax's CUDA 12 plugin matching the pinned jax 0.10.2 into it (`jax[cuda12]==0.10.2`:
# jax-cuda12-plugin[with-cuda]==0.10.2 and jax-cuda12-pjrt==0.10.2, as jax 0.10.2's metadata
# asks; JAX_CUDA_EXTRA=cuda13 for the CUDA 13 one). Both need PyPI; a failed install says so
# and exits non-zero.
# --system: no installs; the machine's own python3 (its own JAX with CUDA, which may not be the
# pinned version: the JSON line reports it) with the repository on PYTHONPATH. For machines that
# cannot reach PyPI.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
START=$SECONDS
LIMIT_S=470  # the whole script, installs included, ends within 8 minutes
export JAX_PLATFORMS=cuda  # tools/venv.sh would otherwise pin JAX to the CPU
export PYTHONUNBUFFERED=1

fail() {
  echo "tools/device_check.sh: $*" >&2
  exit 1
}

system=0
if [ "${1:-}" = "--system" ]; then
  system=1
  shift
fi

if [ "$system" = 1 ]; then
  PY="$(command -v python3)" || fail "no python3 on PATH"
  export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
else
  VENV="${UNIMODAL_VENV:-$ROOT/.venv}"
  export PIP_DEFAULT_TIMEOUT=20 PIP_RETRIES=1  # fail fast where PyPI cannot be reached
  bash tools/venv.sh true \
      || fail "setting up $VENV from the pinned requirements failed (is PyPI reachable from" \
              "here?). Rerun with --system to use this machine's own python3 and JAX."
  extra="${JAX_CUDA_EXTRA:-cuda12}"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check -c constraints.txt \
      "jax[$extra]==0.10.2" \
      || fail "pip install \"jax[$extra]==0.10.2\" into $VENV failed (is PyPI reachable from" \
              "here?). Rerun with --system to use this machine's own python3 and JAX."
  PY="$VENV/bin/python"
fi

"$PY" -c 'import jax, sys; d = jax.devices(); print("jax", jax.__version__, d, file=sys.stderr)
sys.exit(d[0].platform != "gpu")' \
    || fail "JAX ($PY) did not import or sees no GPU (see above): no CUDA plugin loaded."

left=$((LIMIT_S - (SECONDS - START)))
[ "$left" -gt 60 ] || fail "only ${left}s left after the setup; no time for the checks"
# device_check.py starts no part after its budget; `timeout` is the hard stop for a hung compile.
timeout --kill-after=10 "$left" "$PY" tools/device_check.py --budget_s "$((left - 150))" "$@"
