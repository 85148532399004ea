#!/usr/bin/env bash
# Property-based API testing of the control plane with schemathesis, driven
# by the OpenAPI documents the server itself serves (/api/v1/openapi.json,
# and /api/v1/agent/openapi.json for the agent protocol).
#
# Starts `nubo server` alone (no agent, no VM) on a free loopback port with
# a throw-away data directory, then runs schemathesis four times:
#   1. the user API but identity (instances, hosts, images, any new tag)
#      with the admin token;
#   2. identity (tag identity) with the admin token, after 1 because random
#      quotas set here would refuse every instance launch there; without
#      token revocation (stateful testing finds the admin's own token in
#      GET /tokens and revokes it, turning the rest of the run into 401s);
#   3. token revocation (with GET /tokens to link from), with a throw-away
#      admin token;
#   4. the agent protocol (tag agent) with the seeded host's credential.
# Before the runs a host joins and registers, and one instance is created
# through the API, so that 2xx responses (and their schemas) are reachable.
#
# Checks: not_a_server_error, response_schema_conformance and
# content_type_conformance; status_code_conformance too with
# SCHEMATHESIS_STRICT=1 (the document does not list every 400/401/403 yet).
#
# Usage: scripts/schemathesis.sh
# Env:
#   SCHEMATHESIS_MAX_EXAMPLES  test cases per operation and phase (default 50)
#   SCHEMATHESIS_WORKERS       concurrent workers (default 2)
#   SCHEMATHESIS_SEED          fixed seed for a reproducible run (default: random)
#   SCHEMATHESIS_STRICT        1: also require every status code to be documented
#   SCHEMATHESIS_REPORT_DIR    where the JUnit/NDJSON reports and the server's log go
#                              (default .cache/schemathesis-report)
#   CARGO_TARGET_DIR           honoured for the `nubo` build
# Exit status: non-zero when any check failed in any run, or the server panicked or died.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"

SCHEMATHESIS_VERSION="4.32.5"
MAX_EXAMPLES="${SCHEMATHESIS_MAX_EXAMPLES:-50}"
WORKERS="${SCHEMATHESIS_WORKERS:-2}"
VENV="$ROOT/.cache/venv-schemathesis"
REPORT_DIR="${SCHEMATHESIS_REPORT_DIR:-$ROOT/.cache/schemathesis-report}"
CHECKS="not_a_server_error,response_schema_conformance,content_type_conformance"
[ "${SCHEMATHESIS_STRICT:-0}" = 1 ] && CHECKS="$CHECKS,status_code_conformance"

log() { printf '==> %s\n' "$*" >&2; }

