# service-hotplug-linux: a Linux guest through vmm-service and form-vmm-ctl: add-device
# on the running VM, and Linux (acpiphp, no manual rescan) finds the GPU and binds
# bochs-drm; remove-device, and Linux ejects it (gone from its bus) while the command
# waits; the GPU is back on bochs-drm in L1, free, and the VM runs on.
# lab-order: 72
# lab-timeout: 240

gpu=$LAB_DISPLAY_BDF

step "L2 initramfs that waits for the GPU to come and go"
# L2 stays up after the removal until the scenario deletes it.
l2_gpu_hotplug_check 120 >check.sh
l2_initramfs_with l2.cpio.gz check.sh

step "vmm-service serve starts"
service_start
expect_driver "$gpu" bochs-drm

step "create --boot: Linux without the GPU"
run_logged create.out form-vmm-ctl create --name hpl --kernel "$LAB_L2_KERNEL" \
    --initramfs l2.cpio.gz --cmdline "console=ttyS0 panic=-1 quiet" --memory 512M --boot ||
    fail "create exited with status $? (service log: $(tail -n 5 service.log))"
wait_for_vm_output 120 hpl '^L2-HOTPLUG-READY 0 GPUs'

step "add-device: bochs-drm binds in the guest"
run_logged add.out form-vmm-ctl add-device hpl --gpu "$gpu" ||
    fail "add-device exited with status $? (service log: $(tail -n 5 service.log))"
expect_driver "$gpu" vfio-pci
expect_gpu_owner "$gpu" hpl
wait_for_vm_output 60 hpl '^L2-GPU-(BOUND|NOT-BOUND|NEVER-ADDED)'
serial=$(vm_field hpl serial_log)
expect_output "$serial" '^L2-GPU-BOUND ' "bochs-drm binding the hotplugged GPU"

step "remove-device: the guest ejects it; the GPU is back on bochs-drm"
t0=$(lab_uptime)
run_logged remove.out form-vmm-ctl remove-device hpl --gpu "$gpu" ||
    fail "remove-device exited with status $? (service log: $(tail -n 5 service.log))"
removed_in=$(lab_seconds_since "$t0")
state=$(vm_field hpl state)
[ "$state" = running ] || fail "the VM is '$state' after the removal, not running"
expect_driver "$gpu" bochs-drm
expect_gpu_owner "$gpu" ""
wait_for_vm_output 30 hpl '^L2-GPU-(REMOVED|NEVER-REMOVED)'
expect_output "$serial" '^L2-GPU-REMOVED ' "the GPU leaving the guest"

step "delete"
run_logged delete.out form-vmm-ctl delete hpl || fail "delete exited with status $?"
expect_driver "$gpu" bochs-drm
kill "$service_pid"
echo "LAB-TIMING service-hotplug-linux remove-device took ${removed_in}s"
