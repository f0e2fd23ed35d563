# linux-hotplug: a running Linux L2 guest gets the GPU with vm.add-device and, without a
# manual rescan, sees it and binds bochs-drm; after vm.remove-device it is gone from the
# guest's /sys/bus/pci/devices, form-vmm holds no more file descriptors than before, and
# the GPU is free: a second VM gets it and writes through its framebuffer.
# lab-order: 71
# lab-timeout: 300

gpu=$LAB_GPU_BDF
sock=$LAB_TMP/vmm.sock

step "L2 initramfs that waits for the GPU to come and go"
l2_gpu_hotplug_check >check.sh
l2_initramfs_with l2.cpio.gz check.sh

step "bind the GPU to vfio-pci"
run_logged bind.out vmm-service gpu bind --force "$gpu" || fail "gpu bind exited with status $?"
expect_driver "$gpu" vfio-pci

step "form-vmm boots Linux without the GPU"
# shellcheck disable=SC2086 # LAB_VMM_DROP: --uid/--gid/--mount-ns (l1-lib.sh)
form-vmm --kernel "$LAB_L2_KERNEL" --initramfs l2.cpio.gz --api-socket "$sock" \
    --cmdline "console=ttyS0 panic=-1 quiet" --memory size=512M --serial tty $LAB_VMM_DROP >vmm.out 2>&1 &
vmm=$!
wait_for_output 120 "$vmm" vmm.out '^L2-HOTPLUG-READY 0 GPUs'
wait_until 10 vmm_api_ready "$sock"
fds_before=$(open_fds "$vmm")

step "vm.add-device: bochs-drm binds in the guest"
vfio_group_to_vmm "$gpu"
vmm_api "$sock" PUT vm.add-device "{\"path\":\"/sys/bus/pci/devices/$gpu\",\"id\":\"gpu0\"}" >add.json ||
    fail "vm.add-device failed: $(cat add.json)"
cat add.json
echo
wait_for_output 60 "$vmm" vmm.out '^L2-GPU-(BOUND|NOT-BOUND|NEVER-ADDED)'
expect_output vmm.out '^L2-GPU-BOUND ' "bochs-drm binding the hotplugged GPU"
wait_for_output 30 "$vmm" vmm.out '^L2-(NO-)?FB0'
expect_output vmm.out '^L2-FB0' "/dev/fb0 after the hotplug"

step "vm.remove-device: gone from the guest, no fds left behind"
vmm_api "$sock" PUT vm.remove-device '{"id":"gpu0"}' >remove.json ||
    fail "vm.remove-device failed: $(cat remove.json)"
wait_for_output 60 "$vmm" vmm.out '^L2-GPU-(REMOVED|NEVER-REMOVED)'
expect_output vmm.out '^L2-GPU-REMOVED ' "the GPU leaving the guest"
fds_after=$(open_fds "$vmm")
[ "$fds_after" = "$fds_before" ] ||
    fail "form-vmm holds $fds_after fds after the removal, $fds_before before the add"

step "the guest powers off and form-vmm exits"
wait "$vmm"
status=$?
cat vmm.out
[ "$status" = 0 ] || fail "form-vmm exited with status $status"

step "the GPU is free for another VM"
# shellcheck disable=SC2086 # LAB_VMM_DROP: --uid/--gid/--mount-ns (l1-lib.sh)
run_logged vmm2.out form-vmm --kernel "$LAB_GUEST_ELF" --memory size=64M --serial tty \
    --cmdline "bar-rw vendor=0x1234 device=0x1111 bar=0" \
    --device "path=/sys/bus/pci/devices/$gpu,id=gpu0" $LAB_VMM_DROP || fail "the second form-vmm exited with status $?"
expect_guest_pass vmm2.out

step "unbind the GPU"
run_logged unbind.out vmm-service gpu unbind "$gpu" || fail "gpu unbind exited with status $?"
expect_driver "$gpu" bochs-drm
