# service-gpu-sibling: a display GPU whose slot also holds its HDMI-audio function (one
# IOMMU group), created through the service with the GPU's address alone. The service
# gives the VM the whole group: both functions go to vfio-pci and into one guest slot
# (the test guest's scan finds 00:01.0 and 00:01.1), the audio function is recorded
# with the VM, a second VM asking for the audio function is refused naming the owner,
# and both functions go back to their drivers when the VM stops. Asking for the audio
# function alone gets the same whole group.
# lab-order: 61
# lab-timeout: 120

gpu=$LAB_SIBLING_GPU_BDF
audio=$LAB_SIBLING_AUDIO_BDF

step "vmm-service serve starts"
service_start
expect_driver "$gpu" bochs-drm
expect_driver "$audio" none

step "create a VM with the GPU's address alone"
run_logged create.out form-vmm-ctl create --name sib1 --kernel "$LAB_GUEST_ELF" \
    --cmdline pci-scan --memory 64M --gpu "$gpu" ||
    fail "create exited with status $? (service log: $(tail -n 5 service.log))"
expect_driver "$gpu" vfio-pci
expect_driver "$audio" vfio-pci
run_quiet info.json form-vmm-ctl --json info sib1 || fail "info exited with status $?"
role=$(json_after info.json bdf "$audio" role)
[ "$role" = function ] || fail "the VM's record of $audio has role '$role': $(cat info.json)"
run_quiet devices.json form-vmm-ctl --json device list || fail "device list exited with status $?"
owner=$(json_after devices.json bdf "$audio" owner)
[ "$owner" = sib1 ] || fail "device list says $audio belongs to '$owner', not sib1"

step "another VM cannot have the audio function"
if run_logged create2.out form-vmm-ctl create --name sib2 --kernel "$LAB_GUEST_ELF" \
    --cmdline hello --memory 64M --gpu "$audio"; then
    fail "a second VM got $audio, which sib1 holds"
fi
expect_output create2.out "sib1" "the refusal naming the owner"

step "boot: the guest finds both functions in one slot"
serial=$(json_after info.json name sib1 serial_log)
run_logged boot.out form-vmm-ctl boot sib1 || fail "boot exited with status $?"
stopped() {
    form-vmm-ctl --json info sib1 >info2.json 2>/dev/null &&
        [ "$(json_after info2.json name sib1 state)" = stopped ]
}
wait_until 60 stopped
cat "$serial"
expect_output "$serial" "form-test-guest: PASS" "the test guest's serial output"
expect_output "$serial" "pci 00:01\.0 1234:1111" "the GPU at function 0 of the guest slot"
expect_output "$serial" "pci 00:01\.1 8086:2668" "the audio function at function 1 of the same slot"

step "both functions went back to their drivers when the guest powered off"
expect_driver "$gpu" bochs-drm
expect_driver "$audio" none
run_logged delete.out form-vmm-ctl delete sib1 || fail "delete exited with status $?"

step "asking for the audio function alone gets the whole group"
run_logged create3.out form-vmm-ctl create --name sib3 --kernel "$LAB_GUEST_ELF" \
    --cmdline hello --memory 64M --gpu "$audio" ||
    fail "create exited with status $? (service log: $(tail -n 5 service.log))"
expect_driver "$gpu" vfio-pci
expect_driver "$audio" vfio-pci
run_logged delete3.out form-vmm-ctl delete sib3 || fail "delete exited with status $?"
expect_driver "$gpu" bochs-drm
expect_driver "$audio" none
kill "$service_pid"
