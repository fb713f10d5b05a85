#!/usr/bin/env bash
# A throwaway Debian VM with systemd as PID 1, reachable over SSH on 127.0.0.1: the target host of
# the deployment test (scripts/deploy-test.sh). Built from Debian packages with mmdebstrap (the
# host's Debian apt sources), booted with the host's Debian kernel under QEMU.
#
#   scripts/sysvm.sh image          # build the base image once; prints its directory (cached)
#   scripts/sysvm.sh start RUNDIR   # boot a copy-on-write VM; writes RUNDIR/ssh_config (host "clbvm")
#   scripts/sysvm.sh stop RUNDIR    # power it off (killed after a grace period)
#   scripts/sysvm.sh ssh RUNDIR CMD # run a command in it as root
#
# The image holds the packages of scripts/sysvm-packages.txt, of a gateway's scripts/apt-packages.txt
# and those the Ansible role installs (clbagent_packages of its defaults), so the role's apt task
# finds them installed (the VM has no network). It is cached under CLB_SYSVM_CACHE (default
# ~/.cache/clbagent-sysvm), keyed on that package list, this script and the kernel, so only the
# first run builds it.
# The VM has no network beyond the SSH port forward. Environment: CLB_VM_ACCEL (auto | kvm | tcg),
# CLB_VM_CPUS (2), CLB_VM_MEMORY (2G), CLB_SYSVM_BOOT_TIMEOUT (seconds, 600).
set -euo pipefail
cd "$(dirname "$0")/.."
cache=${CLB_SYSVM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/clbagent-sysvm}

die() { echo "sysvm: $*" >&2; exit 1; }

# shellcheck source=scripts/vm-lib.sh
. scripts/vm-lib.sh

