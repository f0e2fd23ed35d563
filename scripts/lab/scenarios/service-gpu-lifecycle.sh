# service-gpu-lifecycle: vmm-service gives a VM the GPU through form-vmm-ctl: the GPU
# goes to vfio-pci, the test guest sees it on its PCI bus, and deleting the VM puts the
# GPU back on bochs-drm. Needs form-vmm-ctl in L1 and VFIO passthrough in form-vmm.
# lab-order: 60
# lab-timeout: 90

# The display device, not the boot VGA: a VM's GPU must not be the host's console,
# and the service does not force that.
gpu=$LAB_DISPLAY_BDF


step "form-vmm-ctl is in L1"
command -v form-vmm-ctl >/dev/null ||
    fail "form-vmm-ctl is not in L1: scripts/vfio-lab must build -p form-vmm-ctl and add it to /lab/bin"

step "vmm-service serve starts"
service_start
expect_driver "$gpu" bochs-drm

step "create a VM with the GPU"
run_logged create.out form-vmm-ctl create --name lab1 --kernel "$LAB_GUEST_ELF" \
    --cmdline pci-scan --memory 64M --gpu "$gpu" ||
    fail "create exited with status $? (service log: $(tail -n 5 service.log))"
expect_driver "$gpu" vfio-pci
run_quiet info.json form-vmm-ctl --json info lab1 || fail "info exited with status $?"
state=$(json_after info.json name lab1 state)
[ "$state" = created ] || fail "the VM is '$state', not created"
run_quiet gpus.json form-vmm-ctl --json gpu list || fail "gpu list exited with status $?"
owner=$(json_after gpus.json bdf "$gpu" owner)
[ "$owner" = lab1 ] || fail "gpu list says $gpu belongs to '$owner', not lab1"

# Issue 11: the VM is built, so its VMM gave up root: a uid of the service's range
# on every thread, no capabilities, seccomp; its VFIO group node is that uid's.
step "the VM's form-vmm runs without root, capabilities or unfiltered threads"
pid=$(json_after info.json name lab1 pid)
[ -n "$pid" ] && [ -d "/proc/$pid" ] || fail "the VM's VMM (pid '$pid') is not running"
expect_vmm_confined "$pid"
uid=$(vmm_uid "$pid")
[ "$uid" -ge "${LAB_VMM_UIDS%-*}" ] && [ "$uid" -le "${LAB_VMM_UIDS#*-}" ] ||
    fail "the VMM runs as uid $uid, outside the service's range $LAB_VMM_UIDS"
node=/dev/vfio/$(pci_group "$gpu")
[ "$(file_owner "$node")" = "$uid" ] ||
    fail "$node belongs to uid $(file_owner "$node"), not the VMM's $uid: $(ls -ln "$node")"

step "the VM's form-vmm has a cgroup and a mount namespace of its own"
expect_vmm_cgroup "$pid" lab1 $((64 << 20))
expect_vmm_mount_ns "$pid"
expect_vmm_sandbox "$LAB_TMP/run/vms/lab1/api.sock" "$uid"
run_quiet info2.json form-vmm-ctl --json info lab1 || fail "info exited with status $?"
grep -q "\"vmm_uid\":$uid,\"vmm_cgroup\":\"/vms/lab1\"" info2.json ||
    fail "form-vmm-ctl info does not show the VMM's uid $uid and cgroup /vms/lab1: $(cat info2.json)"

step "boot: the test guest scans its PCI bus and powers off"
serial=$(json_after info.json name lab1 serial_log)
run_logged boot.out form-vmm-ctl boot lab1 || fail "boot exited with status $?"
stopped() {
    form-vmm-ctl --json info lab1 >info2.json 2>/dev/null &&
        [ "$(json_after info2.json name lab1 state)" = stopped ]
}
wait_until 60 stopped
cat "$serial"
expect_output "$serial" "form-test-guest: PASS" "the test guest's serial output"
step "the VM's GPU went back to bochs-drm when the guest powered off"
expect_driver "$gpu" bochs-drm

step "the test guest saw the GPU (1234:1111) on its bus"
expect_output "$serial" "pci 00:[0-9a-f.]+ 1234:1111" \
    "the guest's PCI scan (form-vmm does not pass VFIO devices through yet?)"

step "delete the VM: its cgroup goes too"
run_logged delete.out form-vmm-ctl delete lab1 || fail "delete exited with status $?"
expect_driver "$gpu" bochs-drm
[ ! -e /sys/fs/cgroup/vms/lab1 ] || fail "the deleted VM's cgroup /sys/fs/cgroup/vms/lab1 is still there"
kill "$service_pid"
