#!/usr/bin/env bash
# Installs what Nubo needs on a Debian machine: QEMU, qemu-img, the
# firmware QEMU loads, e2fsprogs (builds the images' disks), mmdebstrap
# (installs the debian image's root file system), curl, openssh-client
# (the tests log in to guests with ssh), and syslinux, mtools, dosfstools
# and fdisk (the storage test builds a BIOS-bootable disk to import), and
# Debian's monitoring-plugins (Nagios plugins such as check_http for plugin
# checks). Prometheus' promtool, which the monitoring test uses to check
# /metrics, and prometheus itself, which the remote-write test and bench
# start as a receiver, are unpacked from Debian's package into .cache/tools
# (installing the package would start a Prometheus server), and
# ldap-utils (the LDAP removal test deletes users with ldapdelete),
# python3-venv (the EC2 test installs the stock aws CLI and boto3 from PyPI
# into a virtualenv), Debian's Chromium and ChromeDriver (the portal
# test drives a real browser over WebDriver) with a font to render text,
# and nginx-light (the load balancer benchmark compares nubo-lb with nginx
# as a reverse proxy; it runs its own nginx on 127.0.0.1 from a generated
# config), and Debian's PostgreSQL (the control-plane tests run a second
# time against it; scripts/postgres.sh starts it on 127.0.0.1 only), and
# xorriso and isolinux (the ISO install test builds a bootable installer CD).
# npm installs the portal's browser libraries (xterm.js, noVNC) at pinned
# versions into .cache/web (scripts/web-assets.sh), and tmux drives the
# console test's `nubo instance console --attach` in a real terminal.
# ovmf (UEFI firmware for instances that ask for it) and swtpm with
# swtpm-tools (each instance with a TPM runs its own swtpm).
# openssh-server (the backup repository test runs its own sshd on
# 127.0.0.1 as the SFTP backup host; Debian's ssh service is disabled).
# Idempotent; refreshes apt's lists because the image build runs
# `apt-get download` against them.
set -euo pipefail
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
# qemu-utils and qemu-system-x86 must come from the same QEMU release. Some
# machines carry a newer qemu-utils (a backport) whose source is gone, and
# it Breaks the release's qemu-system-common: install both at the version
# the configured sources offer for qemu-system-x86 (downgrading if needed).
QEMU_VERSION="$(apt-cache madison qemu-system-x86 | awk 'NR==1 {print $3}')"
QEMU_PKGS="qemu-system-x86 qemu-utils"
if [ -n "$QEMU_VERSION" ]; then
  QEMU_PKGS="qemu-system-x86=$QEMU_VERSION qemu-system-common=$QEMU_VERSION qemu-utils=$QEMU_VERSION"
fi
# shellcheck disable=SC2086 # QEMU_PKGS is a word list on purpose
$SUDO apt-get install -y -q --no-install-recommends --allow-downgrades \
  $QEMU_PKGS seabios ipxe-qemu e2fsprogs mmdebstrap curl ca-certificates procps \
  slapd ldap-utils openssh-client syslinux syslinux-common mtools dosfstools fdisk xorriso isolinux monitoring-plugins-basic \
  python3 python3-venv chromium chromium-driver fonts-dejavu-core nginx-light postgresql \
  iproute2 nftables dnsmasq-base tmux \
  ovmf swtpm swtpm-tools openssh-server
if ! command -v cargo >/dev/null; then
  echo "cargo is missing: install Rust stable (https://rustup.rs) and re-run" >&2
  exit 1
fi
# slapd is only used by the tests, which run their own instance on
# 127.0.0.1; never leave Debian's system instance listening.
if command -v systemctl >/dev/null 2>&1; then $SUDO systemctl disable --now slapd >/dev/null 2>&1 || true; fi
$SUDO service slapd stop >/dev/null 2>&1 || true
# Likewise Debian's nginx service (port 80): the benchmark starts its own.
if command -v systemctl >/dev/null 2>&1; then $SUDO systemctl disable --now nginx >/dev/null 2>&1 || true; fi
$SUDO service nginx stop >/dev/null 2>&1 || true
# Likewise Debian's ssh service: the backup test starts its own sshd.
if command -v systemctl >/dev/null 2>&1; then $SUDO systemctl disable --now ssh >/dev/null 2>&1 || true; fi
$SUDO service ssh stop >/dev/null 2>&1 || true

# promtool and prometheus, unpacked (not installed) so that no Prometheus
# service starts.
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
TOOLS="$ROOT/.cache/tools"
if [ ! -x "$TOOLS/prometheus/usr/bin/promtool" ] || [ ! -x "$TOOLS/prometheus/usr/bin/prometheus" ]; then
  mkdir -p "$TOOLS/deb" "$TOOLS/prometheus"
  (cd "$TOOLS/deb" && apt-get download -q prometheus >/dev/null 2>&1) || {
    echo "cannot download Debian's prometheus package (for promtool and prometheus)" >&2
    exit 1
  }
  dpkg -x "$(ls "$TOOLS"/deb/prometheus_*.deb | head -n 1)" "$TOOLS/prometheus"
fi

# npm: Debian's package, unless Node.js with its own npm is installed
# already (NodeSource's nodejs ships npm, and Conflicts with Debian's).
if ! command -v npm >/dev/null; then
  $SUDO apt-get install -y -q --no-install-recommends npm
fi
# The portal's browser libraries (served with `--web-assets .cache/web`).
"$ROOT/scripts/web-assets.sh"
