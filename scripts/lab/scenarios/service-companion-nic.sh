# service-companion-nic: a GPU with a NIC companion (GPUDirect RDMA's shape), through
# the service. A NIC is not on the service's default allow-list: asking for one is
# refused (class_not_allowed) and leaves everything on its driver. With
# `--allow-class nic`, a VM asking for one GPU and one NIC by request gets the L1 NIC,
# placed by its GPU (L1 has one node, so the node's NIC): both are passed through, the
# test guest sees the e1000e on its bus, and deleting the VM gives the NIC back to the
# driver it had (none in L1, which does not load e1000e).
# lab-order: 62
# lab-timeout: 120

gpu=$LAB_DISPLAY_BDF
nic=$LAB_NIC_BDF

step "vmm-service serve starts with the default allow-list"
service_start
nic_driver=$(pci_driver "$nic")
gpu_driver=$(pci_driver "$gpu")

step "a NIC companion is refused: not on the allow-list"
if run_logged refused.out form-vmm-ctl create --name nic0 --kernel "$LAB_GUEST_ELF" \
    --cmdline hello --memory 64M --gpu "$gpu" --device "$nic"; then
    fail "the service passed a NIC it was not allowed to"
fi
expect_output refused.out "class_not_allowed|--allow-class" "the refusal naming the allow-list"
expect_driver "$nic" "$nic_driver"
expect_driver "$gpu" "$gpu_driver"
run_quiet list.json form-vmm-ctl --json list || fail "list exited with status $?"
! grep -q '"nic0"' list.json || fail "the refused VM was recorded: $(cat list.json)"
kill "$service_pid"
wait "$service_pid" 2>/dev/null

step "vmm-service serve starts with --allow-class nic"
service_start --allow-class nic
gpu_name=$(form-vmm-ctl --json gpu list >gpus.json && json_after gpus.json bdf "$gpu" name)
[ -n "$gpu_name" ] || fail "gpu list has no name for $gpu: $(cat gpus.json)"

step "one GPU and one NIC by request"
run_logged create.out form-vmm-ctl create --name nic1 --kernel "$LAB_GUEST_ELF" \
    --cmdline pci-scan --memory 64M --gpu-model "$gpu_name" --gpu-count 1 --nic-count 1 ||
    fail "create exited with status $? (service log: $(tail -n 5 service.log))"
expect_driver "$nic" vfio-pci
run_quiet devices.json form-vmm-ctl --json device list || fail "device list exited with status $?"
owner=$(json_after devices.json bdf "$nic" owner)
[ "$owner" = nic1 ] || fail "device list says $nic belongs to '$owner', not nic1"

step "boot: the guest sees the NIC"
run_quiet info.json form-vmm-ctl --json info nic1 || fail "info exited with status $?"
serial=$(json_after info.json name nic1 serial_log)
run_logged boot.out form-vmm-ctl boot nic1 || fail "boot exited with status $?"
stopped() {
    form-vmm-ctl --json info nic1 >info2.json 2>/dev/null &&
        [ "$(json_after info2.json name nic1 state)" = stopped ]
}
wait_until 60 stopped
expect_output "$serial" "form-test-guest: PASS" "the test guest's serial output"
expect_output "$serial" "pci 00:[0-9a-f.]+ 8086:10d3" "the e1000e in the guest's scan"

step "deleting the VM gives the NIC back to its driver"
run_logged delete.out form-vmm-ctl delete nic1 || fail "delete exited with status $?"
expect_driver "$nic" "$nic_driver"
expect_driver "$gpu" "$gpu_driver"
kill "$service_pid"
