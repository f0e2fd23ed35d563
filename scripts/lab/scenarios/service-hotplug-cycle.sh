# service-hotplug-cycle: the orchestrator's hotplug path, through vmm-service and
# form-vmm-ctl: a running VM whose test guest polls its bus gets the GPU with
# add-device (the GPU moves to vfio-pci and gpu list names the VM), gives it up with
# remove-device (the guest ejects it when asked; the GPU is back on bochs-drm and
# free), gets it again with a second add-device, and passes; when the guest powers
# off, the GPU goes back to bochs-drm, and delete leaves it there.
# lab-order: 66
# lab-timeout: 120

gpu=$LAB_DISPLAY_BDF

step "vmm-service serve starts"
service_start
expect_driver "$gpu" bochs-drm

step "create --boot: the test guest waits for 1234:1111"
run_logged create.out form-vmm-ctl create --name hp1 --kernel "$LAB_GUEST_ELF" --memory 64M \
    --cmdline "hotplug-cycle vendor=0x1234 device=0x1111 wait=60 eject=1" --boot ||
    fail "create exited with status $? (service log: $(tail -n 5 service.log))"
wait_for_vm_output 30 hp1 '^waiting for 1234:1111 to appear'
expect_driver "$gpu" bochs-drm

step "add-device: the GPU goes to vfio-pci and the guest finds it"
run_logged add.out form-vmm-ctl add-device hp1 --gpu "$gpu" ||
    fail "add-device exited with status $? (service log: $(tail -n 5 service.log))"
expect_driver "$gpu" vfio-pci
expect_gpu_owner "$gpu" hp1
wait_for_vm_output 30 hp1 '^found 00:'
# The hotplug was done by a VMM that had long given up root.
pid=$(vm_field hp1 pid)
expect_vmm_confined "$pid"
expect_vmm_sandbox "$LAB_TMP/run/vms/hp1/api.sock" "$(vmm_uid "$pid")"

step "remove-device: the guest ejects it; the GPU is back on bochs-drm and free"
t0=$(lab_uptime)
run_logged remove.out form-vmm-ctl remove-device hp1 --gpu "$gpu" ||
    fail "remove-device exited with status $? (service log: $(tail -n 5 service.log))"
removed_in=$(lab_seconds_since "$t0")
serial=$(vm_field hp1 serial_log)
expect_output "$serial" '^eject request for slot [0-9]+: ejecting' "the guest's eject"
expect_driver "$gpu" bochs-drm
expect_gpu_owner "$gpu" ""
wait_for_vm_output 30 hp1 '^gone after '

step "add-device again: the guest finds it again"
run_logged add2.out form-vmm-ctl add-device hp1 --gpu "$gpu" ||
    fail "the second add-device exited with status $? (service log: $(tail -n 5 service.log))"
expect_driver "$gpu" vfio-pci
wait_for_vm_output 30 hp1 '^found again 00:'

step "the guest passes; its GPU goes back to bochs-drm when it powers off"
stopped() { [ "$(vm_field hp1 state)" = stopped ]; }
wait_until 30 stopped
expect_guest_pass "$serial"
expect_driver "$gpu" bochs-drm
expect_gpu_owner "$gpu" ""

step "delete"
run_logged delete.out form-vmm-ctl delete hp1 || fail "delete exited with status $?"
expect_driver "$gpu" bochs-drm
kill "$service_pid"
echo "LAB-TIMING service-hotplug-cycle remove-device took ${removed_in}s"
