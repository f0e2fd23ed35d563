# smoke: the L1 host is a GPU host. Its modules loaded, KVM and VFIO are there, the IOMMU
# put devices in groups, and the lab's device set is where the other scenarios expect it.
# lab-order: 10
# lab-timeout: 30

step "kernel modules loaded"
if [ -s "$LAB_RUN/module-failures" ]; then
    fail "modules failed to load: $(tr '\n' ';' <"$LAB_RUN/module-failures")"
fi

step "KVM and VFIO device nodes"
expect_file /dev/kvm "KVM (kvm-amd with nested SVM)"
expect_file /dev/vfio/vfio "the VFIO container device"

step "IOMMU groups"
groups=$(count_entries /sys/kernel/iommu_groups)
[ "$groups" -ge 5 ] || fail "only $groups IOMMU groups (is intel_iommu=on in effect?)"

# Each lab device: BDF, vendor:device, class, driver it must start on.
check_device() {
    dev=/sys/bus/pci/devices/$1
    step "device $1 ($5)"
    expect_file "$dev" "$5"
    ids="$(cat "$dev/vendor"):$(cat "$dev/device")"
    [ "$ids" = "$2" ] || fail "$1 is $ids, expected $2 ($5)"
    class=$(cat "$dev/class")
    [ "$class" = "$3" ] || fail "$1 has class $class, expected $3 ($5)"
    expect_driver "$1" "$4"
    [ -n "$(pci_group "$1")" ] || fail "$1 has no IOMMU group"
    echo "lab: $1 $ids class=$class driver=$(pci_driver "$1") group=$(pci_group "$1")"
}
check_device "$LAB_GPU_BDF" 0x1234:0x1111 0x030000 bochs-drm "GPU: std VGA"
check_device "$LAB_DISPLAY_BDF" 0x1234:0x1111 0x038000 bochs-drm "bochs-display"
check_device "$LAB_EDU_BDF" 0x1234:0x11e8 0x00ff00 none "edu"
check_device "$LAB_IVSHMEM_BDF" 0x1af4:0x1110 0x050000 none "ivshmem-plain"
check_device "$LAB_NIC_BDF" 0x8086:0x10d3 0x020000 none "e1000e"

step "GPU has its own IOMMU group"
gpu_group=$(pci_group "$LAB_GPU_BDF")
members=$(count_entries "/sys/kernel/iommu_groups/$gpu_group/devices")
[ "$members" -eq 1 ] || fail "GPU group $gpu_group has $members devices"

step "ivshmem BAR2 is a 64-bit prefetchable 8 GiB BAR"
# resource line 2: start end flags; 64-bit prefetchable memory = IORESOURCE_MEM (0x200)
# | PREFETCH (0x2000) | MEM_64 (0x100000).
# shellcheck disable=SC2046 # split into its three fields
set -- $(sed -n 3p "/sys/bus/pci/devices/$LAB_IVSHMEM_BDF/resource")
size=$(($2 - $1 + 1))
[ "$size" -eq $((8 << 30)) ] || fail "BAR2 is $size bytes"
[ $(($3 & 0x102200)) -eq $((0x102200)) ] || fail "BAR2 flags $3 are not 64-bit prefetchable memory"

step "shared IOMMU group of the 00:1f.x functions"
first=""
for bdf in $LAB_GROUP_BDFS; do
    g=$(pci_group "$bdf")
    [ -n "$g" ] || fail "$bdf has no IOMMU group"
    [ -z "$first" ] && first=$g
    [ "$g" = "$first" ] || fail "$bdf is in group $g, not $first with the others"
done
n=$(count_entries "/sys/kernel/iommu_groups/$first/devices")
[ "$n" -ge 2 ] || fail "group $first has only $n device"
echo "lab: shared group $first: $(list_entries "/sys/kernel/iommu_groups/$first/devices")"

step "two NUMA nodes, a GPU on each"
for node in 0 1; do
    expect_file "/sys/devices/system/node/node$node" "L1's NUMA node $node"
    kb=$(awk '/MemTotal/ { print $4 }' "/sys/devices/system/node/node$node/meminfo")
    [ "${kb:-0}" -gt $((1 << 20)) ] || fail "node $node has ${kb:-0} kB of memory, not 1.5 GiB"
done
node=0
for bdf in "$LAB_NUMA0_GPU_BDF" "$LAB_NUMA_GPU_BDF"; do
    check_device "$bdf" 0x1234:0x1111 0x038000 bochs-drm "GPU behind the node-$node expander"
    numa=$(cat "/sys/bus/pci/devices/$bdf/numa_node")
    [ "$numa" = $node ] || fail "$bdf is on node $numa, not $node"
    group=$(pci_group "$bdf")
    members=$(count_entries "/sys/kernel/iommu_groups/$group/devices")
    [ "$members" -eq 1 ] || fail "$bdf shares group $group: $(list_entries "/sys/kernel/iommu_groups/$group/devices")"
    node=$((node + 1))
done
echo "lab: $LAB_GPU_BDF numa_node=$(cat "/sys/bus/pci/devices/$LAB_GPU_BDF/numa_node")"
