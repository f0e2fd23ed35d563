# linux-in-l1: form-vmm boots Debian's generic kernel (the bzImage that L1 itself runs)
# with a small busybox initramfs inside the L1 host, on nested KVM; the L2 /init prints a
# marker from userspace and powers off, and form-vmm exits cleanly.
# lab-order: 40
# lab-timeout: 180

step "L2 kernel and initramfs are in L1"
expect_file "$LAB_L2_KERNEL" "the L2 kernel"
expect_file "$LAB_L2_INITRAMFS" "the L2 initramfs"
expect_file /dev/kvm

step "form-vmm boots Linux to userspace"
start=$(lab_uptime)
# shellcheck disable=SC2086 # LAB_VMM_DROP: --uid/--gid/--mount-ns (l1-lib.sh)
run_logged vmm.out form-vmm --kernel "$LAB_L2_KERNEL" --initramfs "$LAB_L2_INITRAMFS" \
    --cmdline "console=ttyS0 panic=-1 quiet" --memory size=256M --serial tty $LAB_VMM_DROP ||
    fail "form-vmm exited with status $? ($(grep -c L2-USERSPACE-OK vmm.out) userspace markers seen)"
secs=$(lab_seconds_since "$start")
expect_output vmm.out "L2-USERSPACE-OK" "L2's serial output"
echo "LAB-TIMING linux-in-l1 form-vmm start to exit ${secs}s"
