# linux-gpu-guest: a Linux L2 guest (Debian's generic kernel) boots with the GPU and edu
# passed through: bochs-drm binds the GPU (reads its EDID, registers, makes /dev/fb0),
# and a read of edu's ID register through BAR0 with devmem gives 0x010000ED.
# lab-order: 70
# lab-timeout: 240

gpu=$LAB_GPU_BDF
edu=$LAB_EDU_BDF

step "L2 initramfs with the DRM modules and the checks"
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
    ids="$(cat "$dev/vendor"):$(cat "$dev/device")"
    echo "L2-PCI-DRIVER ${dev##*/} $ids $drv"
    if [ "$ids" = 0x1234:0x11e8 ]; then
        echo 1 >"$dev/enable"
        set -- $(head -n1 "$dev/resource")
        echo "L2-EDU-ID $(devmem "$1" 32)"
    fi
done
[ -e /dev/fb0 ] && echo "L2-FB0 $(cat /sys/class/graphics/fb0/name)"
dmesg | grep -E 'EDID|bochs' | sed 's/^/L2-DMESG /'
CHECK
l2_initramfs_with l2.cpio.gz check.sh

step "bind the GPU and edu to vfio-pci"
run_logged bind.out vmm-service gpu bind --force "$gpu" || fail "gpu bind exited with status $?"
expect_driver "$gpu" vfio-pci
vfio_bind "$edu"

step "form-vmm boots Linux with the GPU and edu"
start=$(lab_uptime)
# shellcheck disable=SC2086 # LAB_VMM_DROP: --uid/--gid/--mount-ns (l1-lib.sh)
run_logged vmm.out form-vmm --kernel "$LAB_L2_KERNEL" --initramfs l2.cpio.gz \
    --cmdline "console=ttyS0 panic=-1 quiet" --memory size=512M --serial tty \
    --device "path=/sys/bus/pci/devices/$gpu,id=gpu0" \
    --device "path=/sys/bus/pci/devices/$edu,id=edu0" $LAB_VMM_DROP ||
    fail "form-vmm exited with status $?"
secs=$(lab_seconds_since "$start")
expect_output vmm.out "L2-USERSPACE-OK" "L2's serial output"
! grep -q L2-MODULE-FAIL vmm.out || fail "L2: $(grep -m1 L2-MODULE-FAIL vmm.out)"
expect_output vmm.out '^L2-PCI-DRIVER [0-9a-f:.]+ 0x1234:0x1111 bochs-drm' "bochs-drm bound to the GPU in L2"
expect_output vmm.out 'L2-DMESG .*Found EDID data blob' "bochs-drm reading the GPU's EDID"
expect_output vmm.out 'L2-DMESG .*Initialized bochs-drm' "bochs-drm registering"
expect_output vmm.out '^L2-FB0 ' "/dev/fb0 in L2"
expect_output vmm.out '^L2-EDU-ID 0x010000ED' "edu's ID register read with devmem in L2"
echo "LAB-TIMING linux-gpu-guest form-vmm start to exit ${secs}s"

step "unbind the GPU and edu"
run_logged unbind.out vmm-service gpu unbind "$gpu" || fail "gpu unbind exited with status $?"
expect_driver "$gpu" bochs-drm
vfio_unbind "$edu"
