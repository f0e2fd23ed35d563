# vfio-coldplug-vga: the GPU (std VGA) passed through at boot. The test guest finds
# 1234:1111 with its display class on its own bus, writes a pattern through BAR0 (the
# 16 MiB framebuffer) and reads it back, and none of those accesses leave the guest:
# form-vmm's counters show zero trapped BAR accesses while the guest holds.
# lab-order: 60
# lab-timeout: 90

gpu=$LAB_GPU_BDF
sock=$LAB_TMP/vmm.sock

step "bind the GPU to vfio-pci"
run_logged bind.out vmm-service gpu bind --force "$gpu" || fail "gpu bind exited with status $?"
expect_driver "$gpu" vfio-pci

step "form-vmm boots the test guest with the GPU"
# shellcheck disable=SC2086 # LAB_VMM_DROP is five words
form-vmm --kernel "$LAB_GUEST_ELF" --memory size=64M --serial tty --api-socket "$sock" \
    --cmdline "bar-rw vendor=0x1234 device=0x1111 bar=0 len=0x100000 hold=3" \
    --device "path=/sys/bus/pci/devices/$gpu,id=gpu0" $LAB_VMM_DROP >vmm.out 2>&1 &
vmm=$!
wait_for_output 60 "$vmm" vmm.out '^holding '

# Issue 11: with the GPU's BAR mapped and the guest holding, every thread of the VMM
# runs as $LAB_VMM_UID with no capabilities and its seccomp filter.
step "form-vmm runs as uid $LAB_VMM_UID, without capabilities, every thread filtered"
expect_vmm_confined "$vmm" "$LAB_VMM_UID"
expect_output vmm.out '^found 00:[0-9a-f]{2}\.0 1234:1111 class 030000' "the guest's scan"
expect_output vmm.out '^bar 0 at 0x[0-9a-f]+ size 0x1000000 ' "the guest's BAR0"

step "vm.counters: no trapped BAR access"
vmm_api "$sock" GET vm.counters >counters.json || fail "vm.counters failed: $(cat counters.json)"
cat counters.json
echo
reads=$(json_number counters.json gpu0 mmio_reads)
writes=$(json_number counters.json gpu0 mmio_writes)
[ -n "$reads" ] && [ -n "$writes" ] || fail "vm.counters has no gpu0 mmio_reads/mmio_writes"
[ "$reads" = 0 ] && [ "$writes" = 0 ] ||
    fail "BAR0 accesses trapped: $reads reads, $writes writes (expected a direct mapping)"

step "the guest passes and form-vmm exits"
wait "$vmm"
status=$?
cat vmm.out
[ "$status" = 0 ] || fail "form-vmm exited with status $status"
expect_guest_pass vmm.out

step "unbind the GPU"
run_logged unbind.out vmm-service gpu unbind "$gpu" || fail "gpu unbind exited with status $?"
expect_driver "$gpu" bochs-drm
