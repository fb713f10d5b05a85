#!/usr/bin/env bash
# The whole test suite: setup, lint, the host tests (real nginx on loopback), then the kernel
# tests inside a VM (IPVS needs a kernel with ip_vs; see scripts/vm-test.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
set +e
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
rc=$?
set -e
if [ "$rc" -ne 0 ]; then exit "$rc"; fi
if [ -x scripts/vm-test.sh ] && [ -z "${CLB_SKIP_VM:-}" ]; then
  bash scripts/vm-test.sh
fi
