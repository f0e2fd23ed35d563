# service-reboot: a VM through vmm-service and form-vmm-ctl (virtio root disk, NIC on an L1 bridge) whose guest reboots itself once: the tap keeps its ifindex and stays a port of the bridge across the reboot, L2 pings L1 3/3 on both boots, the serial log keeps the first boot (appended, not truncated) and form-vmm-ctl console (once and -f) shows both; form-vmm exits 0.
# lab-order: 67
# lab-timeout: 180
#
# L2's check (below) runs from the root disk's init (scripts/lab/l2-root-init) on each
# boot. The first boot finds no marker on the disk: it writes one (with its boot id),
# pings L1, prints "L2-BOOT 1 ...", remounts / read-only and runs reboot -f; form-vmm
# turns the guest's reset into a reboot of the same configuration in the same process,
# with the NICs' taps kept open. The second boot finds the marker, pings L1, prints
# "L2-BOOT 2 ..." and returns, and the init powers off. Meanwhile L1 samples the tap's
# ifindex and bridge master every ~0.2 s.
#
# reboot -f takes Linux's default restart path, which on form-vmm's hardware-reduced
# ACPI platform without EFI ends in a real-mode jump to the reset vector: form-vmm's
# stub there resets the VM. (Before it, L2 spun after "reboot: machine restart".)

bridge=labbr1
l1_ip=10.77.2.1
l2_ip=10.77.2.2
vm=reboot1

vm_info() { form-vmm-ctl --json info "$vm" >info.json 2>/dev/null; }
vm_state() { vm_info && json_after info.json name "$vm" state; }

