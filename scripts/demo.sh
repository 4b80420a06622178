#!/usr/bin/env bash
# Install stn-serve (into .venv unless a virtual environment is active) and run the end-to-end demo
# on the embedded digits. Extra arguments go to `stn-serve demo`.
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh" train,dev
cd "$ROOT"
stn-serve demo "$@"
if [[ -n "$STN_VENV_HINT" ]]; then
    echo "$STN_VENV_HINT"
fi
