#!/usr/bin/env bash
# Runs one shell command as root inside a throwaway VM: the installed Debian kernel (which has
# ip_vs as modules, unlike the host kernel) booted with virtme-ng over the host's root file
# system (read-only; /tmp and /run are writable overlays). Returns the command's exit code.
#
#   scripts/vm-run.sh 'ipvsadm -Ln'
#
# Environment: CLB_VM_KERNEL (a /boot/vmlinuz-* path; default: the newest one with ip_vs),
# CLB_VM_ACCEL (auto | kvm | tcg; auto probes KVM for a few seconds, since /dev/kvm may exist but
# hang), CLB_VM_MEMORY (2G), CLB_VM_CPUS (2), CLB_VM_TIMEOUT (seconds, 1800: the emulated VM on a
# busy 2-core host runs the kernel suite in 15 minutes or more).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
[ $# -ge 1 ] || { echo "usage: $0 COMMAND" >&2; exit 2; }

# shellcheck source=scripts/vm-lib.sh
. scripts/vm-lib.sh

kernel=${CLB_VM_KERNEL:-$(pick_kernel)}
[ -r "$kernel" ] || { echo "vm: cannot read $kernel" >&2; exit 1; }

accel=${CLB_VM_ACCEL:-auto}
if [ "$accel" = auto ]; then
  if kvm_works "$kernel"; then accel=kvm; else accel=tcg; fi
fi
kvm_flag=()
[ "$accel" = kvm ] || kvm_flag=(--disable-kvm)
echo "vm: booting $kernel ($accel, ${CLB_VM_CPUS:-2} cpus, ${CLB_VM_MEMORY:-2G})" >&2

export PATH="$root/.venv/bin:$PATH"
command -v vng >/dev/null || { echo "vm: vng not found; run scripts/setup.sh (installs the [vm] extra)" >&2; exit 1; }
inner="cd '$root' && export CLB_IN_VM=1 PYTHONDONTWRITEBYTECODE=1 PATH='$root/.venv/bin':\$PATH && modprobe ip_vs && $1"
# Both streams go through pipes: virtme reopens its standard output and error, which truncates a
# file they were redirected to (and pads it with NUL bytes), so never hand it the caller's files.
set +e
timeout "${CLB_VM_TIMEOUT:-1800}" vng --run "$kernel" --user root "${kvm_flag[@]}" \
  --cpus "${CLB_VM_CPUS:-2}" --memory "${CLB_VM_MEMORY:-2G}" -- "$inner" \
  2> >(tr -d '\000' >&2) | tr -d '\000'
rc=${PIPESTATUS[0]}
wait
exit "$rc"
