# bench-gpu-start: raw samples for scripts/bench-gpu-start: how long a GPU VM takes to
# start at 256M, 1G and 2G of RAM, with 4 KiB pages and with 2 MiB huge pages, with
# guest RAM mapped for DMA while the guest starts (dma_map=deferred, the default) and
# before it (upfront), beside the same VM without a device. The guest is the minimal
# PVH guest, which prints and powers off at once. Needs L1 with room for 2 GiB of huge
# pages besides its own: scripts/bench-gpu-start runs the lab with --memory 6G.
#
# Every sample is one line on the console:
#   LAB-START mem=<size> pages=<4k|2M> map=<deferred|upfront|none> first=<s> exit=<s>
# with /proc/uptime differences (10 ms steps) from form-vmm's start to the guest's
# first serial byte and to form-vmm's exit.
# 1 GiB pages: TCG's L1 cannot spare three contiguous gigabytes besides the 4 KiB cases'
# RAM, so the huge-page cases use 2 MiB pages.
# lab-default: no
# lab-order: 92
# lab-timeout: 900

gpu=$LAB_GPU_BDF
runs=${LAB_START_RUNS:-5}
sizes="256M 1G 2G"
pool=/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages

step "bind the GPU to vfio-pci"
vfio_bind "$gpu"

# start_sample MEM PAGES MAP: one run, printed as a LAB-START line.
start_sample() {
    memory="size=$1"
    [ "$2" = 2M ] && memory="$memory,hugepages=on,hugepage_size=2M"
    device=""
    case "$3" in
    none) ;;
    *)
        memory="$memory,dma_map=$3"
        device="--device path=/sys/bus/pci/devices/$gpu,id=gpu0"
        ;;
    esac
    # shellcheck disable=SC2086 # the device argument is a list of words
    timed_start pvh-hello form-vmm --kernel "$LAB_PVH_ELF" --memory "$memory" \
        --serial tty $device || fail "form-vmm $1 $2 $3: $timed_error"
    echo "LAB-START mem=$1 pages=$2 map=$3 first=$timed_first exit=$timed_exit"
}

step "2 MiB pages for the largest guest"
echo 1040 >"$pool" || fail "cannot write $pool"
[ "$(cat "$pool")" -ge 1024 ] || fail "L1 reserved only $(cat "$pool") 2 MiB pages of 1040"

step "samples, interleaved ($runs rounds)"
i=0
while [ $i -lt "$runs" ]; do
    for mem in $sizes; do
        for pages in 4k 2M; do
            for map in none deferred upfront; do
                start_sample "$mem" "$pages" "$map"
            done
        done
    done
    i=$((i + 1))
done

step "give the pages and the GPU back"
echo 0 >"$pool"
vfio_unbind "$gpu"
