# linux-disk-net: form-vmm boots Linux from a virtio-blk root disk (ext4) with virtio-net on a tap, virtio-rng and virtio-console: L2 writes a token to its root, pings L1 over the tap, reads the RNG, cannot write a read-only disk; L1 finds the token in the image afterwards.
# lab-order: 45
# lab-timeout: 180
#
# L2 boots the virtio initramfs (scripts/lab/l2-init loads the virtio, ext4 and vfat
# modules and switches to lab.root=) and runs scripts/lab/l2-root-init from the disk,
# which configures eth0 from lab.ip= and runs the check below.

tap=labtap0
l1_ip=10.77.0.1
l2_ip=10.77.0.2
mac=52:54:00:1a:b0:02
token=lab-$$-$(od -An -N4 -tx4 /dev/urandom | tr -d ' ')

step "L1 loads tun, bridge, loop and ext4"
l1_load_ondemand

step "L2 kernel, virtio initramfs and root disk are in L1"
expect_file "$LAB_L2_KERNEL" "the L2 kernel"
expect_file /dev/kvm
expect_file /dev/net/tun "/dev/net/tun (the tun module)"
[ ! -e "/sys/class/net/$tap" ] || fail "$tap exists before form-vmm ran"

step "L2 initramfs with the check, a root disk and a read-only data disk"
cat >check.sh <<'CHECK'
#!/bin/sh
# Runs in L2 from the root disk's init (l2-root-init), before it powers off.
arg() { sed -n "s/.*[[:space:]]$1=\([^[:space:]]*\).*/\1/p" /proc/cmdline; }
token=$(arg lab.token)
peer=$(arg lab.peer)

# The root disk: a file with the token, on the disk before power-off.
echo "token=$token" >/lab-token && sync && echo "L2-TOKEN-WRITTEN $token"

# The read-only disk: the kernel sees it read-only, refuses writes, reads its bytes.
echo "L2-RO-DISK ro=$(cat /sys/block/vdb/ro) md5=$(md5sum </dev/vdb | cut -d' ' -f1)"
if echo x | dd of=/dev/vdb bs=512 count=1 conv=fsync 2>/dev/null; then
    echo "L2-RO-WRITE succeeded"
else
    echo "L2-RO-WRITE refused"
fi

# virtio-rng: the hardware RNG the kernel chose, and bytes from it.
echo "L2-RNG current=$(cat /sys/class/misc/hw_random/rng_current)" \
    "bytes=$(dd if=/dev/hwrng bs=16 count=1 2>/dev/null | od -An -tx1 | tr -d ' \n')"

# virtio-console: a line for form-vmm's --console output.
if [ -c /dev/hvc0 ]; then
    echo "L2-HVC-OK $token" >/dev/hvc0 && echo "L2-HVC written"
else
    echo "L2-HVC missing: no /dev/hvc0"
fi

# The network: L1 puts its address on the tap once form-vmm has created it, so the
# first replies may take a while.
i=0
until ping -c 1 -W 1 "$peer" >/dev/null 2>&1; do
    i=$((i + 1))
    if [ $i -ge 20 ]; then break; fi
    sleep 1
done
replies=$(ping -c 3 -W 2 "$peer" 2>&1 | sed -n 's/.* \([0-9]*\) packets received.*/\1/p')
echo "L2-PING $peer replies=${replies:-0}/3 after $i retries"
CHECK
l2_virtio_initramfs l2.cpio.gz check.sh
l2_root_disk root.img
dd if=/dev/urandom of=ro.img bs=64k count=16 2>/dev/null || fail "cannot write ro.img"
ro_md5=$(md5sum <ro.img | cut -d' ' -f1)

