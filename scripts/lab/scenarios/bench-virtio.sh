# bench-virtio: virtio-blk and virtio-net throughput in a Linux L2 (benchmark, run by scripts/bench-virtio): sequential 1 MiB and random 4 KiB O_DIRECT I/O on a raw disk, TCP L2->L1 and L1->L2 over the tap.
# lab-order: 90
# lab-timeout: 300
# lab-default: no
#
# Figures, one per line, for scripts/bench-virtio:
#   LAB-TIMING bench-virtio blk <mode> block=B ops=N bytes=N secs=S iops=X mib_s=Y
#   LAB-TIMING bench-virtio qcow2 <mode> ...   the same on an empty qcow2 data disk
#                                              (form-vmm allocates its clusters)
#   LAB-TIMING bench-virtio net <l2-to-l1|l1-to-l2> bytes=N secs=S mbit_s=X
#   LAB-TIMING bench-virtio l1-blk <mode> ...   the baselines: L1 itself, buffered
#   LAB-TIMING bench-virtio l1-net loopback ... I/O on the backing file, TCP over lo
# The tools are tests/lab-tools/blkbench.c and netbench.c, built static by
# scripts/vfio-lab; L1 is TCG, so these are emulation figures (docs/performance.md).

tap=labtap0
l1_ip=10.77.0.1
l2_ip=10.77.0.2
disk_size=128M   # the data disk, a file in L1's tmpfs
rand_secs=5      # per random-I/O run
net_mib=64       # per direction

step "L1 loads tun, bridge, loop and ext4"
l1_load_ondemand

step "benchmark tools in L1 and the L2 images"
command -v netbench >/dev/null || fail "netbench is not in L1 (scripts/vfio-lab builds tests/lab-tools)"
expect_file "$LAB_L2_KERNEL" "the L2 kernel"
[ ! -e "/sys/class/net/$tap" ] || fail "$tap exists before form-vmm ran"

step "L2 initramfs with the benchmark, root disk, data disk"
cat >check.sh <<'CHECK'
#!/bin/sh
# Runs in L2 from the root disk's init: the benchmarks, their lines on the console.
arg() { sed -n "s/.*[[:space:]]$1=\([^[:space:]]*\).*/\1/p" /proc/cmdline; }
peer=$(arg lab.peer) secs=$(arg lab.rand_secs) mib=$(arg lab.net_mib) size=$(arg lab.disk_size)
for mode in seq-write seq-read; do
    blkbench --bytes "$size" /dev/vdb "$mode" || echo "L2-BENCH-FAIL blkbench $mode"
done
for mode in rand-read rand-write; do
    blkbench --seconds "$secs" /dev/vdb "$mode" || echo "L2-BENCH-FAIL blkbench $mode"
done
# The same on the qcow2 disk, its lines marked: the first writes allocate clusters.
for mode in seq-write seq-read; do
    blkbench --bytes "$size" /dev/vdc "$mode" | sed 's/^blkbench /qcow2-blkbench /' ||
        echo "L2-BENCH-FAIL blkbench $mode on qcow2"
done
for mode in rand-read rand-write; do
    blkbench --seconds "$secs" /dev/vdc "$mode" | sed 's/^blkbench /qcow2-blkbench /' ||
        echo "L2-BENCH-FAIL blkbench $mode on qcow2"
done
# L1 listens first; then L1 sends to L2 (its sender retries until this listens).
netbench send "$peer" 5001 "$mib" --timeout 60 || echo "L2-BENCH-FAIL netbench send"
netbench recv 5002 --timeout 60 || echo "L2-BENCH-FAIL netbench recv"
CHECK
l2_virtio_initramfs l2.cpio.gz check.sh
l2_root_disk root.img
truncate -s "$disk_size" data.img || fail "cannot make the $disk_size data disk"
expect_file "$LAB_EMPTY_QCOW2" "the lab's empty qcow2 image"
cp "$LAB_EMPTY_QCOW2" data.qcow2 || fail "cannot copy the qcow2 data disk"

step "L1 listens for L2's stream"
netbench recv 5001 --timeout 200 >l2-to-l1.out 2>&1 &
recv_pid=$!

step "form-vmm boots L2 with the data disk and the tap"
rm -f vmm.status
{
    form-vmm --kernel "$LAB_L2_KERNEL" --initramfs l2.cpio.gz \
        --cmdline "console=ttyS0 panic=-1 quiet lab.root=/dev/vda lab.ip=$l2_ip/24 lab.peer=$l1_ip lab.rand_secs=$rand_secs lab.net_mib=$net_mib lab.disk_size=$disk_size" \
        --memory size=512M --serial tty \
        --disk "path=$LAB_TMP/root.img" --disk "path=$LAB_TMP/data.img" \
        --disk "path=$LAB_TMP/data.qcow2" --net "tap=$tap" 2>&1
    echo $? >vmm.status
} | tee vmm.out &
tap_or_exit() { [ -e "/sys/class/net/$tap" ] || [ -e vmm.status ]; }
wait_until 30 tap_or_exit
[ -e "/sys/class/net/$tap" ] ||
    fail "form-vmm exited with status $(cat vmm.status) before creating $tap"
