#!/usr/bin/env bash
# Run a command inside the project's virtual environment (.venv), creating it or bringing it up
# to date first when the pinned requirements changed or the command asks for extras it lacks.
#
#   bash tools/venv.sh CMD [ARGS...]                          the runtime: `pip install -e .`
#   bash tools/venv.sh --extras dev,tpu,convert CMD [ARGS...] plus extras (pyproject.toml)
#
# Extras accumulate: a venv set up for the tests also runs the main job without reinstalling.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${UNIMODAL_VENV:-$ROOT/.venv}"
STAMP="$VENV/.requirements.stamp"
PYTHON="${PYTHON:-$(command -v python3.11 || command -v python3)}"

extras=""
if [ "${1:-}" = "--extras" ]; then
  [ $# -ge 3 ] || { echo "usage: bash tools/venv.sh [--extras a,b] CMD [ARGS...]" >&2; exit 2; }
  extras="$2"
  shift 2
fi

want="$(cat "$ROOT/requirements.txt" "$ROOT/constraints.txt" "$ROOT/pyproject.toml" \
        | sha256sum | cut -d' ' -f1)"
have_hash="" have_extras=""
if [ -x "$VENV/bin/python" ] && [ -f "$STAMP" ]; then
  read -r have_hash have_extras < "$STAMP" || true
fi
[ "$have_hash" = "$want" ] || have_extras=""
# The extras wanted now: those installed before (same pins) and those asked for, sorted, unique.
all="$(printf '%s\n' ${have_extras//,/ } ${extras//,/ } | sort -u | paste -sd, -)"
if [ ! -x "$VENV/bin/python" ] || [ "$have_hash" != "$want" ] || [ "$all" != "$have_extras" ]; then
  echo "tools/venv.sh: setting up $VENV from the pinned requirements${all:+ with extras [$all]}" \
       "(first time: a few minutes)" >&2
  "$PYTHON" -c 'import sys; assert sys.version_info >= (3, 11), "Python >= 3.11 required"'
  [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check -c "$ROOT/constraints.txt" \
      -e "$ROOT${all:+[$all]}"
  echo "$want $all" > "$STAMP"
  echo "tools/venv.sh: $VENV ready" >&2
fi
export PATH="$VENV/bin:$PATH"
export JAX_PLATFORMS="${JAX_PLATFORMS:-cpu}"  # libtpu may be installed for AOT compiles; run on CPU
cd "$ROOT"
exec "$@"