step "form-vmm boots L2 from the virtio disk"
start=$(lab_uptime)
rm -f vmm.status
{
    # shellcheck disable=SC2086 # LAB_VMM_DROP: --uid/--gid/--mount-ns (l1-lib.sh)
    form-vmm --kernel "$LAB_L2_KERNEL" --initramfs l2.cpio.gz \
        --cmdline "console=ttyS0 panic=-1 quiet lab.root=/dev/vda lab.ip=$l2_ip/24 lab.peer=$l1_ip lab.token=$token" \
        --memory size=256M --serial tty \
        --disk "path=$LAB_TMP/root.img" --disk "path=$LAB_TMP/ro.img,readonly=on" \
        --net "tap=$tap,mac=$mac" --rng --console "file=$LAB_TMP/console.out" $LAB_VMM_DROP 2>&1
    echo $? >vmm.status
} | tee vmm.out &

step "form-vmm creates $tap; L1 takes $l1_ip on it"
tap_or_exit() { [ -e "/sys/class/net/$tap" ] || [ -e vmm.status ]; }
wait_until 30 tap_or_exit
[ -e "/sys/class/net/$tap" ] ||
    fail "form-vmm exited with status $(cat vmm.status) before creating $tap"
net_up "$tap" "$l1_ip/24"

step "L2 runs and powers off; form-vmm exits 0"
wait_until 150 test -e vmm.status
wait
secs=$(lab_seconds_since "$start")
read -r status <vmm.status
[ "$status" = 0 ] || fail "form-vmm exited with status $status"

step "L2 booted from the disk and shut it down cleanly"
expect_l2_ok vmm.out
expect_output vmm.out "^L2-TOKEN-WRITTEN $token" "L2's output (token written to the root disk)"

step "virtio-net: L2's address and MAC, 3 ping replies from L1"
net=$(l2_marker vmm.out L2-NET)
[ -n "$net" ] || fail "L2 did not configure its network: $(l2_marker vmm.out L2-NET-FAIL)"
case "$net" in
*" mac=$mac ip=$l2_ip/24 driver=virtio_net") ;;
*) fail "L2's interface is '$net', expected mac=$mac ip=$l2_ip/24 on virtio_net" ;;
esac
ping_line=$(l2_marker vmm.out L2-PING)
case "$ping_line" in
"$l1_ip replies=3/3 "*) ;;
*) fail "L2 pinging L1 over the tap: '${ping_line:-no result}', expected 3/3 replies" ;;
esac

step "virtio-blk read-only disk: read-only in L2, same bytes, writes refused"
ro_line=$(l2_marker vmm.out L2-RO-DISK)
[ "$ro_line" = "ro=1 md5=$ro_md5" ] ||
    fail "L2 sees the read-only disk as '$ro_line', expected 'ro=1 md5=$ro_md5'"
expect_output vmm.out '^L2-RO-WRITE refused' "L2's write to the read-only disk (refused)"
[ "$(md5sum <ro.img | cut -d' ' -f1)" = "$ro_md5" ] || fail "ro.img changed although it was read-only"

step "virtio-rng and virtio-console"
rng=$(l2_marker vmm.out L2-RNG)
case "$rng" in
"current=virtio_rng."*" bytes="????????????????????????????????) ;;
*) fail "L2's hardware RNG: '$rng', expected virtio_rng.N and 16 bytes" ;;
esac
expect_output vmm.out '^L2-HVC written' "L2's output (/dev/hvc0 of the virtio-console)"
expect_file console.out "form-vmm's --console file"
expect_output console.out "L2-HVC-OK $token" "form-vmm's --console output"

step "L1 mounts the image and finds the token L2 wrote"
mount_image root.img mnt
found=$(cat mnt/lab-token 2>/dev/null)
umount_image mnt
[ "$found" = "token=$token" ] ||
    fail "the root disk's /lab-token holds '$found', expected 'token=$token'"

if [ -e "/sys/class/net/$tap" ]; then
    echo "LAB-NOTE $tap is still there after form-vmm exited"
fi
echo "LAB-TIMING linux-disk-net form-vmm start to exit ${secs}s"
