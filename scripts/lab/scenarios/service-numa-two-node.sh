# service-numa-two-node: through vmm-service and form-vmm-ctl, a VM with a GPU from
# each of L1's two NUMA nodes (each behind its node's PCI expander). The service
# mirrors the host: two guest nodes, a vCPU and half the memory each, each zone bound
# to its host node, each GPU on the root bus of its node's guest node. L2 sees two
# nodes of about 256 MiB, each GPU's numa_node matches its host node, bochs-drm binds
# both; in L1, form-vmm's numa_maps shows the zones bound to nodes 0 and 1.
# lab-order: 73
# lab-timeout: 240

gpu0=$LAB_NUMA0_GPU_BDF
gpu1=$LAB_NUMA_GPU_BDF

step "L2 initramfs that reports its NUMA shape and stays up"
l2_numa_check 60 >check.sh
l2_initramfs_with l2.cpio.gz check.sh

step "vmm-service serve starts"
service_start

step "create --boot with a GPU from each node"
run_logged create.out form-vmm-ctl create --name numa --kernel "$LAB_L2_KERNEL" \
    --initramfs l2.cpio.gz --cmdline "console=ttyS0 panic=-1 quiet" \
    --cpus 2 --memory 512M --gpu "$gpu0" --gpu "$gpu1" --boot ||
    fail "create exited with status $? (service log: $(tail -n 5 service.log))"
expect_driver "$gpu0" vfio-pci
expect_driver "$gpu1" vfio-pci
wait_for_vm_output 120 numa '^L2-NUMA-DONE'
run_logged info.out form-vmm-ctl info numa || fail "info exited with status $?"
expect_output info.out 'mirrored on host nodes 0, 1' "the VM's guest nodes mirroring L1's"
expect_numa_bound "$(vm_field numa pid)"
serial=$(vm_field numa serial_log)
! grep -q L2-MODULE-FAIL "$serial" || fail "L2: $(grep -m1 L2-MODULE-FAIL "$serial")"
expect_l2_numa "$serial"
expect_output "$serial" '^L2-PCI 0000:00:[0-9a-f.]+ 0x1234:0x1111 numa_node=0 bochs-drm' \
    "node 0's GPU on bus 0 with numa_node 0, bochs-drm bound"
expect_output "$serial" '^L2-PCI 0000:10:[0-9a-f.]+ 0x1234:0x1111 numa_node=1 bochs-drm' \
    "node 1's GPU on guest node 1's root bus with numa_node 1, bochs-drm bound"

note_vmm_cgroup_peak numa
step "delete: both GPUs back on bochs-drm"
run_logged delete.out form-vmm-ctl delete numa || fail "delete exited with status $?"
expect_driver "$gpu0" bochs-drm
expect_driver "$gpu1" bochs-drm
kill "$service_pid"
