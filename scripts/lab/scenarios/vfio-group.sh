# vfio-group: q35's LPC, SATA and SMBus functions (00:1f.0/2/3) share one IOMMU group.
# With all three on vfio-pci, asking form-vmm for only 00:1f.2 is refused, and the
# refusal names the group's other members; form-vmm exits without starting the guest.
# lab-order: 65
# lab-timeout: 60

target=0000:00:1f.2

step "all members of the group on vfio-pci"
group=$(pci_group "$target")
[ -n "$group" ] || fail "$target has no IOMMU group"
for bdf in $LAB_GROUP_BDFS; do
    [ "$(pci_group "$bdf")" = "$group" ] || fail "$bdf is not in $target's group $group"
    vfio_bind "$bdf"
done

step "form-vmm refuses a partial group"
if run_logged vmm.out form-vmm --kernel "$LAB_GUEST_ELF" --memory size=64M --serial tty \
    --cmdline hello --device "path=/sys/bus/pci/devices/$target,id=sata0"; then
    fail "form-vmm accepted one member of a shared IOMMU group"
fi
! grep -q '^form-test-guest: scenario' vmm.out || fail "the guest started despite the refusal"
for bdf in $LAB_GROUP_BDFS; do
    [ "$bdf" = "$target" ] && continue
    expect_output vmm.out "$bdf" "form-vmm's refusal (it should name every group member)"
done

step "put the group back on its drivers"
for bdf in $LAB_GROUP_BDFS; do
    vfio_unbind "$bdf"
done
