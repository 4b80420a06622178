# Sourced by the entry scripts: make sure a virtual environment with stn-serve is active.
# Uses the active one when there is one, else creates .venv in the repository root.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -z "${VIRTUAL_ENV:-}" ]]; then
    if [[ ! -x "$ROOT/.venv/bin/python" ]]; then
        python3 -m venv "$ROOT/.venv"
    fi
    # shellcheck disable=SC1091
    source "$ROOT/.venv/bin/activate"
fi
# -c pins torch to 2.13.0 (CPU build) and everything else to the versions tested together.
python -m pip install --quiet --disable-pip-version-check -c "$ROOT/constraints.txt" -e "$ROOT[$1]"
