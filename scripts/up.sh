#!/usr/bin/env bash
# First command of the README: install what is missing, build Nubo, and
# start the all-in-one cloud in the foreground (Ctrl-C stops it; VMs keep
# running and are re-adopted at the next start). Extra arguments go to
# `nubo up`, e.g. --data-dir DIR or --listen 127.0.0.1:PORT.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo build --release -p nubo
exec target/release/nubo up "$@"
