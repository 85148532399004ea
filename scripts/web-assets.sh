#!/usr/bin/env bash
# Installs the portal's browser libraries, at pinned versions, with npm:
# xterm.js (the serial console's terminal) and noVNC (the graphical
# console). They go to DIR/node_modules (default: .cache/web in this
# repository, which git ignores); start the server with
# `--web-assets DIR` (or NUBO_WEB_ASSETS=DIR) to serve them under
# /ui/vendor/. Without them the portal's console pages say to run this.
set -euo pipefail
cd "$(dirname "$0")/.."
DIR="${1:-.cache/web}"
mkdir -p "$DIR"
XTERM_VERSION="6.0.0"
NOVNC_VERSION="1.7.0"
npm install --prefix "$DIR" --no-save --no-audit --no-fund --ignore-scripts \
  "@xterm/xterm@$XTERM_VERSION" "@novnc/novnc@$NOVNC_VERSION"
echo "web assets in $(cd "$DIR" && pwd): start the server with --web-assets $(cd "$DIR" && pwd)"
