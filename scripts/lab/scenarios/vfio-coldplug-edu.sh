# vfio-coldplug-edu: QEMU's edu device passed through at boot. The test guest reads its
# ID and liveness registers through BAR0, runs a DMA round trip through guest RAM (which
# needs form-vmm's IOMMU mapping of guest memory), and receives the device's MSI, both
# raised by hand and on DMA completion.
# lab-order: 61
# lab-timeout: 90

edu=$LAB_EDU_BDF

step "bind edu to vfio-pci"
vfio_bind "$edu"

step "form-vmm runs the edu scenario"
# shellcheck disable=SC2086 # LAB_VMM_DROP: --uid/--gid/--mount-ns (l1-lib.sh)
run_logged vmm.out form-vmm --kernel "$LAB_GUEST_ELF" --memory size=64M --serial tty \
    --cmdline edu --device "path=/sys/bus/pci/devices/$edu,id=edu0" $LAB_VMM_DROP ||
    fail "form-vmm exited with status $?"
expect_guest_pass vmm.out
expect_output vmm.out '^edu: id 0x010000ed' "the edu ID register"
expect_output vmm.out '^dma: 1024 bytes RAM -> device -> RAM at 0x[0-9a-f]+: match' "the DMA round trip"
expect_output vmm.out '^msi: received vector 0x40' "MSI delivery"

step "unbind edu"
vfio_unbind "$edu"
