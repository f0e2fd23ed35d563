# vfio-msix: the e1000e NIC passed through. The test guest enables MSI-X, makes the NIC
# raise vector 0 (ICS), receives it; masked, nothing arrives and the PBA bit is set;
# unmasked, the pending message arrives.
# lab-order: 63
# lab-timeout: 90

nic=$LAB_NIC_BDF

step "bind the NIC to vfio-pci"
vfio_bind "$nic"

step "form-vmm runs the msix scenario"
# shellcheck disable=SC2086 # LAB_VMM_DROP: --uid/--gid/--mount-ns (l1-lib.sh)
run_logged vmm.out form-vmm --kernel "$LAB_GUEST_ELF" --memory size=64M --serial tty \
    --cmdline "msix vendor=0x8086 device=0x10d3" \
    --device "path=/sys/bus/pci/devices/$nic,id=nic0" $LAB_VMM_DROP || fail "form-vmm exited with status $?"
expect_guest_pass vmm.out
expect_output vmm.out '^msix: unmasked: received vector 0x41' "delivery of an unmasked vector"
expect_output vmm.out '^msix: masked: nothing arrived in [0-9]+ ms, pba pending bit set' "masking"
expect_output vmm.out '^msix: unmasked again: pending vector 0x41 delivered' "the pending message"

step "unbind the NIC"
vfio_unbind "$nic"
