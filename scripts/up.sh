#!/usr/bin/env bash
# First command of the README: install what is missing, build Nubo, and
# start the all-in-one cloud in the foreground (Ctrl-C stops it; VMs keep
# running and are re-adopted at the next start). Extra arguments go to
# `nubo up`, e.g. --data-dir DIR or --listen 127.0.0.1:PORT.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
# The static guest agent that the tiny image build puts into the guest.
RUSTFLAGS="-C target-feature=+crt-static" \
  cargo build --release -p nubo-guest-agent --target x86_64-unknown-linux-gnu
export NUBO_GUEST_AGENT="${CARGO_TARGET_DIR:-$PWD/target}/x86_64-unknown-linux-gnu/release/nubo-guest-agent"
cargo build --release -p nubo
exec "${CARGO_TARGET_DIR:-$PWD/target}/release/nubo" up "$@"
