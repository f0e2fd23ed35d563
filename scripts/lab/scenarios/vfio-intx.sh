# vfio-intx: a Linux L2 guest with the e1000e NIC passed through and pci=nomsi, so e1000e must use its legacy INTx line: it binds on an IO-APIC level (fasteoi) IRQ at the GSI form-vmm's _PRT gives its slot and pin, and that IRQ's count grows by at least 2 while the interface goes up and down (more than one interrupt: the resample eventfd re-arms the line after each EOI); L2 powers off and form-vmm exits 0.
# lab-order: 63
# lab-timeout: 150
#
# L2 boots the virtio initramfs without lab.root=, so scripts/lab/l2-init runs the check
# below from the initramfs; e1000e is in its /lib/modules/l2-ondemand
# (scripts/lab/l2-modules-ondemand), which the check loads.

nic=$LAB_NIC_BDF

step "L2 initramfs with e1000e and the INTx check"
cat >check.sh <<'CHECK'
#!/bin/sh
busybox --install -s /bin
while read -r name params; do
    # shellcheck disable=SC2086 # params is a list of key=value words
    insmod "/lib/modules/l2-ondemand/$name.ko" $params || echo "L2-MODULE-FAIL $name"
done </lib/modules/l2-ondemand/load-order
dmesg | grep -E 'GSI|e1000e|INT[A-D]' | sed 's/^/L2-DMESG /'

dev=""
for d in /sys/bus/pci/devices/*; do
    [ "$(cat "$d/vendor"):$(cat "$d/device")" = 0x8086:0x10d3 ] && dev=$d
done
[ -n "$dev" ] || { echo "L2-INTX-NODEV"; exit 0; }
drv=none
[ -e "$dev/driver" ] && drv=$(basename "$(readlink "$dev/driver")")
msi=0
[ -d "$dev/msi_irqs" ] && msi=$(ls "$dev/msi_irqs" | wc -l)
# Configuration space bytes 0x3c and 0x3d: interrupt line (what the VMM wrote there)
# and pin (1 = INTA).
set -- $(od -An -tu1 -j60 -N2 "$dev/config")
echo "L2-INTX-DEVICE ${dev##*/} driver=$drv irq=$(cat "$dev/irq") line=$1 pin=$2 msi_irqs=$msi"
[ "$drv" = e1000e ] || exit 0
irq=$(cat "$dev/irq")
iface=$(ls "$dev/net" 2>/dev/null | head -n1)
[ -n "$iface" ] || { echo "L2-INTX-NOIFACE"; exit 0; }

# The IRQ's total over all CPUs in /proc/interrupts (0 while it was never requested).
count() {
    awk -v irq="$irq:" '$1 == irq { n = 0; for (i = 2; i <= NF && $i ~ /^[0-9]+$/; i++) n += $i; print n; found = 1 }
        END { if (!found) print 0 }' /proc/interrupts
}
# link_up: brings the interface up and waits up to 10 s for the carrier.
link_up() {
    ip link set "$iface" up || echo "L2-INTX-UP-FAILED $iface"
    i=0
    until [ "$(cat "/sys/class/net/$iface/carrier" 2>/dev/null)" = 1 ]; do
        i=$((i + 1))
        [ $i -lt 100 ] || { echo "L2-INTX-NOCARRIER $iface"; return 1; }
        sleep 0.1
    done
    echo "L2-INTX-CARRIER $iface after $((i / 10)).$((i % 10))s"
}

# e1000e requests its IRQ when the interface opens; the first link-up is the baseline.
link_up
echo "L2-INTX-LINE $(grep "^ *$irq:" /proc/interrupts | tr -s ' ')"
before=$(count)
for cycle in 1 2 3; do
    ip link set "$iface" down
    sleep 0.2
    link_up
done
sleep 0.5
after=$(count)
echo "L2-INTX-LINE $(grep "^ *$irq:" /proc/interrupts | tr -s ' ')"
echo "L2-INTX-COUNT irq=$irq iface=$iface before=$before after=$after"
ip link set "$iface" down
dmesg | grep -E 'e1000e.*(Link|irq|IRQ|nterrupt)' | tail -n 4 | sed 's/^/L2-DMESG /'
CHECK
l2_virtio_initramfs l2.cpio.gz check.sh

step "bind the NIC to vfio-pci"
vfio_bind "$nic"

step "form-vmm boots Linux with the NIC and pci=nomsi"
start=$(lab_uptime)
# shellcheck disable=SC2086 # LAB_VMM_DROP: --uid/--gid/--mount-ns (l1-lib.sh)
run_logged vmm.out form-vmm --kernel "$LAB_L2_KERNEL" --initramfs l2.cpio.gz \
    --cmdline "console=ttyS0 panic=-1 quiet pci=nomsi" --memory size=256M --serial tty \
    --device "path=/sys/bus/pci/devices/$nic,id=nic0" $LAB_VMM_DROP ||
    fail "form-vmm exited with status $?"
