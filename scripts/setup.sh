#!/usr/bin/env bash
# Sets up a fresh Debian machine (as root) for clbagent: Debian packages, a Python venv in .venv
# with clbagent and its test tools. Safe to run again; it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

export DEBIAN_FRONTEND=noninteractive
mapfile -t pkgs < <(grep -hv '^\s*#' scripts/apt-packages.txt scripts/apt-packages-*.txt 2>/dev/null | awk 'NF')
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing Debian packages: ${missing[*]}"
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# The Debian nginx service is not used: clbagent runs its own nginx master with its own prefix.
if command -v systemctl >/dev/null && systemctl is-active --quiet nginx 2>/dev/null; then
  systemctl disable --now nginx >/dev/null 2>&1 || true
fi

# clbagent's nginx module of the L7 metrics, for this nginx (quick when it is up to date).
scripts/build-nginx-module.sh

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e ".[test,vm]"
echo "setup: done ($(.venv/bin/clbagent --version), $(nginx -v 2>&1))"