# ---- build ----
log "building nubo"
cargo build -p nubo
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
case "$TARGET_DIR" in /*) ;; *) TARGET_DIR="$ROOT/$TARGET_DIR" ;; esac
NUBO="$TARGET_DIR/debug/nubo"
[ -x "$NUBO" ] || { echo "no nubo binary at $NUBO" >&2; exit 1; }

# ---- schemathesis in a private venv ----
if ! "$VENV/bin/schemathesis" --version 2>/dev/null | grep -q "$SCHEMATHESIS_VERSION"; then
    log "installing schemathesis $SCHEMATHESIS_VERSION into $VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
fi

# ---- server ----
DATA_DIR="$(mktemp -d -t nubo-schemathesis.XXXXXX)"
PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
BASE="http://127.0.0.1:$PORT"
mkdir -p "$REPORT_DIR"
SERVER_LOG="$REPORT_DIR/server.log"
SERVER_PID=""
cleanup() {
    if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    rm -rf "$DATA_DIR"
}
trap cleanup EXIT

log "starting nubo server on $BASE (data dir $DATA_DIR)"
RUST_LOG="${RUST_LOG:-info}" "$NUBO" server --data-dir "$DATA_DIR" --listen "127.0.0.1:$PORT" >"$SERVER_LOG" 2>&1 &
SERVER_PID=$!
for _ in $(seq 1 100); do
    if curl -fsS "$BASE/api/v1/health" >/dev/null 2>&1 && [ -s "$DATA_DIR/admin.env" ]; then
        break
    fi
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then
        echo "nubo server exited early:" >&2
        cat "$SERVER_LOG" >&2
        exit 1
    fi
    sleep 0.2
done
curl -fsS "$BASE/api/v1/health" >/dev/null || { echo "nubo server did not come up" >&2; cat "$SERVER_LOG" >&2; exit 1; }

# shellcheck disable=SC1091
NUBO_TOKEN="$(. "$DATA_DIR/admin.env" && printf '%s' "$NUBO_TOKEN")"
[ -n "$NUBO_TOKEN" ] || { echo "no NUBO_TOKEN in $DATA_DIR/admin.env" >&2; exit 1; }
auth_admin=(-H "Authorization: Bearer $NUBO_TOKEN")
json=(-H 'Content-Type: application/json')
json_field() { python3 -c 'import json,sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1"; }

# ---- seed: a host (with its agent credential) and one instance ----
# The agent credential: a host joins with a one-time join token (written
# by `nubo server` to join.token, or asked for with the admin token) and
# gets a credential bound to its host id. Older servers wrote a shared
# agent token to agent.token instead.
HOST_ID="h-0123456789abcdef0"
if [ -s "$DATA_DIR/agent.token" ]; then
    AGENT_TOKEN="$(tr -d '[:space:]' <"$DATA_DIR/agent.token")"
else
    if [ -s "$DATA_DIR/join.token" ]; then
        JOIN_TOKEN="$(tr -d '[:space:]' <"$DATA_DIR/join.token")"
    else
        JOIN_TOKEN="$(curl -fsS -X POST "$BASE/api/v1/hosts/join-tokens" "${auth_admin[@]}" | json_field token)"
    fi
    AGENT_TOKEN="$(curl -fsS -X POST "$BASE/api/v1/agent/join" "${json[@]}" \
        -d "{\"join_token\":\"$JOIN_TOKEN\",\"host_id\":\"$HOST_ID\"}" | json_field credential)"
fi
[ -n "$AGENT_TOKEN" ] || { echo "could not get an agent credential" >&2; exit 1; }
curl -fsS -X POST "$BASE/api/v1/agent/register" -H "Authorization: Bearer $AGENT_TOKEN" "${json[@]}" \
    -d "{\"host_id\":\"$HOST_ID\",\"name\":\"fuzz-host\",\"accel\":\"tcg\",\"vcpus\":64,\"memory_mib\":1048576,\"disk_gib\":16384}" \
    >/dev/null || { echo "seeding: host registration failed" >&2; exit 1; }
INSTANCE_ID="$(curl -fsS -X POST "$BASE/api/v1/instances" "${auth_admin[@]}" "${json[@]}" \
    -d '{"image":"tiny","vcpus":1,"memory_mib":128,"disk_gib":1,"name":"seed","ports":[22]}' | json_field id)" \
    || { echo "seeding: instance creation failed" >&2; exit 1; }
log "seeded host $HOST_ID and instance $INSTANCE_ID"

# ---- generation config ----
# The document types ids and sizes as plain strings and integers, so purely
# random values almost never get past the first check (400). Half of the
# ids, and some sizes, are drawn from real or valid values instead, so the
# 2xx/404/409 paths behind the checks are exercised too.
CONFIG="$REPORT_DIR/schemathesis.toml"
cat >"$CONFIG" <<TOML
[dictionaries.instance_ids]
values = ["$INSTANCE_ID", "i-0123456789abcdef0"]
[dictionaries.host_ids]
values = ["$HOST_ID", "h-00000000000000000"]
[dictionaries.images]
values = ["tiny"]
[dictionaries.vcpus]
values = [1, 2, 4]
[dictionaries.memory_mib]
values = [64, 128, 512]
[dictionaries.disk_gib]
values = [1, 2]
[dictionaries.names]
values = ["fuzz-host", "node-1.example"]

[[operations]]
include-path-regex = "^/api/v1/instances/[{]id[}]"
parameters = { "path.id" = { dictionary = "instance_ids", probability = 0.5 } }

[[operations]]
include-path = "/api/v1/instances"
include-method = "POST"
parameters = { "body.image" = { dictionary = "images", probability = 0.7 }, "body.vcpus" = { dictionary = "vcpus", probability = 0.7 }, "body.memory_mib" = { dictionary = "memory_mib", probability = 0.7 }, "body.disk_gib" = { dictionary = "disk_gib", probability = 0.7 } }

[[operations]]
include-path = "/api/v1/agent/hosts/{id}/desired"
parameters = { "path.id" = { dictionary = "host_ids", probability = 0.5 } }

[[operations]]
include-path = "/api/v1/agent/register"
parameters = { "body.host_id" = { dictionary = "host_ids", probability = 0.7 }, "body.name" = { dictionary = "names", probability = 0.7 }, "body.vcpus" = { dictionary = "vcpus", probability = 0.7 }, "body.memory_mib" = { dictionary = "memory_mib", probability = 0.7 } }

[[operations]]
include-path = "/api/v1/agent/hosts/{id}/report"
parameters = { "path.id" = { dictionary = "host_ids", probability = 0.7 }, "body.instances[*].id" = { dictionary = "instance_ids", probability = 0.7 } }

[[operations]]
include-path = "/api/v1/agent/instances/{id}/console"
parameters = { "path.id" = { dictionary = "instance_ids", probability = 0.5 }, "body.host_id" = { dictionary = "host_ids", probability = 0.5 } }
TOML

# ---- runs ----
SEED_ARGS=()
[ -n "${SCHEMATHESIS_SEED:-}" ] && SEED_ARGS=(--seed "$SCHEMATHESIS_SEED")

st_run() { # name token document filter...
    local name="$1" token="$2" doc="$3"
    shift 3
    log "schemathesis: $name (max $MAX_EXAMPLES examples per operation)"
    "$VENV/bin/schemathesis" --config-file "$CONFIG" run "$BASE$doc" \
        --url "$BASE" \
        -H "Authorization: Bearer $token" \
        --checks "$CHECKS" \
        --max-examples "$MAX_EXAMPLES" \
        --continue-on-failure \
        --workers "$WORKERS" \
        --request-timeout 30 \
        --generation-database none \
        --suppress-health-check too_slow,filter_too_much \
        --report junit,ndjson --report-dir "$REPORT_DIR" \
        --report-junit-path "$REPORT_DIR/$name.xml" \
        --report-ndjson-path "$REPORT_DIR/$name.ndjson" \
        --no-color \
        "${SEED_ARGS[@]}" \
        "$@"
}

START=$(date +%s)
rc=0
USER_DOC=/api/v1/openapi.json
AGENT_DOC=/api/v1/agent/openapi.json
st_run instances "$NUBO_TOKEN" "$USER_DOC" --exclude-tag identity || rc=1
st_run identity "$NUBO_TOKEN" "$USER_DOC" --include-tag identity --exclude-operation-id revoke_token || rc=1
THROWAWAY_TOKEN="$(curl -fsS -X POST "$BASE/api/v1/tokens" "${auth_admin[@]}" "${json[@]}" \
    -d '{"name":"schemathesis-revoke"}' | json_field token)"
st_run revoke "$THROWAWAY_TOKEN" "$USER_DOC" --include-operation-id revoke_token --include-operation-id list_tokens || rc=1
st_run agent "$AGENT_TOKEN" "$AGENT_DOC" || rc=1

if ! kill -0 "$SERVER_PID" 2>/dev/null; then
    echo "nubo server died during the run" >&2
    rc=1
fi
if grep -q 'panicked' "$SERVER_LOG"; then
    echo "the server panicked during the run:" >&2
    grep -A3 'panicked' "$SERVER_LOG" >&2
    rc=1
fi
if grep -q 'internal error' "$SERVER_LOG"; then
    echo "the server logged internal errors:" >&2
    grep 'internal error' "$SERVER_LOG" | sort | uniq -c | head -20 >&2
fi
log "schemathesis finished in $(($(date +%s) - START)) s; reports in $REPORT_DIR; exit $rc"
exit "$rc"
