#!/usr/bin/env bash
# Starts Debian's PostgreSQL for the tests, listening on 127.0.0.1 only,
# with a superuser role `nubo` (password `nubo`) that the tests connect as
# to create a database per test. Idempotent: a running cluster and an
# existing role are left as they are. Prints the admin URL the tests take
# as NUBO_TEST_DATABASE on standard output, and nothing else there.
set -euo pipefail
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
if ! command -v pg_lsclusters >/dev/null; then
  echo "PostgreSQL is not installed: run scripts/install-deps.sh (it installs Debian's postgresql)" >&2
  exit 1
fi
# The cluster the package made (e.g. 15 main); make one if there is none.
read -r VERSION CLUSTER _ < <(pg_lsclusters -h | head -n 1) || true
if [ -z "${VERSION:-}" ]; then
  VERSION="$(ls /usr/lib/postgresql | sort -n | tail -n 1)"
  CLUSTER=main
  $SUDO pg_createcluster "$VERSION" "$CLUSTER" >/dev/null
fi
# Only loopback: the tests' role has a well-known password.
# (A file in the cluster's conf.d, which Debian's postgresql.conf includes
# last, so the packaged file stays untouched.)
echo "listen_addresses = '127.0.0.1'" | $SUDO tee "/etc/postgresql/$VERSION/$CLUSTER/conf.d/nubo-tests.conf" >/dev/null
PORT="$(pg_lsclusters -h | awk -v v="$VERSION" -v c="$CLUSTER" '$1 == v && $2 == c {print $3}')"
if [ -n "$SUDO" ]; then AS_POSTGRES=(sudo -u postgres); else AS_POSTGRES=(runuser -u postgres --); fi
psql_admin() { "${AS_POSTGRES[@]}" psql -p "$PORT" -qAtX "$@"; }
if pg_lsclusters -h | awk -v v="$VERSION" -v c="$CLUSTER" '$1 == v && $2 == c && $4 == "online" {found=1} END {exit !found}'; then
  # Running, perhaps listening elsewhere from before: listen_addresses
  # takes a restart.
  if [ "$(psql_admin -c "SHOW listen_addresses")" != "127.0.0.1" ]; then
    $SUDO pg_ctlcluster "$VERSION" "$CLUSTER" restart >&2
  fi
else
  $SUDO pg_ctlcluster "$VERSION" "$CLUSTER" start >&2
fi
for _ in $(seq 1 30); do
  psql_admin -c "SELECT 1" >/dev/null 2>&1 && break
  sleep 1
done
if [ "$(psql_admin -c "SELECT 1 FROM pg_roles WHERE rolname = 'nubo'")" != "1" ]; then
  psql_admin -c "CREATE ROLE nubo LOGIN SUPERUSER PASSWORD 'nubo'"
fi
# Test databases left behind by an interrupted run.
for db in $(psql_admin -c "SELECT datname FROM pg_database WHERE datname LIKE 'nubo\_test\_%'"); do
  psql_admin -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" || true
done
echo "postgres://nubo:nubo@127.0.0.1:$PORT/postgres"
