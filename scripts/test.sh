#!/usr/bin/env bash
# Second command of the README: the whole test suite. Formatting, lints
# (warnings are errors), unit tests, and integration tests that boot real
# `tiny` VMs under QEMU. The tiny image is built once into .cache/images
# and shared by every test. Slow tiers are opt-in (see README). Then the
# integration suite once more on PostgreSQL (Debian's, started on
# 127.0.0.1 by scripts/postgres.sh; a database per test): the control
# plane's tests and the end-to-end ones that add database work of their
# own, among them the two-server test that only runs there.
set -euo pipefail
cd "$(dirname "$0")/.."
# Each phase prints when it starts, in seconds since this script began, so
# a slow CI run says where its time went.
phase() { echo "== [${SECONDS} s] $*"; }
phase "packages"
scripts/install-deps.sh
export NUBO_IMAGE_CACHE="${NUBO_IMAGE_CACHE:-$PWD/.cache/images}"
phase "rustfmt and clippy"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
# The guest agent goes into the tiny image as a static binary; an explicit
# --target keeps crt-static away from build scripts and proc-macros.
phase "the static guest agent"
RUSTFLAGS="-C target-feature=+crt-static" \
  cargo build -q --release -p nubo-guest-agent --target x86_64-unknown-linux-gnu
export NUBO_GUEST_AGENT="${CARGO_TARGET_DIR:-$PWD/target}/x86_64-unknown-linux-gnu/release/nubo-guest-agent"
# The PostgreSQL pass's subsets (see there).
PG_TESTS=(vm_lifecycle restarts servers networks tenancy_cli tls security debian_image)
if cargo nextest --version >/dev/null 2>&1; then
  RUN=(cargo nextest run)
  # Tests that need PostgreSQL are #[ignore]d (reported as skipped on
  # SQLite); the PostgreSQL pass asks for them too.
  WITH_IGNORED=(--run-ignored all)
  # Subsets as filters over the whole workspace's build: selecting them
  # with -p would build their dependencies again with other features
  # (three minutes of CI).
  PG_CONTROL_PLANE=(--workspace -E 'package(nubo-controlplane) | package(nubo-test-cloud)')
  PG_END_TO_END=(--workspace -E "package(nubo) & ($(printf 'binary(=%s) | ' "${PG_TESTS[@]}" | sed 's/ | $//'))")
else
  RUN=(cargo test)
  WITH_IGNORED=(-- --include-ignored)
  PG_CONTROL_PLANE=(-p nubo-controlplane -p nubo-test-cloud)
  PG_END_TO_END=(-p nubo $(printf -- '--test %s ' "${PG_TESTS[@]}"))
fi
# The tests' build first, and the shared image built with its `nubo`, so
# parallel tests do not all wait on the image. (`cargo run -p nubo` would
# build every dependency a second time: without the test targets, cargo
# unifies their features differently.)
phase "the test build"
"${RUN[@]}" --workspace --no-run
phase "the tiny image"
"${CARGO_TARGET_DIR:-$PWD/target}/debug/nubo" image build tiny --cache "$NUBO_IMAGE_CACHE"
# A failing phase does not stop the next: one run shows every failure.
status=0
phase "the tests on SQLite"
"${RUN[@]}" --workspace --no-fail-fast || status=$?
phase "the tests on PostgreSQL"
NUBO_TEST_DATABASE="$(scripts/postgres.sh)"
export NUBO_TEST_DATABASE
"${RUN[@]}" "${PG_CONTROL_PLANE[@]}" --no-fail-fast "${WITH_IGNORED[@]}" || status=$?
# Of the end-to-end tests, those whose database work the control plane's
# tests above do not already do on PostgreSQL: state across restarts,
# several servers, capacity sums, migrations and failover, tenancy, TLS,
# and the attacks of the security target (a console flood puts any byte a
# guest writes into the database). The `debian` tier (real cloud-init and
# the stock qemu-guest-agent; minutes, so #[ignore]d on SQLite and reported
# there as skipped) runs here, once.
# The rest repeat on PostgreSQL what their API-level twins just did, and
# would add minutes of booting guests to CI for no new SQL.
"${RUN[@]}" "${PG_END_TO_END[@]}" --no-fail-fast "${WITH_IGNORED[@]}" || status=$?
# Every fuzz target for a bounded time (NUBO_FUZZ_SECONDS each, default 15):
# a smoke run that catches a parser panicking on what the fuzzer finds
# quickly. A debug build without a sanitizer builds in a few minutes; longer
# runs with AddressSanitizer are `scripts/fuzz.sh` on its own.
phase "fuzzing"
FUZZ_SECONDS="${NUBO_FUZZ_SECONDS:-15}" FUZZ_SANITIZER=none FUZZ_PROFILE=dev scripts/fuzz.sh || status=$?
phase "done (exit $status)"
exit "$status"
