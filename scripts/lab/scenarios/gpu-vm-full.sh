# gpu-vm-full: a whole VM through vmm-service and form-vmm-ctl: the display GPU, a virtio root disk, virtio-net on an L1 bridge and a cloud-init seed; L2 takes the seed's hostname and SSH key, bochs-drm binds the GPU, L2 pings L1 over the bridge; delete gives the GPU back and removes the seed.
# lab-order: 66
# lab-timeout: 240
#
# L2's NoCloud consumer is scripts/lab/l2-nocloud (busybox shell, on the root disk),
# a stand-in for cloud-init: it reads the seed the service built and applies the host
# name and SSH keys.

gpu=$LAB_DISPLAY_BDF
bridge=labbr0
l1_ip=10.77.1.1
l2_ip=10.77.1.2
vm=full1
key="ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n') lab@l1"

vm_state() {
    form-vmm-ctl --json info "$vm" >info.json 2>/dev/null && json_after info.json name "$vm" state
}
stopped() { [ "$(vm_state)" = stopped ]; }
# Files under the service's state directory that are FAT volumes labelled CIDATA: the
# label sits in the boot sector at byte 43 (FAT12/16) or 71 (FAT32).
seed_files() {
    find "$LAB_TMP/state" -type f | while read -r _f; do
        for _at in 43 71; do
            if [ "$(dd if="$_f" bs=1 skip=$_at count=6 2>/dev/null)" = CIDATA ]; then
                echo "$_f"
                break
            fi
        done
    done
}

step "L1 loads tun, bridge, loop and ext4"
l1_load_ondemand

step "form-vmm-ctl, the L2 kernel, virtio initramfs and root disk are in L1"
command -v form-vmm-ctl >/dev/null || fail "form-vmm-ctl is not in L1"
expect_file "$LAB_L2_KERNEL" "the L2 kernel"

step "bridge $bridge with $l1_ip in L1"
bridge_create "$bridge"
net_up "$bridge" "$l1_ip/24"

step "vmm-service serve starts"
service_start
expect_driver "$gpu" bochs-drm

step "L2 initramfs with the display modules and the check, root disk, SSH key"
cat >check.sh <<'CHECK'
#!/bin/sh
# Runs in L2 from the root disk's init (l2-root-init), after the NoCloud consumer and
# the network configuration, before it powers off.
arg() { sed -n "s/.*[[:space:]]$1=\([^[:space:]]*\).*/\1/p" /proc/cmdline; }
echo "L2-HOSTNAME $(hostname)"
echo "L2-AUTHORIZED-KEY $(head -n1 /root/.ssh/authorized_keys 2>/dev/null)"
i=0
while [ ! -e /dev/fb0 ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
for dev in /sys/bus/pci/devices/*; do
    drv=none
    [ -e "$dev/driver" ] && drv=$(basename "$(readlink "$dev/driver")")
    echo "L2-PCI-DRIVER ${dev##*/} $(cat "$dev/vendor"):$(cat "$dev/device") $drv"
done
[ -e /dev/fb0 ] && echo "L2-FB0 $(cat /sys/class/graphics/fb0/name)"
peer=$(arg lab.peer)
i=0
until ping -c 1 -W 1 "$peer" >/dev/null 2>&1; do
    i=$((i + 1))
    if [ $i -ge 20 ]; then break; fi
    sleep 1
done
replies=$(ping -c 3 -W 2 "$peer" 2>&1 | sed -n 's/.* \([0-9]*\) packets received.*/\1/p')
echo "L2-PING $peer replies=${replies:-0}/3 after $i retries"
CHECK
l2_virtio_initramfs l2.cpio.gz check.sh display
l2_root_disk root.img
echo "$key" >lab.pub

