#!/usr/bin/env bash
# The whole test suite: setup, lint, the host tests (real nginx on loopback, the agent, the Lua
# units), then two VM phases at the same time: the kernel tests (IPVS needs a kernel with ip_vs;
# scripts/vm-test.sh) and the deployment test (the Ansible role onto a systemd VM, checked with
# testinfra; scripts/deploy-test.sh; its VM image is built during the host tests). Each emulated
# VM keeps about one host core busy, so the two overlap well on a 2-core machine. Their output is
# shown as it comes, each line prefixed with the phase's name, and kept in
# build/test-logs/<phase>.log; each phase is bounded by CLB_VM_PHASE_TIMEOUT (seconds, 1200). The
# exit code is the first failure's. CLB_SKIP_VM=1 stops after the host tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
logs=build/test-logs
mkdir -p "$logs"
# The deployment VM's image (mmdebstrap; cached, so usually nothing to do) is built meanwhile: the
# host tests leave a core to spare. Should it fail, the deploy phase builds it again and says why.
if [ -z "${CLB_SKIP_VM:-}" ]; then
  bash scripts/sysvm.sh image >"$logs/image.log" 2>&1 &
  image=$!
fi
.venv/bin/ruff check .
set +e
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
rc=$?
[ -z "${image:-}" ] || wait "$image" || echo "test: building the VM image failed (log: $logs/image.log)" >&2
set -e
if [ "$rc" -ne 0 ]; then exit "$rc"; fi
[ -z "${CLB_SKIP_VM:-}" ] || exit 0

limit=${CLB_VM_PHASE_TIMEOUT:-1200}
# Runs one phase in the background: its own process group under timeout (which signals the whole
# group, then kills it 120 s later, time enough for the VM to be shut down). Neither reads stdin:
# QEMU makes a shared one non-blocking, which Ansible refuses.
start_phase() {
  local name=$1 code=0
  shift
  rm -f "$logs/$name.rc"
  {
    SECONDS=0
    timeout --kill-after=120 "$limit" "$@" </dev/null 2>&1 || code=$?
    echo "$code $SECONDS" >"$logs/$name.rc"
  } | tee "$logs/$name.log" | sed -u "s/^/[$name] /" &
}
# vm-run.sh bounds its VM in a process group of its own: the same bound.
CLB_VM_TIMEOUT=$limit start_phase kernel bash scripts/vm-test.sh
start_phase deploy bash scripts/deploy-test.sh
wait
rc=0
for name in kernel deploy; do
  read -r code secs <"$logs/$name.rc" || code=1
  [ "$code" -ne 124 ] || echo "test: the $name phase took longer than ${limit}s and was stopped" >&2
  echo "test: $name phase: exit ${code}, ${secs:-?}s (log: $logs/$name.log)" >&2
  [ "$rc" -ne 0 ] || rc=$code
done
exit "$rc"
