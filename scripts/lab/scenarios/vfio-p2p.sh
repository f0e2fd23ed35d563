# vfio-p2p: peer-to-peer DMA between passed-through devices. edu's DMA engine (given a
# 64-bit dma_mask by scripts/vfio-lab) writes a pattern into another passed-through
# device's BAR at the BAR's guest physical address and reads a second one back from
# there: bochs-display's 16 MiB framebuffer (BAR0, below 4 GiB) in one VM, the far end
# of ivshmem's 8 GiB BAR2 (above 4 GiB) in a second. It works only because form-vmm
# DMA-maps every mmapped BAR area into the VM's IOMMU container at IOVA = guest physical
# address; without that, L1's IOMMU faults the DMA (DMAR) and the pattern is missing.
# lab-order: 62
# lab-timeout: 150

edu=$LAB_EDU_BDF
display=$LAB_DISPLAY_BDF
ivshmem=$LAB_IVSHMEM_BDF

# p2p_run OUT PEER_BDF PEER_ID CMDLINE: form-vmm with edu and the peer passed through,
# running the test guest's edu-p2p scenario; fails with the guest's reason and any IOMMU
# fault L1's kernel logged meanwhile (what a missing BAR mapping looks like).
p2p_run() {
    _out=$1 _peer=$2 _id=$3 _cmdline=$4
    _before=$(dmesg | wc -l)
    _rc=0
    # shellcheck disable=SC2086 # LAB_VMM_DROP: --uid/--gid/--mount-ns (l1-lib.sh)
    run_logged "$_out" form-vmm --kernel "$LAB_GUEST_ELF" --memory size=64M --serial tty \
        --cmdline "$_cmdline" --device "path=/sys/bus/pci/devices/$edu,id=edu0" \
        --device "path=/sys/bus/pci/devices/$_peer,id=$_id" $LAB_VMM_DROP || _rc=$?
    dmesg | tail -n +$((_before + 1)) | grep -E 'DMAR' >"$_out.dmar"
    # Everything L1's IOMMU driver said meanwhile, faults first in the log.
    sed 's/^/LAB-NOTE dmesg: /' "$_out.dmar" | head -n 8
    _faults=$(grep -c 'DMAR: \[DMA' "$_out.dmar")
    _why=""
    _unmapped=$(grep -c 'not mapped for peer-to-peer DMA' "$_out")
    if [ "$_unmapped" -gt 0 ]; then
        _why="form-vmm left $_unmapped BAR area(s) out of the IOMMU (first: $(grep -m1 -o 'BAR area [^ ]*' "$_out")); "
    fi
    if [ "$_faults" -gt 0 ]; then
        _why="${_why}L1's IOMMU faulted $_faults DMA(s): $(grep -m1 'DMAR: \[DMA' "$_out.dmar" | sed 's/^\[[^]]*\] //'); "
    fi
    if grep -q '^form-test-guest: FAIL' "$_out"; then
        fail "${_why}the test guest says: $(grep -m1 '^form-test-guest: FAIL' "$_out" | cut -d' ' -f3-)"
    fi
    [ -z "$_why" ] || fail "$_why"
    [ "$_rc" = 0 ] || fail "form-vmm exited with status $_rc"
    expect_guest_pass "$_out"
}

step "bind edu, bochs-display and ivshmem to vfio-pci"
vfio_bind "$edu"
vfio_bind "$display"
vfio_bind "$ivshmem"

step "edu DMA into bochs-display's framebuffer BAR0 and back"
p2p_run display.out "$display" fb0 "edu-p2p target_vendor=0x1234 target_device=0x1111 bar=0 offset=0x1000 len=0xffc"
expect_output display.out '^p2p: peer 00:[0-9a-f]{2}\.0 1234:1111 class 038000' "the peer as the guest sees it"
expect_output display.out '^p2p: edu DMA 4092 bytes -> 00:[0-9a-f]{2}\.0 bar 0 at 0x[0-9a-f]+: match' "edu's DMA into the framebuffer"
expect_output display.out '^p2p: edu DMA 4092 bytes <- 00:[0-9a-f]{2}\.0 bar 0 at 0x[0-9a-f]+: match' "edu's DMA from the framebuffer"

step "edu DMA into the far end of ivshmem's 8 GiB BAR2 above 4 GiB and back"
p2p_run ivshmem.out "$ivshmem" shm0 "edu-p2p target_vendor=0x1af4 target_device=0x1110 bar=2 offset=0x1fffff000 len=0xffc"
expect_output ivshmem.out '^mapped 0x[0-9a-f]+-0x[0-9a-f]+ above 4 GiB' "BAR2 above 4 GiB"
expect_output ivshmem.out '^p2p: edu DMA 4092 bytes -> 00:[0-9a-f]{2}\.0 bar 2 at 0x[0-9a-f]{9,}: match' "edu's DMA into BAR2"
expect_output ivshmem.out '^p2p: edu DMA 4092 bytes <- 00:[0-9a-f]{2}\.0 bar 2 at 0x[0-9a-f]{9,}: match' "edu's DMA from BAR2"
grep -h '^p2p: edu DMA' display.out ivshmem.out | sed 's/^/LAB-NOTE /'

step "unbind the three"
vfio_unbind "$ivshmem"
vfio_unbind "$display"
vfio_unbind "$edu"
