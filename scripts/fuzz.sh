#!/usr/bin/env bash
# Coverage-guided fuzzing (cargo-fuzz / libFuzzer) of the request parsers
# and of the disk image header checks:
#   instance_create  POST /api/v1/instances body -> serde -> validate::instance_create
#   agent_bodies     RegisterHost, HostReport, ConsoleChunk bodies
#   ec2_request      EC2 Query form bodies, SigV4 Authorization headers, X-Amz-Date
#   sigv4_canonical  SigV4 canonical requests and verification: the body always hashed
#   rule_cidr        security-group rule CIDRs, and rules through the agent's nftables renderer
#   ids              InstanceId / HostId from arbitrary strings
#   image_header     nubo_image::inspect::{check_qcow2_header, sniff_format} on arbitrary bytes
#   qga_reply        guest-agent reply lines -> nubo_hypervisor::qga::decode (what a guest sends its host)
# The fuzz crate (fuzz/) is not a workspace member.
#
# cargo-fuzz needs nightly compiler flags (-Zsanitizer=address, ...). On a
# stable toolchain they are unlocked with RUSTC_BOOTSTRAP=1, which this
# script sets unless the active toolchain is already nightly.
#
# Usage: scripts/fuzz.sh [TARGET...]        (default: every target)
# Env:
#   FUZZ_SECONDS      seconds per target (default 30), libFuzzer -max_total_time
#   FUZZ_JOBS         parallel libFuzzer jobs per target (default 1)
#   FUZZ_SANITIZER    address (default) or none (faster, catches panics only)
#   FUZZ_PROFILE      release (default) or dev: dev builds in a fraction of
#                     the time and keeps debug assertions, at fewer runs per
#                     second (CI uses it for its bounded smoke run)
#   CARGO_TARGET_DIR  honoured (default fuzz/target)
# Corpora grow in fuzz/corpus/TARGET, crashes land in fuzz/artifacts/TARGET
# (both git-ignored). Exit status: non-zero if any target found a crash.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT/fuzz"

SECONDS_PER_TARGET="${FUZZ_SECONDS:-30}"
JOBS="${FUZZ_JOBS:-1}"
SANITIZER="${FUZZ_SANITIZER:-address}"
PROFILE_FLAG="--release"
if [ "${FUZZ_PROFILE:-release}" = "dev" ]; then PROFILE_FLAG="--dev"; fi
CARGO_FUZZ_VERSION="0.13.2"

log() { printf '==> %s\n' "$*" >&2; }

if ! cargo fuzz --version >/dev/null 2>&1; then
    log "installing cargo-fuzz $CARGO_FUZZ_VERSION"
    cargo install --locked cargo-fuzz --version "$CARGO_FUZZ_VERSION"
fi
if ! rustc --version | grep -q -- '-nightly'; then
    export RUSTC_BOOTSTRAP=1
fi

if [ "$#" -gt 0 ]; then
    TARGETS=("$@")
else
    mapfile -t TARGETS < <(cargo fuzz list)
fi

