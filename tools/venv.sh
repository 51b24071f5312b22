#!/usr/bin/env bash
# Run a command inside the project's virtual environment (.venv), creating it or bringing it up
# to date first when the pinned requirements changed. Usage: bash tools/venv.sh CMD [ARGS...]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${UNIMODAL_VENV:-$ROOT/.venv}"
STAMP="$VENV/.requirements.sha256"
PYTHON="${PYTHON:-$(command -v python3.11 || command -v python3)}"

want="$(cat "$ROOT/requirements.txt" "$ROOT/requirements-dev.txt" "$ROOT/constraints.txt" \
        "$ROOT/pyproject.toml" | sha256sum | cut -d' ' -f1)"
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$STAMP" 2>/dev/null || true)" != "$want" ]; then
  echo "tools/venv.sh: setting up $VENV from the pinned requirements (first time: a few minutes)" >&2
  "$PYTHON" -c 'import sys; assert sys.version_info >= (3, 11), "Python >= 3.11 required"'
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check \
      -r "$ROOT/requirements-dev.txt" -c "$ROOT/constraints.txt"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check --no-deps -e "$ROOT"
  echo "$want" > "$STAMP"
  echo "tools/venv.sh: $VENV ready" >&2
fi
export PATH="$VENV/bin:$PATH"
export JAX_PLATFORMS="${JAX_PLATFORMS:-cpu}"  # libtpu is installed for AOT compiles; run on CPU
cd "$ROOT"
exec "$@"
