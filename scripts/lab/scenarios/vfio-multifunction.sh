# vfio-multifunction: a display GPU and its HDMI-audio function share one slot and one
# IOMMU group in L1, as on a PCIe card with display outputs. Passed to a Linux L2
# together (audio named first: the order given does not matter), the guest finds them
# in one slot with their function numbers (GPU at .0, audio at .1, function 0 marked
# multifunction, which is what makes Linux scan .1), and bochs-drm binds the GPU.
# lab-order: 72
# lab-timeout: 240

gpu=$LAB_SIBLING_GPU_BDF
audio=$LAB_SIBLING_AUDIO_BDF

step "the GPU and its audio function share an IOMMU group"
group=$(pci_group "$gpu")
[ -n "$group" ] || fail "$gpu has no IOMMU group"
[ "$(pci_group "$audio")" = "$group" ] ||
    fail "$audio is in group $(pci_group "$audio"), $gpu in $group: the lab's L1 lost its shape"

step "L2 initramfs that lists its PCI functions"
cat >check.sh <<'CHECK'
#!/bin/sh
busybox --install -s /bin
while read -r name _; do
    insmod "/lib/modules/lab/$name.ko" || echo "L2-MODULE-FAIL $name"
done </lib/modules/lab/load-order
i=0
while [ ! -e /dev/fb0 ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
for dev in /sys/bus/pci/devices/*; do
    drv=none
    [ -e "$dev/driver" ] && drv=$(basename "$(readlink "$dev/driver")")
    header=$(dd if="$dev/config" bs=1 skip=14 count=1 2>/dev/null | od -An -tx1 | tr -d ' ')
    echo "L2-PCI-FUNCTION ${dev##*/} $(cat "$dev/vendor"):$(cat "$dev/device") header=$header $drv"
done
CHECK
l2_initramfs_with l2.cpio.gz check.sh

step "bind the GPU's group to vfio-pci"
run_logged bind.out vmm-service gpu bind "$gpu" || fail "gpu bind exited with status $?"
expect_driver "$gpu" vfio-pci
expect_driver "$audio" vfio-pci

step "form-vmm boots Linux with both functions"
# shellcheck disable=SC2086 # LAB_VMM_DROP: --uid/--gid/--mount-ns (l1-lib.sh)
run_logged vmm.out form-vmm --kernel "$LAB_L2_KERNEL" --initramfs l2.cpio.gz \
    --cmdline "console=ttyS0 panic=-1 quiet" --memory size=512M --serial tty \
    --device "path=/sys/bus/pci/devices/$audio,id=gpu0-f1" \
    --device "path=/sys/bus/pci/devices/$gpu,id=gpu0" $LAB_VMM_DROP ||
    fail "form-vmm exited with status $?"
expect_output vmm.out "L2-USERSPACE-OK" "L2's serial output"
! grep -q L2-MODULE-FAIL vmm.out || fail "L2: $(grep -m1 L2-MODULE-FAIL vmm.out)"
expect_output vmm.out '^L2-PCI-FUNCTION 0000:00:01\.0 0x1234:0x1111 header=80 bochs-drm' \
    "the GPU at 00:01.0, multifunction, bound to bochs-drm"
expect_output vmm.out '^L2-PCI-FUNCTION 0000:00:01\.1 0x8086:0x2668 header=00 ' \
    "the audio function at 00:01.1"

step "the GPU alone: its audio function is held idle, and named"
# shellcheck disable=SC2086 # LAB_VMM_DROP: --uid/--gid/--mount-ns (l1-lib.sh)
run_logged vmm2.out form-vmm --kernel "$LAB_GUEST_ELF" --memory size=64M --serial tty \
    --cmdline "bar-rw vendor=0x1234 device=0x1111 bar=0" \
    --device "path=/sys/bus/pci/devices/$gpu,id=gpu0" $LAB_VMM_DROP || fail "form-vmm exited with status $?"
expect_guest_pass vmm2.out
expect_output vmm2.out "also holds $audio" "form-vmm naming the idle audio function"

step "the group goes back to its drivers"
run_logged unbind.out vmm-service gpu unbind "$gpu" || fail "gpu unbind exited with status $?"
expect_driver "$gpu" bochs-drm
expect_driver "$audio" none
