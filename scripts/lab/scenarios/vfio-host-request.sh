# vfio-host-request: the host takes its GPU back while a Linux L2 guest uses it. The
# unbind from vfio-pci signals form-vmm through VFIO's request interrupt; form-vmm asks
# the guest to eject the slot (ACPI), the guest's bochs-drm lets go, and the unbind
# returns in seconds instead of blocking until the VM ends. The VM keeps running
# without the GPU, and the GPU goes back to bochs-drm in L1.
# lab-order: 73
# lab-timeout: 240

gpu=$LAB_GPU_BDF
sock=$LAB_TMP/vmm.sock

step "L2 initramfs that waits for the GPU to go"
l2_gpu_hotplug_check 20 >check.sh
l2_initramfs_with l2.cpio.gz check.sh

step "form-vmm boots Linux with the GPU"
vfio_bind "$gpu"
# shellcheck disable=SC2086 # LAB_VMM_DROP: --uid/--gid/--mount-ns (l1-lib.sh)
form-vmm --kernel "$LAB_L2_KERNEL" --initramfs l2.cpio.gz --api-socket "$sock" \
    --cmdline "console=ttyS0 panic=-1 quiet" --memory size=512M --serial tty \
    --device "path=/sys/bus/pci/devices/$gpu,id=gpu0" $LAB_VMM_DROP >vmm.out 2>vmm.log &
vmm=$!
wait_for_output 120 "$vmm" vmm.out '^L2-GPU-(BOUND|NOT-BOUND|NEVER-ADDED)'
expect_output vmm.out '^L2-GPU-BOUND ' "bochs-drm bound to the GPU in L2"

step "the host unbinds the GPU from vfio-pci"
start=$(lab_uptime)
(echo "$gpu" >"/sys/bus/pci/devices/$gpu/driver/unbind") &
unbinder=$!
unbind_done() { ! kill -0 "$unbinder" 2>/dev/null; }
wait_until 40 unbind_done
secs=$(lab_seconds_since "$start")
echo "LAB-TIMING vfio-host-request unbind ${secs}s"
expect_driver "$gpu" none
wait_for_output 30 "$vmm" vmm.out '^L2-GPU-(REMOVED|NEVER-REMOVED)'
expect_output vmm.out '^L2-GPU-REMOVED ' "the guest seeing its GPU ejected"
# The log apart from the guest's console, whose lines it would otherwise cut.
expect_output vmm.log 'the host asked for gpu0 back' "form-vmm's log of the request"

step "the VM runs on without it"
kill -0 "$vmm" 2>/dev/null || fail "form-vmm exited with the GPU"
vmm_api "$sock" GET vm.info >info.json || fail "vm.info failed: $(cat info.json)"
grep -q '"gpu0"' info.json && fail "vm.info still lists gpu0: $(cat info.json)"
grep -q '"Running"' info.json || fail "the VM is not running: $(cat info.json)"

step "the GPU goes back to its host driver"
echo >"/sys/bus/pci/devices/$gpu/driver_override"
echo "$gpu" >/sys/bus/pci/drivers_probe
expect_driver "$gpu" bochs-drm
kill "$vmm"
wait "$vmm" 2>/dev/null
true