kernel=${CLB_VM_KERNEL:-$(pick_kernel)}
kver=${kernel#/boot/vmlinuz-}
[ -r "/boot/initrd.img-$kver" ] || die "no /boot/initrd.img-$kver to boot $kernel with"

# Debian's own sources only (other vendors' lists on the host are not needed in the image).
debian_sources() {
  local found
  found=$(grep -slE '^[^#]*(deb|URIs:).*debian\.org' /etc/apt/sources.list /etc/apt/sources.list.d/*.list \
    /etc/apt/sources.list.d/*.sources || true)
  [ -n "$found" ] || die "no Debian apt sources on this host"
  echo "$found"
}

# The image's packages, comma-separated and sorted.
image_packages() {
  {
    grep -hv '^\s*#' scripts/sysvm-packages.txt scripts/apt-packages.txt
    python3 -c 'import sys, yaml; print(*yaml.safe_load(open(sys.argv[1]))["clbagent_packages"], sep="\n")' \
      ansible/roles/clbagent/defaults/main.yml
  } | awk 'NF' | sort -u | paste -sd,
}

image_key() {
  { image_packages; cat scripts/sysvm.sh; echo "$kver"; debian_sources | xargs cat; } | sha256sum | cut -c1-16
}

# Units a throwaway gateway VM does not need; under emulation each costs seconds of boot. (No
# console logins, no file system scrubs, no periodic jobs; SSH does not wait for DHCP.)
masked="e2scrub_reap.service e2scrub_all.timer fstrim.timer apt-daily.timer apt-daily-upgrade.timer \
  dpkg-db-backup.timer man-db.timer getty@tty1.service serial-getty@ttyS0.service \
  systemd-networkd-wait-online.service"

build_image() {
  local dir=$1 tree pkgs
  command -v mmdebstrap >/dev/null || die "mmdebstrap not found; run scripts/setup.sh"
  rm -rf "$dir.tmp" && mkdir -p "$dir.tmp"
  ssh-keygen -q -t ed25519 -N '' -C clbagent-sysvm -f "$dir.tmp/id_ed25519"
  tree=$dir.tmp/tree
  pkgs=$(image_packages)
  echo "sysvm: building the image (mmdebstrap, kernel $kver)" >&2
  mmdebstrap --quiet --variant=minbase --include="$pkgs" \
    --customize-hook="mkdir -p \"\$1/usr/lib/modules\" && cp -a /usr/lib/modules/$kver \"\$1/usr/lib/modules/\"" \
    --customize-hook="install -d -m 0700 \"\$1/root/.ssh\" && install -m 0600 $dir.tmp/id_ed25519.pub \"\$1/root/.ssh/authorized_keys\"" \
    --customize-hook="echo clbvm >\"\$1/etc/hostname\" && echo '/dev/vda / ext4 rw,errors=remount-ro 0 1' >\"\$1/etc/fstab\"" \
    --customize-hook="printf '[Match]\nName=eth0\n\n[Network]\nDHCP=ipv4\n' >\"\$1/etc/systemd/network/10-eth0.network\"" \
    --customize-hook="chroot \"\$1\" systemctl enable systemd-networkd >/dev/null 2>&1" \
    --customize-hook="chroot \"\$1\" passwd -d root >/dev/null" \
    --customize-hook="chroot \"\$1\" systemctl mask $masked >/dev/null 2>&1" \
    bookworm "$tree" $(debian_sources)
  mke2fs -q -t ext4 -L clbroot -d "$tree" "$dir.tmp/root.img" 4G >&2
  rm -rf "$tree"
  rm -rf "$dir" && mv "$dir.tmp" "$dir"
  # Images of other keys are outdated: keep only this one.
  find "$cache" -mindepth 1 -maxdepth 1 ! -path "$dir" -exec rm -rf {} +
}

cmd_image() {
  local dir
  dir=$cache/$(image_key)
  [ -f "$dir/root.img" ] || build_image "$dir"
  echo "$dir"
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

vm_ssh() {
  local run=$1
  shift
  ssh -F "$run/ssh_config" clbvm "$@"
}

cmd_start() {
  local run=$1 image accel port deadline
  image=$(cmd_image)
  mkdir -p "$run"
  run=$(cd "$run" && pwd)
  qemu-img create -q -f qcow2 -F raw -b "$image/root.img" "$run/root.qcow2"
  install -m 0600 "$image/id_ed25519" "$run/id_ed25519"
  accel=${CLB_VM_ACCEL:-auto}
  if [ "$accel" = auto ]; then
    if kvm_works "$kernel"; then accel=kvm; else accel=tcg; fi
  fi
  port=$(free_port)
  cat >"$run/ssh_config" <<EOF
Host clbvm
  HostName 127.0.0.1
  Port $port
  User root
  IdentityFile $run/id_ed25519
  IdentitiesOnly yes
  StrictHostKeyChecking no
  UserKnownHostsFile /dev/null
  LogLevel ERROR
  ConnectTimeout 20
  ServerAliveInterval 15
  ServerAliveCountMax 8
  ControlMaster auto
  ControlPath $run/ssh-%C
  ControlPersist 300
EOF
  # The disk is a throwaway copy: the guest's flushes need not reach the host's disk (cache=unsafe).
  # No speculative-execution mitigations in a test guest: retpolines cost much under emulation.
  echo "sysvm: booting $kernel ($accel, ${CLB_VM_CPUS:-2} cpus, ${CLB_VM_MEMORY:-2G}), ssh on 127.0.0.1:$port" >&2
  qemu-system-x86_64 -accel "$accel" -smp "${CLB_VM_CPUS:-2}" -m "${CLB_VM_MEMORY:-2G}" \
    -kernel "$kernel" -initrd "/boot/initrd.img-$kver" \
    -append "root=/dev/vda rw console=ttyS0 net.ifnames=0 quiet systemd.show_status=1 mitigations=off" \
    -drive "file=$run/root.qcow2,format=qcow2,if=virtio,cache=unsafe" \
    -netdev "user,id=n0,hostfwd=tcp:127.0.0.1:$port-:22" -device virtio-net-pci,netdev=n0 \
    -device virtio-rng-pci -display none -serial "file:$run/console.log" -monitor none \
    -pidfile "$run/qemu.pid" -daemonize
  deadline=$((SECONDS + ${CLB_SYSVM_BOOT_TIMEOUT:-600}))
  until vm_ssh "$run" true 2>/dev/null; do
    ((SECONDS < deadline)) || { tail -n 30 "$run/console.log" >&2; die "no SSH after ${CLB_SYSVM_BOOT_TIMEOUT:-600}s"; }
    kill -0 "$(cat "$run/qemu.pid")" 2>/dev/null || { tail -n 30 "$run/console.log" >&2; die "QEMU exited"; }
    sleep 2
  done
  # Boot is over when systemd says so (degraded is fine: the host is usable).
  vm_ssh "$run" 'timeout 300 systemctl is-system-running --wait >/dev/null; systemctl is-system-running' >&2 || true
  echo "sysvm: up after ${SECONDS}s" >&2
}

cmd_stop() {
  local run=$1 pid
  [ -f "$run/qemu.pid" ] || return 0
  pid=$(cat "$run/qemu.pid")
  vm_ssh "$run" 'systemctl poweroff' >/dev/null 2>&1 || true
  for _ in $(seq 60); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 1
  done
  kill "$pid" 2>/dev/null || true
  ssh -F "$run/ssh_config" -O exit clbvm >/dev/null 2>&1 || true
  rm -f "$run/qemu.pid" "$run/root.qcow2"
}

case ${1:-} in
  image) cmd_image ;;
  start) [ $# -eq 2 ] || die "usage: $0 start RUNDIR"; cmd_start "$2" ;;
  stop) [ $# -eq 2 ] || die "usage: $0 stop RUNDIR"; cmd_stop "$2" ;;
  ssh) [ $# -ge 3 ] || die "usage: $0 ssh RUNDIR CMD"; run=$2; shift 2; vm_ssh "$run" "$@" ;;
  *) die "usage: $0 image | start RUNDIR | stop RUNDIR | ssh RUNDIR CMD" ;;
esac
