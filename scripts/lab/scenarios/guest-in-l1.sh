# guest-in-l1: form-vmm runs the project's test guest inside the L1 host, on nested KVM
# (emulated AMD SVM), and the guest reports PASS and powers off.
# lab-order: 30
# lab-timeout: 60

step "test guest is in L1"
expect_file "$LAB_GUEST_ELF" "the test guest (scripts/test-guest did not provide one)"
expect_file /dev/kvm

step "form-vmm runs the test guest"
start=$(lab_uptime)
# shellcheck disable=SC2086 # LAB_VMM_DROP: --uid/--gid/--mount-ns (l1-lib.sh)
run_logged vmm.out form-vmm --kernel "$LAB_GUEST_ELF" --cmdline hello --memory size=64M \
    --serial tty $LAB_VMM_DROP || fail "form-vmm exited with status $?"
secs=$(lab_seconds_since "$start")
expect_output vmm.out "form-test-guest: PASS" "the test guest's serial output"
echo "LAB-TIMING guest-in-l1 form-vmm start to exit ${secs}s"
