#!/usr/bin/env bash
# Install what the tests need (into .venv unless a virtual environment is active) and run them.
# Extra arguments go to pytest, e.g. `scripts/test.sh -m slow`.
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh" train,dev
cd "$ROOT"
set +e
python -m pytest "$@"
status=$?
set -e
if [[ $status -eq 5 ]]; then
    echo "error: pytest collected no tests" >&2
    exit 1
fi
if [[ -n "$STN_VENV_HINT" ]]; then
    echo "$STN_VENV_HINT"
fi
exit $status
