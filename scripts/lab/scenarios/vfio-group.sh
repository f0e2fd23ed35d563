# vfio-group: q35's LPC, SATA and SMBus functions (00:1f.0/2/3) share one IOMMU group.
# With all three on vfio-pci, form-vmm takes only 00:1f.2: the kernel gives a group to
# one container, so the other members are held idle, and form-vmm says so, naming them.
# While that VM holds the group, a second form-vmm asking for 00:1f.3 is refused before
# its guest starts: the group is held by another process.
# lab-order: 65
# lab-timeout: 90

target=0000:00:1f.2
other=0000:00:1f.3
sock=$LAB_TMP/vmm.sock

step "all members of the group on vfio-pci"
group=$(pci_group "$target")
[ -n "$group" ] || fail "$target has no IOMMU group"
for bdf in $LAB_GROUP_BDFS; do
    [ "$(pci_group "$bdf")" = "$group" ] || fail "$bdf is not in $target's group $group"
    vfio_bind "$bdf"
done

step "form-vmm takes one member and names the idle ones"
# The guest waits for a device that never comes, so the VM holds the group meanwhile.
# shellcheck disable=SC2086 # LAB_VMM_DROP: --uid/--gid/--mount-ns (l1-lib.sh)
form-vmm --kernel "$LAB_GUEST_ELF" --memory size=64M --serial tty --api-socket "$sock" \
    --cmdline "hotplug-cycle vendor=0x1234 device=0x11e8 wait=60 eject=1" \
    --device "path=/sys/bus/pci/devices/$target,id=sata0" $LAB_VMM_DROP >vmm.out 2>&1 &
vmm=$!
wait_for_output 30 "$vmm" vmm.out '^waiting for 1234:11e8 to appear'
for bdf in $LAB_GROUP_BDFS; do
    [ "$bdf" = "$target" ] && continue
    expect_output vmm.out "also holds .*$bdf" "form-vmm's warning about the idle members"
done

step "a second VM cannot have the group"
if run_logged vmm2.out form-vmm --kernel "$LAB_GUEST_ELF" --memory size=64M --serial tty \
    --cmdline hello --device "path=/sys/bus/pci/devices/$other,id=smbus0"; then
    fail "a second form-vmm got a member of a group another VM holds"
fi
expect_output vmm2.out "IOMMU group $group of $other is held by another process" "the refusal"
! grep -q '^form-test-guest: scenario' vmm2.out || fail "the second guest started despite the refusal"

step "the first VM lets go; the group is free again"
kill "$vmm"
wait "$vmm" 2>/dev/null
# shellcheck disable=SC2086 # LAB_VMM_DROP: --uid/--gid/--mount-ns (l1-lib.sh)
run_logged vmm3.out form-vmm --kernel "$LAB_GUEST_ELF" --memory size=64M --serial tty \
    --cmdline hello --device "path=/sys/bus/pci/devices/$other,id=smbus0" $LAB_VMM_DROP ||
    fail "form-vmm could not take $other once the first VM was gone (status $?)"

step "put the group back on its drivers"
for bdf in $LAB_GROUP_BDFS; do
    vfio_unbind "$bdf"
done