# sample_taps SERIAL: until ./sampler.stop appears, one line per ~0.2 s and tap:
#   UPTIME PHASE TAP IFINDEX MASTER     (MASTER "none" when the tap has no master)
#   UPTIME PHASE - absent               (no fv* interface at all)
# PHASE is how many "L2-BOOT N" lines the serial log has so far: 0 before the first
# boot's result, 1 from then on (the reset, the second boot), 2 after the second's.
sample_taps() {
    while [ ! -e sampler.stop ]; do
        _t=$(lab_uptime)
        _phase=$(grep -c '^L2-BOOT [12] ' "$1" 2>/dev/null)
        _any=0
        for _p in /sys/class/net/fv*; do
            [ -e "$_p" ] || continue
            _idx=$(cat "$_p/ifindex" 2>/dev/null) || continue
            _any=1
            _m=$(readlink "$_p/master" 2>/dev/null)
            _m=${_m##*/}
            echo "$_t ${_phase:-0} ${_p##*/} $_idx ${_m:-none}"
        done
        [ "$_any" = 1 ] || echo "$_t ${_phase:-0} - absent"
        sleep 0.2
    done >taps.samples
}

step "L1 loads tun, bridge, loop and ext4"
l1_load_ondemand
command -v form-vmm-ctl >/dev/null || fail "form-vmm-ctl is not in L1"
expect_file "$LAB_L2_KERNEL" "the L2 kernel"
set -- /sys/class/net/fv*
[ ! -e "$1" ] || fail "a VM tap exists before the scenario started: $*"

step "bridge $bridge with $l1_ip in L1"
bridge_create "$bridge"
net_up "$bridge" "$l1_ip/24"

step "vmm-service serve starts"
service_start

step "L2 initramfs with the reboot-once check, root disk"
cat >check.sh <<'CHECK'
#!/bin/sh
# Runs in L2 from the root disk's init (l2-root-init) on each boot. First boot: marker
# on the disk, ping, "L2-BOOT 1", reset. Second boot: ping, "L2-BOOT 2", and back to
# the init, which powers off.
arg() { sed -n "s/.*[[:space:]]$1=\([^[:space:]]*\).*/\1/p" /proc/cmdline; }
peer=$(arg lab.peer)
marker=/lab-reboot-marker
boot_id=$(cat /proc/sys/kernel/random/boot_id)

ping_peer() {
    i=0
    until ping -c 1 -W 1 "$peer" >/dev/null 2>&1; do
        i=$((i + 1))
        if [ $i -ge 20 ]; then break; fi
        sleep 1
    done
    replies=$(ping -c 3 -W 2 "$peer" 2>&1 | sed -n 's/.* \([0-9]*\) packets received.*/\1/p')
    echo "ping ${replies:-0}/3 after $i retries"
}

if [ -e "$marker" ]; then
    echo "L2-BOOT 2 $(ping_peer) boot_id=$boot_id marker=$(cat "$marker")"
    exit 0
fi
if ! { echo "$boot_id" >"$marker" && sync; }; then
    echo "L2-BOOT-FAIL cannot write $marker on the root disk; not rebooting"
    exit 0
fi
echo "L2-BOOT 1 $(ping_peer) boot_id=$boot_id"
# Let the serial line drain, leave the disk clean, reset.
sleep 1
sync
mount -o remount,ro / || echo "L2-ROOT-NOTE cannot remount / read-only before the reboot"
echo "L2-REBOOTING"
reboot -f
echo "L2-BOOT-FAIL reboot -f returned"
CHECK
l2_virtio_initramfs l2.cpio.gz check.sh
l2_root_disk root.img

step "create the VM: disk, network on $bridge"
run_logged create.out form-vmm-ctl create --name "$vm" --kernel "$LAB_L2_KERNEL" \
    --initramfs "$LAB_TMP/l2.cpio.gz" --memory 256M \
    --cmdline "console=ttyS0 panic=-1 quiet lab.root=/dev/vda lab.ip=$l2_ip/24 lab.peer=$l1_ip" \
    --disk "$LAB_TMP/root.img" --net "bridge=$bridge" ||
    fail "create exited with status $? (service log: $(tail -n 5 service.log))"
state=$(vm_state)
[ "$state" = created ] || fail "the VM is '$state', not created"
serial=$(json_after info.json name "$vm" serial_log)
vmm_log=$LAB_TMP/state/vms/$vm/vmm.log

step "boot: L2 boots, pings L1, reboots itself, pings again, powers off"
start=$(lab_uptime)
run_logged boot.out form-vmm-ctl boot "$vm" || fail "boot exited with status $?"
vm_info || fail "form-vmm-ctl info failed right after boot"
tap=$(json_after info.json name "$vm" tap)
case "$tap" in
fv*) ;;
*) fail "the service names the VM's tap '$tap', expected fv..." ;;
esac
sample_taps "$serial" &
sampler_pid=$!
# Follows the log from the start until the VM stops, as an operator would.
form-vmm-ctl console "$vm" -f >follow.out 2>follow.err &
follow_pid=$!
# stuck WHY: what form-vmm was doing, then fails with WHY and L2's last line.
stuck() {
    touch sampler.stop
    vmm_pid=$(json_after info.json name "$vm" pid)
    echo "LAB-NOTE form-vmm (pid $vmm_pid) threads, state and utime+stime ticks:"
    for _s in /proc/"$vmm_pid"/task/*/stat; do
        [ -e "$_s" ] || continue
        # comm may hold blanks: the fields after its closing parenthesis.
        sed 's/^\([0-9]*\) (\(.*\)) \(.*\)$/\1 \2 \3/' "$_s" |
            awk '{ printf "LAB-NOTE   tid %s %s state %s cpu %d\n", $1, $2, $3, $14 + $15 }'
    done
    tail -n 40 "$vmm_log" 2>/dev/null | sed 's/^/LAB-NOTE vmm.log: /'
    tr -d '\r' <"$serial" | tail -n 20 | sed 's/^/LAB-NOTE serial: /'
    echo "LAB-NOTE tap samples: $(wc -l <taps.samples), last: $(tail -n1 taps.samples)"
    fail "$1 (state '$(vm_state)'; L2's last line: $(tr -d '\r' <"$serial" | grep . | tail -n1))"
}
deadline=$(awk -v a="$(lab_uptime)" 'BEGIN { print a + 150 }')
last_size=0
last_growth=$(lab_uptime)
until [ "$(vm_state)" = stopped ]; do
    now=$(lab_uptime)
    awk -v d="$deadline" -v n="$now" 'BEGIN { exit !(n > d) }' &&
        stuck "the VM did not stop within 150s of boot"
    size=$(wc -c <"$serial" 2>/dev/null)
    if [ "${size:-0}" != "$last_size" ]; then
        last_size=${size:-0}
        last_growth=$now
    elif awk -v g="$last_growth" -v n="$now" 'BEGIN { exit !(n - g > 45) }'; then
        stuck "L2 wrote nothing to its serial log for 45s"
    fi
    sleep 0.5
done
secs=$(lab_seconds_since "$start")
touch sampler.stop
wait "$sampler_pid"
tr -d '\r' <"$serial"
grep -E 'reboot|powered off|reset' "$vmm_log" 2>/dev/null | sed 's/^/LAB-NOTE vmm.log: /'

# The tap samples, summed up before any check can fail.
# Sample lines: UPTIME PHASE TAP IFINDEX MASTER, or UPTIME PHASE - absent. A sample
# without a master right before the tap is gone is the tap leaving at form-vmm's exit
# (the bridge lets go of a port before sysfs drops it), not a fault.
summary=$(awk -v tap="$tap" -v br="$bridge" '
    function flush_pending() {
        if (pending != "") { bad++; if (first_bad == "") first_bad = pending }
        pending = ""
    }
    $3 == "-" {
        if (pending != "") leaving++
        pending = ""
        if (seen) gone_after = $1
        next
    }
    {
        flush_pending()
        n++
        phase[$2]++
        if (!seen) { t0 = $1 }
        seen = 1; t1 = $1
        if ($3 != tap) { others++; if (other == "") other = $3 }
        if (!(($4) in idx)) { idx[$4] = 1; nidx++; idxs = idxs (idxs == "" ? "" : ",") $4 }
        if (gone_after != "") { back++; gone_after = "" }
        if ($5 != br) pending = $1 " phase " $2 " ifindex " $4 " master " $5
    }
    END {
        flush_pending()
        printf "samples=%d before=%d after=%d span=%.1f ifindexes=%s nidx=%d bad=%d leaving=%d back=%d others=%d other=%s first_bad=%s\n",
            n, phase[0] + 0, phase[1] + phase[2], t1 - t0, idxs, nidx, bad, leaving, back,
            others, other, (first_bad == "" ? "-" : first_bad)
    }' taps.samples)
# One field of the summary (first_bad, the last, runs to the end of the line).
val() { printf ' %s\n' "$summary" | sed -n "s/.* $1=\([^ ]*\).*/\1/p"; }
echo "LAB-NOTE tap $tap: $summary"
echo "LAB-NOTE first and last samples: $(head -n1 taps.samples) | $(tail -n1 taps.samples)"

step "L2 booted twice from the disk and shut down cleanly"
expect_l2_ok "$serial"
if grep -q '^L2-BOOT-FAIL' "$serial"; then
    fail "L2: $(tr -d '\r' <"$serial" | grep -m1 '^L2-BOOT-FAIL' | cut -d' ' -f2-)"
fi
boot1=$(l2_marker "$serial" 'L2-BOOT 1')
boot2=$(l2_marker "$serial" 'L2-BOOT 2')
[ -n "$boot1" ] || fail "no 'L2-BOOT 1' line in the serial log: the first boot did not get to its check"
[ -n "$boot2" ] || fail "no 'L2-BOOT 2' line in the serial log: the guest did not come back after its reset (first boot: '$boot1')"
roots=$(grep -c '^L2-ROOT-OK' "$serial")
[ "$roots" = 2 ] || fail "the serial log shows $roots boots from the root disk (L2-ROOT-OK), expected 2"
id1=${boot1##*boot_id=}
case "$boot2" in
*"boot_id=$id1 "*) fail "the second boot has the first boot's boot_id $id1: no real reboot" ;;
*" marker=$id1") ;;
*) fail "the second boot read marker '${boot2##*marker=}' from the disk, expected the first boot's id $id1" ;;
esac

