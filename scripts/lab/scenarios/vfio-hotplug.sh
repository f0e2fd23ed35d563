# vfio-hotplug: edu added to a running guest with vm.add-device, removed with
# vm.remove-device, and added again. The test guest sees it appear, answers the removal
# request through the hotplug controller's eject register (eject=1), sees it go and come
# back on the same slot, and form-vmm holds as many file descriptors after the removal as before
# the first add (no leaked VFIO device, group or eventfd).
# lab-order: 64
# lab-timeout: 150

edu=$LAB_EDU_BDF
sock=$LAB_TMP/vmm.sock
add_body="{\"path\":\"/sys/bus/pci/devices/$edu\",\"id\":\"edu0\"}"

step "bind edu to vfio-pci"
vfio_bind "$edu"

step "form-vmm boots the test guest without edu"
# shellcheck disable=SC2086 # LAB_VMM_DROP: --uid/--gid/--mount-ns (l1-lib.sh)
form-vmm --kernel "$LAB_GUEST_ELF" --memory size=64M --serial tty --api-socket "$sock" \
    --cmdline "hotplug-cycle vendor=0x1234 device=0x11e8 wait=60 eject=1" $LAB_VMM_DROP >vmm.out 2>&1 &
vmm=$!
wait_for_output 30 "$vmm" vmm.out '^waiting for 1234:11e8 to appear'
wait_until 10 vmm_api_ready "$sock"
fds_before=$(open_fds "$vmm")

step "vm.add-device: the guest finds edu"
vfio_group_to_vmm "$edu"
vmm_api "$sock" PUT vm.add-device "$add_body" >add.json || fail "vm.add-device failed: $(cat add.json)"
cat add.json
echo
wait_for_output 30 "$vmm" vmm.out '^found 00:'
slot=$(sed -n 's/^found \(00:[0-9a-f]*\.[0-7]\) .*/\1/p' vmm.out)
expect_vmm_confined "$vmm" "$LAB_VMM_UID"
expect_vmm_sandbox "$sock" "$LAB_VMM_UID"

step "vm.remove-device: the guest sees it go"
vmm_api "$sock" PUT vm.remove-device '{"id":"edu0"}' >remove.json ||
    fail "vm.remove-device failed: $(cat remove.json)"
wait_for_output 60 "$vmm" vmm.out '^gone after '
expect_output vmm.out '^eject request for slot [0-9]+: ejecting' "the guest's eject"
fds_after=$(open_fds "$vmm")
[ "$fds_after" = "$fds_before" ] ||
    fail "form-vmm holds $fds_after fds after the removal, $fds_before before the add"

step "vm.add-device again: same slot"
vmm_api "$sock" PUT vm.add-device "$add_body" >add2.json || fail "the second vm.add-device failed: $(cat add2.json)"
wait_for_output 30 "$vmm" vmm.out '^found again 00:'
again=$(sed -n 's/^found again \(00:[0-9a-f]*\.[0-7]\) .*/\1/p' vmm.out)
[ "$again" = "$slot" ] || fail "edu came back at $again, first at $slot (a slot leaked)"

step "the guest passes and form-vmm exits"
wait "$vmm"
status=$?
cat vmm.out
[ "$status" = 0 ] || fail "form-vmm exited with status $status"
expect_guest_pass vmm.out

step "unbind edu"
vfio_unbind "$edu"
