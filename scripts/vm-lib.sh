# Shell functions shared by the VM scripts (sourced, not run): which kernel to boot, and whether
# KVM works on this machine.

# The newest /boot/vmlinuz-* whose modules include ip_vs (Debian's names sort by version well enough).
pick_kernel() {
  local best="" v k
  for k in /boot/vmlinuz-*; do
    v=${k#/boot/vmlinuz-}
    if compgen -G "/usr/lib/modules/$v/kernel/net/netfilter/ipvs/ip_vs.ko*" >/dev/null; then
      best=$k
    fi
  done
  [ -n "$best" ] || { echo "vm: no /boot/vmlinuz-* with ip_vs modules (apt-get install linux-image-amd64)" >&2; return 1; }
  echo "$best"
}

# KVM works when a guest kernel ($1) boots far enough to panic on a missing root within a few
# seconds; /dev/kvm may exist but hang, and then software emulation (TCG) has to be used.
kvm_works() {
  [ -w /dev/kvm ] || return 1
  timeout 8 qemu-system-x86_64 -accel kvm -m 256 -nographic -no-reboot -kernel "$1" \
    -append "console=ttyS0 panic=-1 root=/dev/nonexistent" </dev/null 2>/dev/null |
    grep -q -m1 -E "Kernel panic|VFS: Unable to mount"
}