step "the network: 3 ping replies from L1 on both boots"
case "$boot1" in
"ping 3/3 "*) ;;
*) fail "the first boot pinging L1 over $bridge: '$boot1', expected 3/3 replies" ;;
esac
case "$boot2" in
"ping 3/3 "*) ;;
*) fail "the second boot (after the reboot) pinging L1 over $bridge: '$boot2', expected 3/3 replies" ;;
esac

step "the tap: one ifindex, a port of $bridge in every sample while it existed"
[ "$(val samples)" -gt 0 ] || fail "the tap $tap was never seen while the VM ran"
[ "$(val others)" = 0 ] || fail "an fv* interface other than the VM's tap $tap appeared: $(val other)"
[ "$(val before)" -gt 0 ] || fail "no sample of $tap before the first boot's result: cannot tell the tap across the reboot"
[ "$(val after)" -gt 0 ] || fail "no sample of $tap after the first boot's result: cannot tell the tap across the reboot"
[ "$(val nidx)" = 1 ] ||
    fail "the tap $tap had $(val nidx) ifindexes ($(val ifindexes)) while the VM ran: it was recreated, not kept across the reboot"
[ "$(val back)" = 0 ] || fail "the tap $tap vanished and came back while the VM ran"
[ "$(val bad)" = 0 ] ||
    fail "the tap $tap was not a port of $bridge in $(val bad) samples (first: ${summary##*first_bad=})"
