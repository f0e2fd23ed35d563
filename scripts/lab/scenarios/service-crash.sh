# service-crash: a VMM killed with SIGKILL loses its GPU to the host again; the service
# killed with SIGKILL and started again finds its VMs as they were and re-adopts the
# VMM that still runs (same pid), whose GPU stays on vfio-pci until the VM is deleted.
# Needs form-vmm-ctl in L1.
# lab-order: 61
# lab-timeout: 90

gpu=$LAB_DISPLAY_BDF


# A zombie (the VMM's first parent, the killed service, cannot reap it) counts as dead.
alive() { [ -r "/proc/$1/stat" ] && ! grep -qE '\) [ZX] ' "/proc/$1/stat"; }

vm_field() {
    form-vmm-ctl --json info "$1" >"$1.json" 2>/dev/null || return 1
    json_after "$1.json" name "$1" "$2"
}

step "form-vmm-ctl is in L1"
command -v form-vmm-ctl >/dev/null ||
    fail "form-vmm-ctl is not in L1: scripts/vfio-lab must build -p form-vmm-ctl and add it to /lab/bin"

step "vmm-service serve starts"
service_start

step "a created VM holds the GPU"
run_logged create.out form-vmm-ctl create --name crash1 --kernel "$LAB_GUEST_ELF" \
    --cmdline hello --memory 64M --gpu "$gpu" || fail "create exited with status $?"
expect_driver "$gpu" vfio-pci
vmm_pid=$(vm_field crash1 pid)
[ -n "$vmm_pid" ] && [ "$vmm_pid" != null ] || fail "crash1 has no VMM pid"

step "kill -9 the VMM: the GPU goes back to bochs-drm"
kill -9 "$vmm_pid"
crash1_stopped() { [ "$(vm_field crash1 state)" = stopped ]; }
wait_until 10 crash1_stopped
expect_driver "$gpu" bochs-drm
signal=$(vm_field crash1 signal)
[ "$signal" = 9 ] || fail "crash1's last exit names signal '$signal', not 9"

step "a second VM takes the GPU"
run_logged create2.out form-vmm-ctl create --name crash2 --kernel "$LAB_GUEST_ELF" \
    --cmdline hello --memory 64M --gpu "$gpu" || fail "create exited with status $?"
expect_driver "$gpu" vfio-pci
vmm_pid=$(vm_field crash2 pid)

step "kill -9 the service and start it again"
kill -9 "$service_pid"
wait "$service_pid" 2>/dev/null
alive "$vmm_pid" || fail "the VMM died with the service"
service_start

step "state intact, VMM re-adopted"
[ "$(vm_field crash1 state)" = stopped ] || fail "crash1 is not stopped after the restart"
[ "$(vm_field crash2 state)" = created ] || fail "crash2 is '$(vm_field crash2 state)' after the restart"
[ "$(vm_field crash2 pid)" = "$vmm_pid" ] || fail "crash2's VMM is not the same process ($vmm_pid)"
expect_driver "$gpu" vfio-pci
expect_output service.log "re-adopted VMs: crash2" "the service log"

step "delete both: the GPU is back on bochs-drm"
run_logged delete.out form-vmm-ctl delete crash2 || fail "delete exited with status $?"
run_logged delete1.out form-vmm-ctl delete crash1 || fail "delete exited with status $?"
expect_driver "$gpu" bochs-drm
alive "$vmm_pid" && fail "crash2's VMM still runs after delete"
kill "$service_pid"