step "create the VM: GPU, disk, network on $bridge, cloud-init"
run_logged create.out form-vmm-ctl create --name "$vm" --kernel "$LAB_L2_KERNEL" \
    --initramfs "$LAB_TMP/l2.cpio.gz" --memory 512M --gpu "$gpu" \
    --cmdline "console=ttyS0 panic=-1 quiet lab.root=/dev/vda lab.ip=$l2_ip/24 lab.peer=$l1_ip" \
    --disk "$LAB_TMP/root.img" --net "bridge=$bridge" --ssh-key "$LAB_TMP/lab.pub" \
    --hostname l2-full ||
    fail "create exited with status $? (service log: $(tail -n 5 service.log))"
expect_driver "$gpu" vfio-pci
state=$(vm_state)
[ "$state" = created ] || fail "the VM is '$state', not created"
[ -n "$(seed_files)" ] || fail "no cloud-init seed (a FAT image labelled CIDATA) under the service's state directory"

step "boot: L2 boots from the disk, applies the seed, pings L1, powers off"
serial=$(json_after info.json name "$vm" serial_log)
start=$(lab_uptime)
run_logged boot.out form-vmm-ctl boot "$vm" || fail "boot exited with status $?"
# The tap is on the bridge only while the VM runs: note it while waiting for the stop.
tap_seen=""
running_or_stopped() {
    _ports=$(bridge_ports "$bridge")
    [ -n "${_ports% }" ] && tap_seen=$_ports
    stopped
}
wait_until 180 running_or_stopped
secs=$(lab_seconds_since "$start")
cat "$serial"
expect_l2_ok "$serial"

step "cloud-init: the hostname and SSH key from the seed"
expect_output "$serial" '^L2-CIDATA seed dev=/dev/vd' "L2's NoCloud consumer (finding the CIDATA disk)"
if grep -q '^L2-CIDATA-FAIL' "$serial"; then
    fail "L2's NoCloud consumer: $(grep -m1 '^L2-CIDATA-FAIL' "$serial" | cut -d' ' -f2-)"
fi
host=$(l2_marker "$serial" L2-HOSTNAME)
[ "$host" = l2-full ] || fail "L2's hostname is '$host', not l2-full from the seed"
got_key=$(l2_marker "$serial" L2-AUTHORIZED-KEY)
[ "$got_key" = "$key" ] ||
    fail "L2's /root/.ssh/authorized_keys starts with '$got_key', not the key given to --ssh-key"

step "the GPU: bochs-drm in L2"
expect_output "$serial" '^L2-PCI-DRIVER [0-9a-f:.]+ 0x1234:0x1111 bochs-drm' "bochs-drm bound to the GPU in L2"
expect_output "$serial" '^L2-FB0 ' "/dev/fb0 in L2"

step "the network: the VM's tap on $bridge, 3 ping replies from L1"
[ -n "$tap_seen" ] || fail "no tap joined $bridge while the VM ran (the service attaches it with SIOCBRADDIF)"
echo "LAB-NOTE $bridge had ports $tap_seen while the VM ran"
ping_line=$(l2_marker "$serial" L2-PING)
case "$ping_line" in
"$l1_ip replies=3/3 "*) ;;
*) fail "L2 pinging L1 over $bridge: '${ping_line:-no result}', expected 3/3 replies" ;;
esac

step "stopped: the GPU is back on bochs-drm, the tap left the bridge"
expect_driver "$gpu" bochs-drm
ports=$(bridge_ports "$bridge")
[ -z "${ports% }" ] || echo "LAB-NOTE $bridge still has ports after the VM stopped: $ports"

step "delete: the seed goes with the VM"
run_logged delete.out form-vmm-ctl delete "$vm" || fail "delete exited with status $?"
expect_driver "$gpu" bochs-drm
left=$(seed_files)
[ -z "$left" ] || fail "the cloud-init seed is still there after delete: $left"
kill "$service_pid"
bridge_delete "$bridge"
echo "LAB-TIMING gpu-vm-full boot to stopped ${secs}s"
