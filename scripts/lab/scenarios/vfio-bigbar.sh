# vfio-bigbar: ivshmem's 8 GiB 64-bit prefetchable BAR2 (a GPU's BAR1 stand-in) passed
# through: form-vmm places it above 4 GiB, and the test guest maps and writes the last
# page of it and reads it back.
# lab-order: 62
# lab-timeout: 90

ivshmem=$LAB_IVSHMEM_BDF

step "bind ivshmem to vfio-pci"
vfio_bind "$ivshmem"

step "form-vmm runs bar-rw at the far end of BAR2"
# shellcheck disable=SC2086 # LAB_VMM_DROP: --uid/--gid/--mount-ns (l1-lib.sh)
run_logged vmm.out form-vmm --kernel "$LAB_GUEST_ELF" --memory size=64M --serial tty \
    --cmdline "bar-rw vendor=0x1af4 device=0x1110 bar=2 offset=0x1fffff000 len=0x1000" \
    --device "path=/sys/bus/pci/devices/$ivshmem,id=shm0" $LAB_VMM_DROP || fail "form-vmm exited with status $?"
expect_guest_pass vmm.out
expect_output vmm.out '^bar 2 at 0x[0-9a-f]+ size 0x200000000 \(64-bit, prefetchable\)' "BAR2 as the guest sees it"
# Printed only for a window above the VMM's 4 GiB identity map.
expect_output vmm.out '^mapped 0x[0-9a-f]+-0x[0-9a-f]+ above 4 GiB' "BAR2 above 4 GiB"

step "unbind ivshmem"
vfio_unbind "$ivshmem"
