# bench-vfio: raw samples for scripts/bench-vfio, which runs it and does the arithmetic.
# Not part of a plain `scripts/vfio-lab` run: it takes minutes and checks nothing new.
#
# Every sample is one "LAB-BENCH ..." line on the console:
#   LAB-BENCH boot mem=<size> devices=<none|gpu|gpu+edu> secs=<s>
#       form-vmm start to exit for the test guest's `hello` at that RAM size. With a
#       device, guest RAM is mapped (and pinned) for DMA when the first device attaches
#       and unmapped at exit; without one it is never touched, so the difference grows
#       with RAM size at the DMA-map cost, and gpu+edu minus gpu is one more attach.
#   LAB-BENCH bar accesses=<n> mmio_reads=<n> mmio_writes=<n> secs=<s>
#       the guest's `bar-rw` over all 16 MiB of the GPU's BAR0 (two seeds, a write and a
#       read pass each: n dword accesses) and form-vmm's trapped-access counters.
# Samples of different configurations are interleaved, so that a burst of load on the
# shared machine under the lab spreads over all of them instead of skewing one.
# Times are /proc/uptime differences (10 ms steps) inside TCG-emulated L1.
# lab-default: no
# lab-order: 90
# lab-timeout: 540

gpu=$LAB_GPU_BDF
edu=$LAB_EDU_BDF
runs=5
attach_runs=15
sizes="256M 1G 2G"
bar_len=16777216 # the test guest's limit for bar-rw's len=, and all of std VGA's BAR0

# boot_sample MEM DEVICES: one hello boot, timed; fails unless the guest passed.
boot_sample() {
    set -- "$1" "$2"
    devargs=""
    case "$2" in
    none) ;;
    gpu) devargs="--device path=/sys/bus/pci/devices/$gpu,id=gpu0" ;;
    gpu+edu)
        devargs="--device path=/sys/bus/pci/devices/$gpu,id=gpu0 --device path=/sys/bus/pci/devices/$edu,id=edu0"
        ;;
    esac
    start=$(lab_uptime)
    # shellcheck disable=SC2086 # devargs is a list of words
    form-vmm --kernel "$LAB_GUEST_ELF" --memory "size=$1" --serial tty --cmdline hello \
        $devargs >boot.out 2>&1
    status=$?
    end=$(lab_uptime)
    [ "$status" = 0 ] || { tail -n 15 boot.out; fail "form-vmm ($1, $2) exited with status $status"; }
    expect_guest_pass boot.out
    echo "LAB-BENCH boot mem=$1 devices=$2 secs=$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.2f", b - a }')"
}

step "bind the GPU and edu to vfio-pci"
run_logged bind.out vmm-service gpu bind --force "$gpu" || fail "gpu bind exited with status $?"
expect_driver "$gpu" vfio-pci
vfio_bind "$edu"

step "boot samples: $runs rounds over $sizes x (none, gpu)"
i=0
while [ $i -lt "$runs" ]; do
    for mem in $sizes; do
        boot_sample "$mem" none
        boot_sample "$mem" gpu
    done
    i=$((i + 1))
done

# A second device costs tens of milliseconds, a few steps of the clock: more pairs.
step "attach samples: $attach_runs rounds of 256M gpu, gpu+edu"
i=0
while [ $i -lt "$attach_runs" ]; do
    boot_sample 256M gpu
    boot_sample 256M gpu+edu
    i=$((i + 1))
done

step "BAR samples: bar-rw over the GPU's whole BAR0, then vm.counters"
sock=$LAB_TMP/vmm.sock
i=0
while [ $i -lt 3 ]; do
    rm -f "$sock"
    start=$(lab_uptime)
    form-vmm --kernel "$LAB_GUEST_ELF" --memory size=64M --serial tty --api-socket "$sock" \
        --cmdline "bar-rw vendor=0x1234 device=0x1111 bar=0 len=$bar_len hold=3" \
        --device "path=/sys/bus/pci/devices/$gpu,id=gpu0" >bar.out 2>&1 &
    vmm=$!
    wait_for_output 120 "$vmm" bar.out '^holding '
    end=$(lab_uptime)
    vmm_api "$sock" GET vm.counters >counters.json || fail "vm.counters failed: $(cat counters.json)"
    reads=$(json_number counters.json gpu0 mmio_reads)
    writes=$(json_number counters.json gpu0 mmio_writes)
    [ -n "$reads" ] && [ -n "$writes" ] || fail "vm.counters has no gpu0 mmio_reads/mmio_writes"
    wait "$vmm" || fail "form-vmm (bar-rw) exited with status $?"
    expect_guest_pass bar.out
    # Two seeds, each a write pass and a read pass of len/4 dwords.
    echo "LAB-BENCH bar accesses=$bar_len mmio_reads=$reads mmio_writes=$writes secs=$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.2f", b - a }')"
    i=$((i + 1))
done

step "unbind the GPU and edu"
run_logged unbind.out vmm-service gpu unbind "$gpu" || fail "gpu unbind exited with status $?"
expect_driver "$gpu" bochs-drm
vfio_unbind "$edu"
