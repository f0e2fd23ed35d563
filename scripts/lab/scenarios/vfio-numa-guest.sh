# vfio-numa-guest: a two-socket GPU VM on L1's two NUMA nodes, with form-vmm directly.
# A Linux L2 with two guest nodes, each with a vCPU and a 256 MiB memory zone bound to
# the L1 node of the same number; the GPU on L1's pcie.0 (no node) on guest node 0 and
# the GPU behind L1's node-1 expander on guest node 1's root bus. L2 sees two nodes
# with that memory, and each GPU's numa_node is its guest node; in L1, numa_maps shows
# each zone bound to its node.
# lab-order: 72
# lab-timeout: 240

gpu0=$LAB_GPU_BDF
gpu1=$LAB_NUMA_GPU_BDF

step "L2 initramfs that reports its NUMA shape"
l2_numa_check 5 >check.sh
l2_initramfs_with l2.cpio.gz check.sh

step "bind both GPUs to vfio-pci"
for bdf in "$gpu0" "$gpu1"; do
    run_logged "bind-${bdf##*:}.out" vmm-service gpu bind --force "$bdf" ||
        fail "gpu bind $bdf exited with status $?"
    expect_driver "$bdf" vfio-pci
done

step "form-vmm boots Linux with two guest nodes, a GPU on each"
# shellcheck disable=SC2086 # LAB_VMM_DROP: --uid/--gid/--mount-ns (l1-lib.sh)
form-vmm --kernel "$LAB_L2_KERNEL" --initramfs l2.cpio.gz \
    --cmdline "console=ttyS0 panic=-1 quiet" --cpus boot=2 --serial tty \
    --memory-zone id=mem0,size=256M,host_numa_node=0 \
    --memory-zone id=mem1,size=256M,host_numa_node=1 \
    --numa "guest_numa_id=0,cpus=0,memory_zones=mem0,distances=1@20" \
    --numa "guest_numa_id=1,cpus=1,memory_zones=mem1" \
    --device "path=/sys/bus/pci/devices/$gpu0,id=gpu0" \
    --device "path=/sys/bus/pci/devices/$gpu1,id=gpu1,numa_node=1" $LAB_VMM_DROP >vmm.out 2>&1 &
vmm=$!
wait_for_output 120 "$vmm" vmm.out '^L2-NUMA-DONE'
expect_numa_bound "$vmm"
wait "$vmm" || fail "form-vmm exited with status $? ($(tail -n 3 vmm.out | tr "\n" " "))"
! grep -q L2-MODULE-FAIL vmm.out || fail "L2: $(grep -m1 L2-MODULE-FAIL vmm.out)"
expect_l2_numa vmm.out
expect_output vmm.out '^L2-PCI 0000:00:[0-9a-f.]+ 0x1234:0x1111 numa_node=0 bochs-drm' \
    "the bus-0 GPU with numa_node 0, bochs-drm bound"
expect_output vmm.out '^L2-PCI 0000:10:[0-9a-f.]+ 0x1234:0x1111 numa_node=1 bochs-drm' \
    "node 1's GPU on its node's root bus with numa_node 1, bochs-drm bound"

step "unbind both GPUs"
for bdf in "$gpu0" "$gpu1"; do
    run_logged "unbind-${bdf##*:}.out" vmm-service gpu unbind "$bdf" ||
        fail "gpu unbind $bdf exited with status $?"
    expect_driver "$bdf" bochs-drm
done