# Seed corpora: a few valid bodies so the fuzzer starts past the JSON
# syntax and the required fields.
seed() { # target name content
    local dir="corpus/$1"
    mkdir -p "$dir"
    [ -e "$dir/seed-$2" ] || printf '%s' "$3" >"$dir/seed-$2"
}
seed instance_create plain '{"image":"tiny","vcpus":1,"memory_mib":128,"disk_gib":1}'
seed instance_create full '{"image":"tiny","vcpus":2,"memory_mib":512,"disk_gib":2,"name":"web-1.prod_a","user_data":"#!/bin/sh\necho hi\n","ports":[22,80,8080]}'
seed instance_create dup-port '{"image":"tiny","vcpus":1,"memory_mib":64,"disk_gib":1,"ports":[80,80]}'
seed agent_bodies register '{"host_id":"h-0123456789abcdef0","name":"node-1","accel":"kvm","vcpus":8,"memory_mib":16384,"disk_gib":100}'
seed agent_bodies report '{"instances":[{"id":"i-0123456789abcdef0","power":"running","pid":42,"error":null,"exited_unexpectedly":false,"events":[{"at_ms":1,"stage":"boot_complete","detail":""}]}]}'
seed ec2_request run 'Action=RunInstances&ImageId=ami-0123456789abcdef0&MinCount=1&MaxCount=2&TagSpecification.1.ResourceType=instance&TagSpecification.1.Tag.1.Key=a&TagSpecification.1.Tag.1.Value=b&Filter.1.Name=tag:a&Filter.1.Value.1=b*&MaxResults=5&NextToken=nubo-offset-5'
seed ec2_request auth 'AWS4-HMAC-SHA256 Credential=AKIAEXAMPLE/20150830/nubo-1/ec2/aws4_request, SignedHeaders=content-type;host;x-amz-date, Signature=5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7'
seed sigv4_canonical describe $'AWS4-HMAC-SHA256 Credential=AKIAEXAMPLE/20150830/nubo-1/ec2/aws4_request, SignedHeaders=content-type;host;x-amz-date, Signature=5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7\ncontent-type: application/x-www-form-urlencoded; charset=utf-8\nhost: 127.0.0.1:8780\nx-amz-date: 20150830T123600Z\nx-amz-content-sha256: 0000000000000000000000000000000000000000000000000000000000000000\n\nPOST /\nAction=DescribeInstances&Version=2016-11-15'
seed rule_cidr list $'\x00\x16\x00\x16\x000.0.0.0/0,10.20.0.0/24,10.20.0.0/25,203.0.113.7, 192.0.2.0/24 ,0.0.0.0/+0,::/0,10.0.0.5/8'
seed agent_bodies console '{"host_id":"h-0123456789abcdef0","offset":0,"raw_len":5,"data":"hello"}'
seed ids instance 'i-0123456789abcdef0'
seed ids host 'h-0123456789abcdef0'
seed ids bad 'i-0123456789ABCDEF0'
seed qga_reply exec '{"return": {"exited": true, "exitcode": 0, "out-data": "aGkK", "out-truncated": false}}'
seed qga_reply fsinfo '{"return": [{"name": "vda", "mountpoint": "/", "type": "ext4", "used-bytes": 10, "total-bytes": 20}]}'
seed qga_reply nics '{"return": [{"name": "eth0", "hardware-address": "52:54:00:12:34:56", "ip-addresses": [{"ip-address-type": "ipv4", "ip-address": "10.0.2.15", "prefix": 24}], "statistics": {"rx-bytes": 1, "tx-bytes": 2}}]}'
seed qga_reply error '{"error": {"class": "GenericError", "desc": "failed"}}'
# Real qcow2 headers (binary, so made by qemu-img when it is installed):
# 512-byte clusters keep the whole file under -max_len.
if command -v qemu-img >/dev/null; then
    mkdir -p corpus/image_header
    for compat in 0.10 1.1; do
        f="corpus/image_header/seed-qcow2-$compat"
        [ -e "$f" ] || qemu-img create -q -f qcow2 -o "compat=$compat,cluster_size=512" "$f" 1M
    done
fi

log "building fuzz targets (sanitizer: $SANITIZER)"
cargo fuzz build "$PROFILE_FLAG" --sanitizer "$SANITIZER"

rc=0
for t in "${TARGETS[@]}"; do
    log "fuzzing $t for ${SECONDS_PER_TARGET}s"
    start=$(date +%s)
    if cargo fuzz run "$PROFILE_FLAG" --sanitizer "$SANITIZER" --jobs "$JOBS" "$t" -- \
        -max_total_time="$SECONDS_PER_TARGET" -max_len=65536 -timeout=10 -rss_limit_mb=4096 -print_final_stats=1; then
        log "$t: no crash in $(($(date +%s) - start)) s (corpus: $(find "corpus/$t" -type f | wc -l) inputs)"
    else
        log "$t: FAILED after $(($(date +%s) - start)) s; reproduce with: cargo fuzz run $t fuzz/artifacts/$t/<crash-file>"
        ls -1 "artifacts/$t" 2>/dev/null | sed 's/^/    /' >&2 || true
        rc=1
    fi
done
exit "$rc"