secs=$(lab_seconds_since "$start")
expect_output vmm.out '^L2-USERSPACE-OK' "L2's serial output"
expect_output vmm.out '^L2-CMDLINE .*pci=nomsi' "L2's command line"
! grep -q L2-MODULE-FAIL vmm.out || fail "L2 could not load a module: $(grep -m1 L2-MODULE-FAIL vmm.out)"

step "e1000e bound to the NIC on an IO-APIC line, not MSI"
grep -q '^L2-INTX-NODEV' vmm.out && fail "L2 sees no 8086:10d3 device"
dev_line=$(l2_marker vmm.out L2-INTX-DEVICE)
[ -n "$dev_line" ] || fail "L2's check printed no L2-INTX-DEVICE line"
field() { printf '%s\n' "$dev_line" | tr ' ' '\n' | sed -n "s/^$1=//p"; }
l2_bdf=${dev_line%% *}
[ "$(field driver)" = e1000e ] ||
    fail "no driver bound: the NIC is on '$(field driver)' in L2 ($(grep -m1 'L2-DMESG .*e1000e' vmm.out || echo 'no e1000e messages'))"
[ "$(field msi_irqs)" = 0 ] || fail "MSI in use despite pci=nomsi: $(field msi_irqs) msi_irqs on $l2_bdf"
grep -q '^L2-INTX-NOIFACE' vmm.out && fail "e1000e bound $l2_bdf but made no network interface"
irq=$(field irq) line=$(field line) pin=$(field pin)
# The GSI form-vmm's _PRT gives the slot's pin (vmm/src/acpi_pci.rs intx_gsi): 10-15,
# rotated by slot.
slot=$(printf '%d' "0x$(echo "$l2_bdf" | cut -d: -f3 | cut -d. -f1)")
case "$pin" in
1 | 2 | 3 | 4) ;;
*) fail "the NIC reports interrupt pin '$pin' in L2 (expected 1-4: no INTx pin exposed?)" ;;
esac
gsi=$((10 + (slot + pin - 1) % 6))
[ "$line" = "$gsi" ] || fail "the NIC's interrupt line register reads $line in L2, expected GSI $gsi"
irq_line=$(l2_marker vmm.out L2-INTX-LINE)
case "$irq_line" in
*PCI-MSI*) fail "MSI in use despite pci=nomsi: $irq_line" ;;
*IO-APIC*fasteoi*) ;;
"") fail "IRQ $irq is not in L2's /proc/interrupts after the interface came up" ;;
*) fail "IRQ $irq is not an IO-APIC level (fasteoi) line in L2: $irq_line" ;;
esac
# Linux numbers its IRQs on its own (27, say); the IO-APIC pin, which is the GSI (one
# IO-APIC, GSI base 0), is the number before "-fasteoi".
l2_gsi=$(printf '%s\n' "$irq_line" | sed -n 's/.*IO-APIC *\([0-9][0-9]*\)-fasteoi.*/\1/p')
[ "$l2_gsi" = "$gsi" ] ||
    fail "L2 took GSI ${l2_gsi:-?} for $l2_bdf (slot $slot, pin $pin) but form-vmm routes that pin to GSI $gsi: $irq_line"

step "the INTx count grows while the link goes down and up"
counts=$(l2_marker vmm.out L2-INTX-COUNT)
[ -n "$counts" ] || fail "L2's check printed no interrupt counts (did it finish?)"
before=$(printf '%s\n' "$counts" | sed -n 's/.* before=\([0-9]*\).*/\1/p')
after=$(printf '%s\n' "$counts" | sed -n 's/.* after=\([0-9]*\).*/\1/p')
echo "LAB-NOTE vfio-intx e1000e on $l2_bdf, IRQ $irq = IO-APIC pin $gsi (GSI $gsi, level, fasteoi): $before interrupts after the first link-up, $after after 3 more down/up cycles"
if grep -q '^L2-INTX-NOCARRIER' vmm.out; then
    echo "LAB-NOTE vfio-intx the carrier did not come up every time: $(grep -c '^L2-INTX-NOCARRIER' vmm.out) of 4"
fi
[ "$before" -ge 1 ] 2>/dev/null ||
    fail "no INTx interrupt reached L2 at all: IRQ $irq count is '$before' after the first link-up"
[ "$after" -ge $((before + 2)) ] ||
    fail "INTx count stuck at $after (was $before before 3 link down/up cycles): the line is not re-armed after EOI (resample)"

step "L2 powered off and form-vmm exited 0"
expect_output vmm.out 'reboot: Power down' "L2's power-off"
echo "LAB-TIMING vfio-intx INTx count $before -> $after; form-vmm start to exit ${secs}s"

step "unbind the NIC"
vfio_unbind "$nic"
