# bench-vs-ch: raw samples for `scripts/bench-vs-ch --lab`: form-vmm and Cloud
# Hypervisor side by side in L1, alternating one run of each per case. Needs L1 built
# with `scripts/vfio-lab --with-ch PATH` (bench-vs-ch does it); fails without it.
#
# Every sample is one line on the console:
#   LAB-CH vmm=<form-vmm|ch> case=<name> first=<s> exit=<s>
# with /proc/uptime differences (10 ms steps) from the VMM's start to the first byte
# of the guest's serial output and to the VMM's exit. Cases:
#   pvh-<mem>-none      the minimal PVH guest, no device (2G)
#   pvh-<mem>-gpu+edu   the same with the GPU and edu passed through (256M, 1G, 2G):
#                       form-vmm maps guest RAM for DMA while the guest starts
#                       (its default); vmm=form-vmm-upfront is form-vmm with
#                       dma_map=upfront, mapping all of it before the guest starts,
#                       as Cloud Hypervisor does
#   linux-256M-gpu+edu  a Linux L2 (VGA + edu passed) from start to its power-off
# lab-default: no
# lab-order: 91
# lab-timeout: 600

gpu=$LAB_GPU_BDF
edu=$LAB_EDU_BDF
ch=/lab/ch/cloud-hypervisor
runs=${LAB_CH_RUNS:-5}

step "Cloud Hypervisor is in L1"
[ -x "$ch" ] || fail "$ch is missing: run the lab with --with-ch PATH (scripts/bench-vs-ch --lab does)"
vfio_bind "$gpu"
vfio_bind "$edu"

# sample VMM CASE COMMAND...: one timed run (timed_start), printed as a LAB-CH line.
sample() {
    _vmm=$1 _case=$2
    shift 2
    timed_start "$marker" "$@" || fail "$_vmm $_case: $timed_error"
    echo "LAB-CH vmm=$_vmm case=$_case first=$timed_first exit=$timed_exit"
}

devices_fv="--device path=/sys/bus/pci/devices/$gpu,id=gpu0 --device path=/sys/bus/pci/devices/$edu,id=edu0"
devices_ch="--device path=/sys/bus/pci/devices/$gpu/ path=/sys/bus/pci/devices/$edu/"

# pvh_case MEM DEVICES(none|gpu+edu)
pvh_case() {
    marker=pvh-hello
    fv_dev="" ch_dev=""
    [ "$2" = none ] || { fv_dev=$devices_fv; ch_dev=$devices_ch; }
    # shellcheck disable=SC2086 # the device arguments are lists of words
    sample form-vmm "pvh-$1-$2" form-vmm --kernel "$LAB_PVH_ELF" --memory "size=$1" \
        --cpus boot=2 --serial tty $fv_dev
    if [ "$2" != none ]; then
        # shellcheck disable=SC2086
        sample form-vmm-upfront "pvh-$1-$2" form-vmm --kernel "$LAB_PVH_ELF" \
            --memory "size=$1,dma_map=upfront" --cpus boot=2 --serial tty $fv_dev
    fi
    # Over the lab's 39-bit IOVA aperture CH places 64-bit BARs only with
    # max_phys_bits=39 (../shared/anchors/README.md).
    # shellcheck disable=SC2086
    sample ch "pvh-$1-$2" "$ch" --kernel "$LAB_PVH_ELF" --memory "size=$1" \
        --cpus boot=2,max_phys_bits=39 --serial tty --console off $ch_dev
}

linux_case() {
    marker=L2-USERSPACE-OK
    # shellcheck disable=SC2086
    sample form-vmm linux-256M-gpu+edu form-vmm --kernel "$LAB_L2_KERNEL" \
        --initramfs "$LAB_L2_INITRAMFS" --cmdline "console=ttyS0 panic=-1 quiet" \
        --memory size=256M --cpus boot=1 --serial tty $devices_fv
    # shellcheck disable=SC2086
    sample ch linux-256M-gpu+edu "$ch" --kernel "$LAB_L2_KERNEL" \
        --initramfs "$LAB_L2_INITRAMFS" --cmdline "console=ttyS0 panic=-1 quiet" \
        --memory size=256M --cpus boot=1,max_phys_bits=39 --serial tty --console off $devices_ch
}

step "samples, alternating the VMMs ($runs runs per case)"
i=0
while [ $i -lt "$runs" ]; do
    pvh_case 2G none
    for mem in 256M 1G 2G; do
        pvh_case "$mem" gpu+edu
    done
    linux_case
    i=$((i + 1))
done

step "give the devices back"
vfio_unbind "$gpu"
vfio_unbind "$edu"
