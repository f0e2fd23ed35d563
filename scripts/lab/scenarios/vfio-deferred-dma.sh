# vfio-deferred-dma: guest RAM mapped for DMA while the guest starts
# (memory.dma_map=deferred, the default). First the test guest with 2 GiB and edu: it
# turns bus mastering on within milliseconds of its start, long before 2 GiB are
# mapped, so form-vmm holds that write until they are (it logs how long), and edu's
# DMA round trip and MSI then work. Then a Linux L2 with 2 GiB, the GPU and edu:
# form-vmm says its vCPUs ran before the mapping was done, and that it finished; in
# L2, edu's DMA engine copies a word from the last MiB of RAM (the last piece mapped)
# into the device and back to another address there. bochs-drm binds the GPU.
# lab-order: 71
# lab-timeout: 240

gpu=$LAB_GPU_BDF
edu=$LAB_EDU_BDF
# The last MiB of the 2 GiB guest, held back from L2's allocator (memmap=) so the
# check may write it through /dev/mem.
page=0x7ff00000

step "bind edu to vfio-pci"
vfio_bind "$edu"

step "the test guest's bus mastering waits for 2 GiB to be mapped"
# shellcheck disable=SC2086 # LAB_VMM_DROP: --uid/--gid/--mount-ns (l1-lib.sh)
run_logged guest.out form-vmm -v --kernel "$LAB_GUEST_ELF" --memory size=2G --serial tty \
    --cmdline edu --device "path=/sys/bus/pci/devices/$edu,id=edu0" $LAB_VMM_DROP ||
    fail "form-vmm exited with status $?"
expect_guest_pass guest.out
expect_output guest.out "the guest's Bus Master Enable waited [0-9]+ ms for guest RAM's DMA mapping" \
    "the guest's Bus Master Enable held until RAM was mapped"
expect_output guest.out '^dma: 1024 bytes RAM -> device -> RAM at 0x[0-9a-f]+: match' "edu's DMA round trip"
waited=$(grep -oE 'Bus Master Enable waited [0-9]+ ms' guest.out | head -n1)

step "L2 initramfs with the DRM modules and an edu DMA round trip"
cat >check.sh <<CHECK
#!/bin/sh
busybox --install -s /bin
while read -r name _; do
    insmod "/lib/modules/lab/\$name.ko" || echo "L2-MODULE-FAIL \$name"
done </lib/modules/lab/load-order
page=$page
CHECK
cat >>check.sh <<'CHECK'
# edu's DMA registers (QEMU docs/specs/edu.txt): source, destination, count, command
# (bit 0 start, bit 1 device-to-RAM); its buffer is at 0x40000 in its own space.
edu_dma() { # BAR SRC DST CMD
    devmem $(($1 + 0x80)) 32 "$2"; devmem $(($1 + 0x84)) 32 0
    devmem $(($1 + 0x88)) 32 "$3"; devmem $(($1 + 0x8c)) 32 0
    devmem $(($1 + 0x90)) 32 4; devmem $(($1 + 0x94)) 32 0
    devmem $(($1 + 0x98)) 32 "$4"
    i=0
    while [ $(($(devmem $(($1 + 0x98)) 32) & 1)) -ne 0 ] && [ $i -lt 100 ]; do
        sleep 0.05; i=$((i + 1))
    done
}
for dev in /sys/bus/pci/devices/*; do
    drv=none
    [ -e "$dev/driver" ] && drv=$(basename "$(readlink "$dev/driver")")
    ids="$(cat "$dev/vendor"):$(cat "$dev/device")"
    echo "L2-PCI-DRIVER ${dev##*/} $ids $drv"
    [ "$ids" = 0x1234:0x11e8 ] || continue
    echo 1 >"$dev/enable"
    # Memory decoding and bus mastering: command register bits 1 and 2.
    printf '\006' | dd of="$dev/config" bs=1 seek=4 count=1 conv=notrunc 2>/dev/null
    set -- $(head -n1 "$dev/resource")
    bar=$(($1))
    devmem "$page" 32 0x5EED0042
    devmem $((page + 0x100)) 32 0
    edu_dma "$bar" "$page" 0x40000 1
    edu_dma "$bar" 0x40000 $((page + 0x100)) 3
    echo "L2-EDU-DMA $(devmem $((page + 0x100)) 32)"
done
CHECK
l2_initramfs_with l2.cpio.gz check.sh

step "bind the GPU to vfio-pci"
run_logged bind.out vmm-service gpu bind --force "$gpu" || fail "gpu bind exited with status $?"
expect_driver "$gpu" vfio-pci

step "form-vmm boots Linux with 2 GiB, the GPU and edu, RAM mapped as it boots"
# shellcheck disable=SC2086 # LAB_VMM_DROP: --uid/--gid/--mount-ns (l1-lib.sh)
run_logged vmm.out form-vmm -v --kernel "$LAB_L2_KERNEL" --initramfs l2.cpio.gz \
    --cmdline "console=ttyS0 panic=-1 quiet memmap=1M\$$page" --memory size=2G --serial tty \
    --device "path=/sys/bus/pci/devices/$gpu,id=gpu0" \
    --device "path=/sys/bus/pci/devices/$edu,id=edu0" $LAB_VMM_DROP ||
    fail "form-vmm exited with status $?"
expect_output vmm.out "L2-USERSPACE-OK" "L2's serial output"
expect_output vmm.out 'vCPUs running; guest RAM is still being mapped for device DMA' \
    "the vCPUs starting before guest RAM was mapped"
expect_output vmm.out 'guest RAM \(2048 MiB\) mapped for DMA in [0-9]+ ms, while the guest ran' \
    "the mapping finishing"
! grep -q L2-MODULE-FAIL vmm.out || fail "L2: $(grep -m1 L2-MODULE-FAIL vmm.out)"
expect_output vmm.out '^L2-PCI-DRIVER [0-9a-f:.]+ 0x1234:0x1111 bochs-drm' "bochs-drm bound to the GPU in L2"
expect_output vmm.out '^L2-EDU-DMA 0x5EED0042' "edu's DMA round trip through the last MiB of RAM"
echo "LAB-TIMING vfio-deferred-dma test guest: $waited; Linux: $(grep -o "mapped for DMA in [0-9]* ms" vmm.out | head -n1)"

step "unbind the GPU and edu"
run_logged unbind.out vmm-service gpu unbind "$gpu" || fail "gpu unbind exited with status $?"
expect_driver "$gpu" bochs-drm
vfio_unbind "$edu"
