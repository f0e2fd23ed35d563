# service-hotplug-stuck: a guest that reads the removal request and keeps the GPU:
# remove-device ends within its deadline (the guest's 10 s plus margin) with exit
# status 5 and eject_timeout, and the GPU stays the VM's, on vfio-pci; throughout, gpu
# list answers (each within 5 s); the VM can still be deleted, which frees the GPU; and on a
# second such VM, remove-device --force detaches it without the guest.
# lab-order: 67
# lab-timeout: 150

gpu=$LAB_DISPLAY_BDF

# vm_keeping_the_gpu NAME: creates and boots VM NAME, whose test guest reads removal
# requests and never ejects (eject=2), gives it the GPU and waits until the guest has it.
vm_keeping_the_gpu() {
    run_logged "create-$1.out" form-vmm-ctl create --name "$1" --kernel "$LAB_GUEST_ELF" \
        --memory 64M --cmdline "hotplug-cycle vendor=0x1234 device=0x1111 wait=120 eject=2" \
        --boot || fail "create $1 exited with status $? (service log: $(tail -n 5 service.log))"
    wait_for_vm_output 30 "$1" '^waiting for 1234:1111 to appear'
    run_logged "add-$1.out" form-vmm-ctl add-device "$1" --gpu "$gpu" ||
        fail "add-device to $1 exited with status $? (service log: $(tail -n 5 service.log))"
    wait_for_vm_output 30 "$1" '^found 00:'
}

step "vmm-service serve starts; a VM whose guest keeps the GPU"
service_start
vm_keeping_the_gpu hps

step "remove-device: eject_timeout within the deadline, gpu list answers throughout"
t0=$(lab_uptime)
form-vmm-ctl remove-device hps --gpu "$gpu" >remove.out 2>&1 &
remover=$!
slowest=0
lists=0
while kill -0 "$remover" 2>/dev/null; do
    t1=$(lab_uptime)
    if ! form-vmm-ctl gpu list >list.out 2>&1; then
        kill "$remover" 2>/dev/null
        fail "gpu list failed during the removal: $(cat list.out)"
    fi
    took=$(lab_seconds_since "$t1")
    lists=$((lists + 1))
    slowest=$(awk -v a="$slowest" -v b="$took" 'BEGIN { print (b > a) ? b : a }')
    sleep 0.5
done
wait "$remover"
status=$?
took=$(lab_seconds_since "$t0")
cat remove.out
echo "LAB-NOTE remove-device ended with status $status after ${took}s; $lists gpu lists meanwhile, the slowest ${slowest}s"
[ "$status" = 5 ] || fail "remove-device exited with status $status, not 5 (conflict)"
expect_output remove.out 'did not eject GPU' "the eject_timeout message"
# The guest has 10 s; form-vmm answers then, the service at once after it. The
# upper bound leaves room for a slow emulated L1, not for a service that waits on
# anything else.
awk -v t="$took" 'BEGIN { exit !(t >= 9 && t <= 30) }' ||
    fail "remove-device took ${took}s; the guest has 10 s and the service answers at once after"
# A service that serialised gpu list behind the removal would finish one list, after it.
[ "$lists" -ge 3 ] || fail "only $lists gpu lists finished during a ${took}s removal"
awk -v t="$slowest" 'BEGIN { exit !(t < 5) }' || fail "a gpu list took ${slowest}s during the removal"
serial=$(vm_field hps serial_log)
expect_output "$serial" '^eject request for slot [0-9]+: keeping the device' "the guest reading the request"
expect_driver "$gpu" vfio-pci
expect_gpu_owner "$gpu" hps
[ "$(vm_field hps state)" = running ] || fail "the VM is '$(vm_field hps state)', not running"

step "delete: the VM whose guest keeps its GPU goes, and the GPU is free"
run_logged delete.out form-vmm-ctl delete hps || fail "delete exited with status $?"
expect_driver "$gpu" bochs-drm
expect_gpu_owner "$gpu" ""

step "remove-device --force on a second such VM: detached without the guest"
vm_keeping_the_gpu hpf
run_logged force.out form-vmm-ctl remove-device hpf --gpu "$gpu" --force ||
    fail "remove-device --force exited with status $? (service log: $(tail -n 5 service.log))"
expect_driver "$gpu" bochs-drm
expect_gpu_owner "$gpu" ""
wait_for_vm_output 30 hpf '^gone after '
run_logged delete2.out form-vmm-ctl delete hpf || fail "deleting hpf exited with status $?"
kill "$service_pid"
echo "LAB-TIMING service-hotplug-stuck eject_timeout after ${took}s"