net_up "$tap" "$l1_ip/24"

step "TCP L2 -> L1, then L1 -> L2"
wait "$recv_pid" || fail "L1's receiver: $(cat l2-to-l1.out)"
netbench send "$l2_ip" 5002 "$net_mib" --timeout 60 >l1-to-l2.out 2>&1 ||
    fail "L1's sender: $(cat l1-to-l2.out)"

step "L2 finishes and powers off"
wait_until 200 test -e vmm.status
wait
read -r status <vmm.status
[ "$status" = 0 ] || fail "form-vmm exited with status $status"
expect_l2_ok vmm.out
if grep -q L2-BENCH-FAIL vmm.out; then
    fail "in L2: $(grep -m1 L2-BENCH-FAIL vmm.out)"
fi

step "baselines in L1, with L2 gone: the same tools on the backing file and over loopback"
# form-vmm's disk backend reads and writes data.img through L1's page cache, so the
# buffered figures on that file are the most the guest could see; loopback TCP is the
# most L1's stack gives without a tap and a guest in between.
rm -f l1-blk.out # the scratch directory is the same for every run of this scenario
for mode in seq-write seq-read; do
    blkbench --buffered --bytes "$disk_size" data.img "$mode" >>l1-blk.out ||
        fail "blkbench $mode on data.img in L1: $(tail -n 1 l1-blk.out)"
done
for mode in rand-read rand-write; do
    blkbench --buffered --seconds "$rand_secs" data.img "$mode" >>l1-blk.out ||
        fail "blkbench $mode on data.img in L1: $(tail -n 1 l1-blk.out)"
done
ip link set lo up || fail "cannot bring L1's loopback up"
netbench recv 5003 --timeout 60 >l1-loopback.out 2>&1 &
recv_pid=$!
netbench send 127.0.0.1 5003 "$net_mib" --timeout 30 >l1-loopback-send.out 2>&1 ||
    fail "netbench over loopback in L1: $(cat l1-loopback-send.out)"
wait "$recv_pid" || fail "L1's loopback receiver: $(cat l1-loopback.out)"

step "figures"
tr -d '\r' <vmm.out | sed -n 's/^blkbench \([a-z-]*\) /LAB-TIMING bench-virtio blk \1 /p' >figures
tr -d '\r' <vmm.out | sed -n 's/^qcow2-blkbench \([a-z-]*\) /LAB-TIMING bench-virtio qcow2 \1 /p' >>figures
# Each direction as its receiver measured it: first byte to end of stream.
sed -n 's/^netbench recv /LAB-TIMING bench-virtio net l2-to-l1 /p' l2-to-l1.out >>figures
tr -d '\r' <vmm.out | sed -n 's/^netbench recv /LAB-TIMING bench-virtio net l1-to-l2 /p' >>figures
sed -n 's/^blkbench \([a-z-]*\) /LAB-TIMING bench-virtio l1-blk \1 /p' l1-blk.out >>figures
sed -n 's/^netbench recv /LAB-TIMING bench-virtio l1-net loopback /p' l1-loopback.out >>figures
cat figures
[ "$(grep -c ' l1-blk ' figures)" = 4 ] || fail "expected 4 blkbench results from L1, got $(grep -c ' l1-blk ' figures)"
[ "$(grep -c ' l1-net ' figures)" = 1 ] || fail "expected the loopback netbench result from L1"
[ "$(grep -c ' blk ' figures)" = 4 ] || fail "expected 4 blkbench results from L2, got $(grep -c ' blk ' figures)"
[ "$(grep -c ' net ' figures)" = 2 ] || fail "expected 2 netbench results, got $(grep -c ' net ' figures)"
[ "$(grep -c ' qcow2 ' figures)" = 4 ] || fail "expected 4 blkbench results on qcow2 from L2, got $(grep -c ' qcow2 ' figures)"
summary=$(sed -n 's/.* blk \([a-z-]*\) .* iops=\([0-9]*\) mib_s=\([0-9.]*\)/\1 \3 MiB\/s \2 IOPS;/p
    s/.* net \([a-z0-9-]*\) .* mbit_s=\([0-9.]*\)/\1 \2 Mbit\/s;/p' figures | tr '\n' ' ')
echo "LAB-TIMING bench-virtio ${summary%; }"
