# Sourced by the entry scripts: make sure a virtual environment with stn-serve is active.
# Uses the active one when there is one, else creates .venv in the repository root.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PIP_QUIET="--quiet"
STN_VENV_HINT=""
if [[ -z "${VIRTUAL_ENV:-}" ]]; then
    if [[ ! -x "$ROOT/.venv/bin/python" ]]; then
        echo "First run: creating .venv and installing stn-serve with torch (CPU build), ONNX" \
             "Runtime and the test tools into it: about 1.9 GB, a few minutes. Later runs take" \
             "seconds." >&2
        python3 -m venv "$ROOT/.venv"
        PIP_QUIET=""  # show what pip fetches and installs, so a long first run shows progress
    fi
    # shellcheck disable=SC1091
    source "$ROOT/.venv/bin/activate"
    STN_VENV_HINT="To run stn-serve in this shell: source .venv/bin/activate"
fi
# -c pins torch to 2.13.0 (CPU build) and everything else to the versions tested together.
# shellcheck disable=SC2086  # an empty PIP_QUIET is no argument
python -m pip install $PIP_QUIET --disable-pip-version-check -c "$ROOT/constraints.txt" \
    -e "$ROOT[$1]"
