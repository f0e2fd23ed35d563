# service-cloud-image: a tenant's cloud image booted as it is, through the service,
# with only --image, a cloud-init seed and a GPU: no kernel on the host. The image
# (scripts/lab/build-l2-cloud-image) is qcow2, GPT, ext4 with /boot/grub/grub.cfg whose
# default entry names its kernel, initrd and root=UUID=. The guest reaches its root's
# userspace, the NoCloud stand-in reads the seed, bochs-drm binds the GPU. Then the
# guest installs a "newer kernel" (the image's second entry becomes the default) and
# reboots: the VM comes back on the new entry, read from the image again. Afterwards
# qemu-img (the host's, in L1) finds the image sound and holding the guest's change.
# lab-order: 74
# lab-timeout: 300

gpu=$LAB_DISPLAY_BDF
image=$LAB_TMP/cloud1.qcow2

step "a writable copy of the cloud image"
expect_file "$LAB_CLOUD_IMAGE" "the lab's cloud image"
cp "$LAB_CLOUD_IMAGE" "$image" || fail "cannot copy $LAB_CLOUD_IMAGE"

step "vmm-service serve starts"
service_start

step "create and boot with --image alone"
run_logged create.out form-vmm-ctl create --name cloud1 --image "$image" --gpu "$gpu" \
    --memory 512M --hostname cloudy --boot ||
    fail "create exited with status $? (service log: $(tail -n 5 service.log))"
wait_for_vm_output 240 cloud1 '^L2-CLOUD entry=new|L2-ROOT-FAIL|Kernel panic'
serial=$(vm_field cloud1 serial_log)

step "the first boot: the image's default entry, the seed, the GPU"
expect_output "$serial" '^L2-CLOUD entry=default .*root=UUID=5f0e4a4e' "the default grub entry's cmdline"
expect_output "$serial" '^L2-CIDATA hostname cloudy' "the NoCloud stand-in reading the seed"
expect_output "$serial" '^L2-CLOUD-GPU [0-9a-f:.]+ bochs-drm' "bochs-drm bound to the GPU"
expect_output "$serial" '^L2-CLOUD-INSTALLED' "the guest installing its new kernel"

step "after the guest's reboot: the entry it made the default"
expect_output "$serial" '^L2-CLOUD entry=new .*lab.entry=new' "the new grub entry's cmdline"

step "the guest powers off; the GPU goes back"
stopped() {
    form-vmm-ctl --json info cloud1 >info.json 2>/dev/null &&
        [ "$(json_after info.json name cloud1 state)" = stopped ]
}
wait_until 60 stopped
expect_driver "$gpu" bochs-drm

step "the image the guest wrote is sound qcow2 and holds what the guest wrote"
qemu_img=/lab/qemu-img/qemu-img
run_logged check.out "$qemu_img" check "$image" || fail "qemu-img check found errors (status $?)"
"$qemu_img" convert -f qcow2 -O raw "$image" written.raw || fail "qemu-img convert failed"
grep -aq '^set default=1$' written.raw || fail "the guest's new grub.cfg is not in the image"
rm -f written.raw
run_logged delete.out form-vmm-ctl delete cloud1 || fail "delete exited with status $?"
kill "$service_pid"