[ ! -e "/sys/class/net/$tap" ] || echo "LAB-NOTE $tap is still there after the VM stopped"

step "form-vmm exited 0; form-vmm-ctl console shows both boots"
vm_info || fail "form-vmm-ctl info failed after the VM stopped"
code=$(json_after info.json name "$vm" code)
reason=$(json_after info.json name "$vm" reason)
[ "$code" = 0 ] || fail "form-vmm's last exit: code '$code' ($reason), expected 0"
echo "LAB-NOTE last exit: code $code, $reason"
run_quiet console.out form-vmm-ctl console "$vm" || fail "form-vmm-ctl console exited with status $?"
for n in 1 2; do
    tr -d '\r' <console.out | grep -q "^L2-BOOT $n ping 3/3 " ||
        fail "form-vmm-ctl console $vm lacks the line 'L2-BOOT $n ping 3/3' (it shows $(grep -c '^L2-BOOT' console.out) L2-BOOT lines, $(wc -c <console.out) bytes)"
done
line1=$(tr -d '\r' <console.out | grep -n '^L2-BOOT 1 ' | cut -d: -f1)
line2=$(tr -d '\r' <console.out | grep -n '^L2-BOOT 2 ' | cut -d: -f1)
[ "$line1" -lt "$line2" ] || fail "form-vmm-ctl console shows the second boot (line $line2) before the first (line $line1)"
size=$(wc -c <"$serial")
if [ "$size" -le 65536 ]; then
    cmp -s console.out "$serial" ||
        fail "form-vmm-ctl console's $(wc -c <console.out) bytes differ from the serial log's $size"
fi

step "form-vmm-ctl console -f followed both boots and ended with the VM"
i=0
while kill -0 "$follow_pid" 2>/dev/null && [ $i -lt 50 ]; do
    sleep 0.1
    i=$((i + 1))
done
if kill -0 "$follow_pid" 2>/dev/null; then
    kill "$follow_pid"
    fail "form-vmm-ctl console -f still ran 5s after the VM stopped"
fi
wait "$follow_pid" || fail "form-vmm-ctl console -f exited with status $? ($(head -n1 follow.err))"
[ ! -s follow.err ] || fail "form-vmm-ctl console -f said: $(head -n1 follow.err)"
for n in 1 2; do
    tr -d '\r' <follow.out | grep -q "^L2-BOOT $n ping 3/3 " ||
        fail "form-vmm-ctl console -f printed no 'L2-BOOT $n ping 3/3' line"
done
cmp -s follow.out "$serial" ||
    fail "form-vmm-ctl console -f printed $(wc -c <follow.out) bytes, the serial log has $size"

step "delete"
run_logged delete.out form-vmm-ctl delete "$vm" || fail "delete exited with status $?"
kill "$service_pid"
bridge_delete "$bridge"
echo "LAB-TIMING service-reboot boot to stopped ${secs}s (two guest boots)"
