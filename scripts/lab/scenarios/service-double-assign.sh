# service-double-assign: a second VM asking for a GPU that a first VM holds is refused
# with gpu_in_use, and the first VM runs on with it: it boots the test guest to PASS.
# Needs form-vmm-ctl in L1.
# lab-order: 62
# lab-timeout: 90

gpu=$LAB_DISPLAY_BDF


step "form-vmm-ctl is in L1"
command -v form-vmm-ctl >/dev/null ||
    fail "form-vmm-ctl is not in L1: scripts/vfio-lab must build -p form-vmm-ctl and add it to /lab/bin"

step "vmm-service serve starts"
service_start

step "the first VM gets the GPU"
run_logged first.out form-vmm-ctl create --name first --kernel "$LAB_GUEST_ELF" \
    --cmdline hello --memory 64M --gpu "$gpu" || fail "create exited with status $?"
expect_driver "$gpu" vfio-pci

step "the second VM is refused"
if run_quiet second.out form-vmm-ctl --json create --name second --kernel "$LAB_GUEST_ELF" \
    --cmdline hello --memory 64M --gpu "$gpu"; then
    fail "the second create succeeded"
fi
cat second.out
expect_output second.out "gpu_in_use|belongs to VM first" "the refusal"
form-vmm-ctl info second >/dev/null 2>&1 && fail "the refused VM was recorded"
expect_driver "$gpu" vfio-pci

step "the first VM runs on: its guest passes"
form-vmm-ctl --json info first >info.json || fail "info exited with status $?"
serial=$(json_after info.json name first serial_log)
run_logged boot.out form-vmm-ctl boot first || fail "boot exited with status $?"
passed() { grep -q "form-test-guest: PASS" "$serial" 2>/dev/null; }
wait_until 60 passed

step "delete"
run_logged delete.out form-vmm-ctl delete first || fail "delete exited with status $?"
expect_driver "$gpu" bochs-drm
kill "$service_pid"
