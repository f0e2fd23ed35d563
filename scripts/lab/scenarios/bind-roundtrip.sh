# bind-roundtrip: the GPU moves from its native driver (bochs-drm) to vfio-pci and back
# through the project's own code, `vmm-service gpu`, and the kernel agrees at each step:
# the driver link, the VFIO group node, and bochs-drm taking the device again after.
# lab-order: 20
# lab-timeout: 60

gpu=$LAB_GPU_BDF
dev=/sys/bus/pci/devices/$gpu

step "GPU starts on bochs-drm"
expect_driver "$gpu" bochs-drm
group=$(pci_group "$gpu")
[ -n "$group" ] || fail "$gpu has no IOMMU group"
[ ! -e "/dev/vfio/$group" ] || fail "/dev/vfio/$group exists before any bind"

step "vmm-service gpu list --json names the GPU on bochs-drm"
run_quiet list.json vmm-service gpu list --json || fail "gpu list exited with status $?"
expect_output list.json "\"$gpu\"" "gpu list"
listed=$(json_after list.json bdf "$gpu" driver)
[ "$listed" = bochs-drm ] || fail "gpu list says $gpu is on '$listed', not bochs-drm"

step "vmm-service gpu bind $gpu"
# --force: the std VGA is L1's boot VGA device (boot_vga=1), which the service guards as
# the host's console; the lab's console is the serial port, so nothing is lost.
run_logged bind.out vmm-service gpu bind --force "$gpu" || fail "gpu bind exited with status $?"
expect_driver "$gpu" vfio-pci
expect_file "/dev/vfio/$group" "the VFIO group node after bind"

step "vmm-service gpu list --json shows vfio-pci"
run_quiet list-bound.json vmm-service gpu list --json || fail "gpu list exited with status $?"
listed=$(json_after list-bound.json bdf "$gpu" driver)
[ "$listed" = vfio-pci ] || fail "gpu list says $gpu is on '$listed' after bind, not vfio-pci"

step "vmm-service gpu unbind $gpu"
run_logged unbind.out vmm-service gpu unbind "$gpu" || fail "gpu unbind exited with status $?"
expect_driver "$gpu" bochs-drm
wait_until 5 test ! -e "/dev/vfio/$group"

step "bochs-drm drives the GPU again"
# A DRM card under the device means bochs-drm's probe ran to the end, not just bound.
drm_card_present() {
    for card in "$dev"/drm/card*; do
        [ -e "$card" ] && return 0
    done
    return 1
}
wait_until 5 drm_card_present
override=$(cat "$dev/driver_override")
[ "$override" = "(null)" ] || [ -z "$override" ] || fail "driver_override left as '$override'"
