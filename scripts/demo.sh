#!/usr/bin/env bash
# Set up (if needed), then deploy the bundled example network and check it against the
# reference, spike for spike. Extra arguments go to fs-deploy (e.g. --target loihi).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
mkdir -p reports
if [ "$#" -eq 0 ]; then
    set -- --target reference --report reports/reference.json
fi
exec .venv/bin/fs-deploy "$@"
