# vfio-numa-guest: a two-socket GPU VM on L1's two NUMA nodes. A Linux L2 with two
# guest nodes, each with a vCPU and a 256 MiB memory zone bound to the L1 node of the
# same number, the GPU of L1's node 0 on guest node 0 and the GPU behind L1's node-1
# expander on guest node 1's root bus. L2 sees two nodes with that memory, and each
# GPU's numa_node matches its host node; in L1, numa_maps shows each zone bound to its
# node.
# lab-order: 72
# lab-timeout: 240

gpu0=$LAB_GPU_BDF
gpu1=$LAB_NUMA_GPU_BDF

step "L2 initramfs that reports its NUMA shape"
cat >check.sh <<'CHECK'
#!/bin/sh
busybox --install -s /bin
while read -r name _; do
    insmod "/lib/modules/lab/$name.ko" || echo "L2-MODULE-FAIL $name"
done </lib/modules/lab/load-order
for node in /sys/devices/system/node/node*; do
    echo "L2-NODE ${node##*node} cpus=$(cat "$node/cpulist") mem_kb=$(awk '/MemTotal/ { print $4 }' "$node/meminfo")"
done
for dev in /sys/bus/pci/devices/*; do
    ids="$(cat "$dev/vendor"):$(cat "$dev/device")"
    drv=none
    [ -e "$dev/driver" ] && drv=$(basename "$(readlink "$dev/driver")")
    echo "L2-PCI ${dev##*/} $ids numa_node=$(cat "$dev/numa_node") $drv"
done
CHECK
l2_initramfs_with l2.cpio.gz check.sh

step "bind both GPUs to vfio-pci"
for bdf in "$gpu0" "$gpu1"; do
    run_logged "bind-${bdf##*:}.out" vmm-service gpu bind --force "$bdf" ||
        fail "gpu bind $bdf exited with status $?"
    expect_driver "$bdf" vfio-pci
done

step "form-vmm boots Linux with two guest nodes, a GPU on each"
run_logged vmm.out form-vmm --kernel "$LAB_L2_KERNEL" --initramfs l2.cpio.gz \
    --cmdline "console=ttyS0 panic=-1 quiet" --cpus boot=2 --serial tty \
    --memory-zone id=mem0,size=256M,host_numa_node=0 \
    --memory-zone id=mem1,size=256M,host_numa_node=1 \
    --numa "guest_numa_id=0,cpus=0,memory_zones=mem0,distances=1@20" \
    --numa "guest_numa_id=1,cpus=1,memory_zones=mem1" \
    --device "path=/sys/bus/pci/devices/$gpu0,id=gpu0" \
    --device "path=/sys/bus/pci/devices/$gpu1,id=gpu1,numa_node=1" \
    --api-socket vmm.sock &
vmm=$!
wait_until 60 vmm_api_ready vmm.sock
# Each zone is a mapping of its own, bound to its node before it was touched.
pid=$(pidof form-vmm)
binds=$(grep -oE ' bind:[0-9]+' "/proc/$pid/numa_maps" | sort | tr -d ' ' | tr '\n' ' ')
echo "lab: form-vmm numa_maps policies: $binds"
case "$binds" in *bind:0*bind:1*) ;; *) fail "form-vmm's RAM is not bound to nodes 0 and 1: $binds" ;; esac
wait "$vmm" || fail "form-vmm exited with status $?"
expect_output vmm.out "L2-USERSPACE-OK" "L2's serial output"
! grep -q L2-MODULE-FAIL vmm.out || fail "L2: $(grep -m1 L2-MODULE-FAIL vmm.out)"
for node in 0 1; do
    line=$(grep -m1 "^L2-NODE $node " vmm.out) || fail "L2 has no NUMA node $node"
    kb=${line##*mem_kb=}
    # 256 MiB less what the kernel keeps for itself on the node.
    [ "$kb" -gt $((200 << 10)) ] && [ "$kb" -le $((256 << 10)) ] ||
        fail "L2 node $node has $kb kB, not about 256 MiB: $line"
    echo "lab: $line"
done
! grep -q "^L2-NODE 2 " vmm.out || fail "L2 has a third node"
expect_output vmm.out '^L2-PCI 0000:00:[0-9a-f.]+ 0x1234:0x1111 numa_node=0 bochs-drm' \
    "node 0's GPU on bus 0 with numa_node 0, bochs-drm bound"
expect_output vmm.out '^L2-PCI 0000:10:[0-9a-f.]+ 0x1234:0x1111 numa_node=1 bochs-drm' \
    "node 1's GPU on its node's root bus with numa_node 1, bochs-drm bound"

step "unbind both GPUs"
for bdf in "$gpu0" "$gpu1"; do
    run_logged "unbind-${bdf##*:}.out" vmm-service gpu unbind "$bdf" ||
        fail "gpu unbind $bdf exited with status $?"
    expect_driver "$bdf" bochs-drm
done
