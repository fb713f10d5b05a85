#!/usr/bin/env bash
# The whole test suite: setup, lint, the host tests (real nginx on loopback, the agent, the Lua
# units), then the kernel tests inside a VM (IPVS needs a kernel with ip_vs; see scripts/vm-test.sh).
# CLB_DEPLOY_TEST=1 adds the deployment test (scripts/deploy-test.sh).
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
# The deployment test (Ansible onto a systemd VM, checked with testinfra) is opt-in: under software
# emulation it takes far longer than the rest of the suite (docs/deploy.md).
if [ -n "${CLB_DEPLOY_TEST:-}" ]; then
  bash scripts/deploy-test.sh
fi
