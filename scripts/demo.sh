#!/usr/bin/env bash
# One command from a fresh machine: set everything up, then validate and render the bundled example.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/clbagent validate fixtures/examples
.venv/bin/clbagent render --dry-run fixtures/examples/full.yaml
