#!/usr/bin/env bash
# The kernel test suite (tests/kernel: IPVS with real TCP/UDP traffic through network namespaces)
# inside a VM running the Debian kernel, which has ip_vs (the host kernel may not). Returns
# pytest's exit code. Extra arguments go to pytest.
#
#   scripts/vm-test.sh              # kernel tests
#   scripts/vm-test.sh -k drain     # some of them
#   scripts/vm-test.sh --bench      # the L4 benchmark (bench/l4_bench.py) instead
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--bench" ]; then
  shift
  exec bash scripts/vm-run.sh ".venv/bin/python bench/l4_bench.py ${*:+$(printf '%q ' "$@")}"
fi
exec bash scripts/vm-run.sh ".venv/bin/python -m pytest -q -p no:cacheprovider -rfE --tb=short tests/kernel ${*:+$(printf '%q ' "$@")}"
