# Helpers for lab scenarios, inside the L1 host (busybox sh). /init sources this, and
# every scenario runs with it already sourced (it is /lab/lib.sh in the initramfs).
#
# A scenario reports progress with `step`, gives up with `fail`, and passes by ending
# with status 0. The runner turns these into the serial-log markers that
# scripts/vfio-lab reads:
#   LAB-BEGIN <name>
#   LAB-STEP <name> <what it is doing now>
#   LAB-RESULT <name> PASS <seconds>
#   LAB-RESULT <name> FAIL <reason> [step: <last step>]

LAB_RUN=/run/lab

# Seconds since L1 booted, with hundredths. TCG keeps guest time in step with the host's
# clock, so differences are wall-clock seconds.
lab_uptime() {
    read -r _up _ </proc/uptime
    echo "$_up"
}

lab_seconds_since() { awk -v a="$1" -v b="$(lab_uptime)" 'BEGIN { printf "%.1f", b - a }'; }

step() {
    echo "$*" >"$LAB_RUN/step"
    echo "LAB-STEP $LAB_SCENARIO $*"
}

fail() {
    echo "$*" >"$LAB_RUN/reason"
    exit 1
}

# The driver a PCI device is bound to, or "none".
pci_driver() {
    if [ -e "/sys/bus/pci/devices/$1/driver" ]; then
        basename "$(readlink "/sys/bus/pci/devices/$1/driver")"
    else
        echo none
    fi
}

# The IOMMU group number of a PCI device, or nothing.
pci_group() {
    [ -e "/sys/bus/pci/devices/$1/iommu_group" ] &&
        basename "$(readlink "/sys/bus/pci/devices/$1/iommu_group")"
}

# The number of entries in a directory (0 if it is empty or missing).
count_entries() {
    set -- "$1"/*
    if [ -e "$1" ]; then echo $#; else echo 0; fi
}

# The names of the entries in a directory, on one line.
list_entries() {
    for _e in "$1"/*; do
        [ -e "$_e" ] && printf '%s ' "${_e##*/}"
    done
    echo
}

expect_driver() {
    _have=$(pci_driver "$1")
    [ "$_have" = "$2" ] || fail "$1 is on driver '$_have', expected '$2'"
}

expect_file() {
    [ -e "$1" ] || fail "${2:-$1} is missing ($1)"
}

service_up() { form-vmm-ctl gpu list >/dev/null 2>&1; }

# vm_field VM FIELD: a field of `form-vmm-ctl --json info VM` (state, pid, serial_log).
vm_field() {
    form-vmm-ctl --json info "$1" >"$LAB_TMP/vm-field.json" 2>&1 || return 1
    json_after "$LAB_TMP/vm-field.json" name "$1" "$2"
}

# gpu_owner BDF: sets GPU_OWNER to the VM that `form-vmm-ctl gpu list` says holds BDF
# (empty: none). Not for $(...): its fail would end only the subshell.
gpu_owner() {
    form-vmm-ctl --json gpu list >"$LAB_TMP/gpu-owner.json" 2>&1 ||
        fail "gpu list failed: $(cat "$LAB_TMP/gpu-owner.json")"
    GPU_OWNER=$(json_after "$LAB_TMP/gpu-owner.json" bdf "$1" owner)
    [ "$GPU_OWNER" = null ] && GPU_OWNER=
    return 0
}

# expect_gpu_owner BDF VM: fails unless `gpu list` says VM holds BDF ("" for no VM).
expect_gpu_owner() {
    gpu_owner "$1"
    [ "$GPU_OWNER" = "$2" ] || fail "gpu list says $1 belongs to '${GPU_OWNER}', not '${2}'"
}

# wait_for_vm_output SECONDS VM PATTERN: waits for PATTERN (grep -E) in the serial
# log of VM, a VM of the service, while its VMM runs.
wait_for_vm_output() {
    _pid=$(vm_field "$2" pid) || fail "cannot read VM $2: $(cat "$LAB_TMP/vm-field.json")"
    _serial=$(vm_field "$2" serial_log)
    wait_for_output "$1" "$_pid" "$_serial" "$3"
}
# no_reset_allowances: "--allow-no-reset BDF" for every L1 device the kernel cannot
# reset (no reset_method, no reset file). QEMU's emulated devices on the root bus
# have neither FLR nor a bus to reset; the lab's operator allows them by name, as a
# real one would a known device, and the service's own reset check stays on.
no_reset_allowances() {
    for _dev in /sys/bus/pci/devices/*; do
        [ -e "$_dev/reset_method" ] || [ -e "$_dev/reset" ] || echo "--allow-no-reset ${_dev##*/}"
    done
}

# --- form-vmm without root (issue 11) -------------------------------------------------
#
# Every form-vmm in the lab gives up root once its VM is built. The service gives each
# VM's VMM its own uid from LAB_VMM_UIDS; a scenario that runs form-vmm itself passes
# $LAB_VMM_DROP (uid 65534). Their gid is LAB_KVM_GID, the group /dev/kvm is given
# (kvm_open_to_vmm_group), as a distribution's udev rule gives it the kvm group: a
# reboot rebuilds the VM and reopens /dev/kvm without root. A scenario that hotplugs
# into a form-vmm it runs itself hands it the group first (vfio_group_to_vmm), as the
# service does: form-vmm opens /dev/vfio/N after it gave up root.
LAB_VMM_UIDS=100000-100999
LAB_VMM_UID=65534
LAB_KVM_GID=36
# With its own mount namespace too, as the service starts every form-vmm.
LAB_VMM_DROP="--uid $LAB_VMM_UID --gid $LAB_KVM_GID --mount-ns"

# kvm_open_to_vmm_group: /dev/kvm to root:$LAB_KVM_GID, mode 0660 (devtmpfs makes it
# root's 0600). Returns non-zero when /dev/kvm is missing or cannot be changed.
kvm_open_to_vmm_group() {
    [ -e /dev/kvm ] && chown "0:$LAB_KVM_GID" /dev/kvm && chmod 0660 /dev/kvm
}

# vfio_group_to_vmm BDF: /dev/vfio/N of BDF's IOMMU group to $LAB_VMM_UID, so that a
# form-vmm run with $LAB_VMM_DROP can open it for vm.add-device.
vfio_group_to_vmm() {
    _group=$(pci_group "$1")
    [ -n "$_group" ] || fail "$1 has no IOMMU group"
    chown "$LAB_VMM_UID:$LAB_KVM_GID" "/dev/vfio/$_group" ||
        fail "cannot give /dev/vfio/$_group to uid $LAB_VMM_UID"
}

# expect_vmm_confined PID [UID]: every thread of form-vmm PID runs as a uid other
# than root (UID, when given) in all four Uid fields, with no effective capabilities,
# under a seccomp filter (mode 2). Prints each thread's lines first, for the log.
expect_vmm_confined() {
    _pid=$1
    grep -E '^(Uid|CapEff|Seccomp):' /proc/"$_pid"/task/*/status ||
        fail "cannot read the threads of form-vmm $_pid"
    _seen=0
    for _task in /proc/"$_pid"/task/*; do
        # A thread that ended since the glob has no status to check.
        _status=$(cat "$_task/status" 2>/dev/null) || continue
        _name=$(echo "$_status" | sed -n 's/^Name:[[:space:]]*//p')
        _uids=$(echo "$_status" | sed -n 's/^Uid:[[:space:]]*//p')
        _capeff=$(echo "$_status" | sed -n 's/^CapEff:[[:space:]]*//p')
        _seccomp=$(echo "$_status" | sed -n 's/^Seccomp:[[:space:]]*//p')
        for _u in $_uids; do
            [ "$_u" != 0 ] || fail "form-vmm $_pid thread $_name still runs as root (Uid: $_uids)"
            [ -z "$2" ] || [ "$_u" = "$2" ] ||
                fail "form-vmm $_pid thread $_name runs as uid $_u, not $2 (Uid: $_uids)"
        done
        [ -n "$_uids" ] || fail "form-vmm $_pid thread $_name has no Uid line"
        [ "$_capeff" = 0000000000000000 ] ||
            fail "form-vmm $_pid thread $_name kept capabilities (CapEff: $_capeff)"
        [ "$_seccomp" = 2 ] || fail "form-vmm $_pid thread $_name is not filtered (Seccomp: $_seccomp)"
        _seen=$((_seen + 1))
    done
    [ "$_seen" -gt 0 ] || fail "form-vmm $_pid has no threads to check"
}

# expect_vmm_cgroup PID NAME MEMORY_BYTES: form-vmm PID is in the service's cgroup for
# VM NAME, /vms/NAME, whose memory.max is the guest's RAM plus the overhead the
# service allows (64 MiB and 2 %, in whole pages: vmm-service/src/cgroups.rs) and whose
# pids.max is set.
expect_vmm_cgroup() {
    _cgroup=$(sed -n 's/^0:://p' "/proc/$1/cgroup")
    [ "$_cgroup" = "/vms/$2" ] || fail "form-vmm $1 is in cgroup '$_cgroup', not /vms/$2"
    _dir=/sys/fs/cgroup/vms/$2
    _want=$((($3 + (64 << 20) + $3 / 50 + 4095) / 4096 * 4096))
    [ "$(cat "$_dir/memory.max")" = "$_want" ] ||
        fail "$_dir/memory.max is $(cat "$_dir/memory.max"), not $_want"
    _pids=$(cat "$_dir/pids.max")
    [ -n "$_pids" ] && [ "$_pids" != max ] || fail "$_dir/pids.max is '$_pids', not a limit"
    echo "LAB-NOTE form-vmm $1 in $_cgroup: memory.max $_want, pids.max $_pids"
}

# note_vmm_cgroup_peak NAME: the most memory VM NAME's VMM cgroup was charged
# (memory.peak) against its memory.max, for the log: the overhead allowance measured.
note_vmm_cgroup_peak() {
    _dir=/sys/fs/cgroup/vms/$1
    [ -r "$_dir/memory.peak" ] || return 0
    echo "LAB-NOTE cgroup of VM $1: memory.peak $(cat "$_dir/memory.peak") of memory.max $(cat "$_dir/memory.max")"
}

# expect_vmm_mount_ns PID: form-vmm PID has a mount namespace of its own, which shows
# /dev/kvm but not L1's /bin.
expect_vmm_mount_ns() {
    [ "$(readlink "/proc/$1/ns/mnt")" != "$(readlink /proc/self/ns/mnt)" ] ||
        fail "form-vmm $1 shares L1's mount namespace"
    [ -e "/proc/$1/root/dev/kvm" ] || fail "form-vmm $1 does not see /dev/kvm"
    [ ! -e "/proc/$1/root/bin/busybox" ] || fail "form-vmm $1 sees L1's /bin/busybox"
}

# expect_vmm_sandbox SOCKET UID: form-vmm answering on SOCKET says (vmm.ping) it runs
# as UID with seccomp killing, Landlock enforced (L1's 6.1 kernel: an older ABI than
# form-vmm's rules, "partial") and a mount namespace of its own.
expect_vmm_sandbox() {
    vmm_api "$1" GET vmm.ping >ping.json || fail "vmm.ping on $1 failed: $(cat ping.json)"
    grep -q "\"sandbox\":{\"seccomp\":\"kill\",\"landlock\":\"\(enforced\|partial\)\",\"mount_ns\":true,\"uid\":$2}" ping.json ||
        fail "form-vmm on $1 is not sandboxed as expected (uid $2): $(cat ping.json)"
}

# vmm_uid PID: the real uid of process PID.
vmm_uid() { sed -n 's/^Uid:[[:space:]]*\([0-9]*\).*/\1/p' "/proc/$1/status"; }

# file_owner PATH: the numeric uid owning PATH.
file_owner() { ls -ldn "$1" | awk '{ print $3 }'; }

# service_start [ARGS...]: starts `vmm-service serve` on $LAB_TMP/service.sock with its
# state and run directories under $LAB_TMP (its output appended to ./service.log) and
# ARGS, sets service_pid and FORM_VMM_SOCKET (for form-vmm-ctl), and waits until it
# answers. Each VM's form-vmm runs as its own uid of LAB_VMM_UIDS once the VM is built.
service_start() {
    FORM_VMM_SOCKET=$LAB_TMP/service.sock
    export FORM_VMM_SOCKET
    kvm_open_to_vmm_group || fail "cannot give /dev/kvm to group $LAB_KVM_GID (is kvm loaded?)"
    # shellcheck disable=SC2046 # one flag and one BDF per word
    # Kernels, initramfs and disks come from the lab's files and the scenario's
    # scratch directory; the service refuses any other host path.
    vmm-service serve --listen "unix:$FORM_VMM_SOCKET" --state-dir "$LAB_TMP/state" \
        --run-dir "$LAB_TMP/run" --image-dir /lab --image-dir "$LAB_TMP" \
        --vmm-uid-range "$LAB_VMM_UIDS" --vmm-gid "$LAB_KVM_GID" \
        $(no_reset_allowances) "$@" >>service.log 2>&1 &
    service_pid=$!
    wait_until 10 service_up
}

# wait_until SECONDS COMMAND...: polls COMMAND every 0.1 s until it succeeds; fails the
# scenario after SECONDS.
wait_until() {
    _limit=$1
    shift
    _deadline=$(awk -v a="$(lab_uptime)" -v l="$_limit" 'BEGIN { print a + l }')
    until "$@"; do
        if awk -v d="$_deadline" -v n="$(lab_uptime)" 'BEGIN { exit !(n > d) }'; then
            fail "waited ${_limit}s for: $*"
        fi
        sleep 0.1
    done
}

# timed_start MARKER COMMAND...: runs COMMAND (a VMM) with its output in out.txt and
# err.txt, and sets timed_first and timed_exit to the seconds (/proc/uptime, 10 ms
# steps) from its start to the first byte of its output (the guest's serial) and to
# its exit. Returns 1 with timed_error set unless it exited 0 with MARKER in its output.
timed_start() {
    _marker=$1
    shift
    rm -f out.txt
    : >out.txt
    _start=$(lab_uptime)
    "$@" >out.txt 2>err.txt &
    _pid=$!
    timed_first=""
    while kill -0 "$_pid" 2>/dev/null; do
        if [ -z "$timed_first" ] && [ -s out.txt ]; then
            timed_first=$(lab_seconds_since "$_start")
        fi
        sleep 0.02
    done
    wait "$_pid"
    _status=$?
    timed_exit=$(lab_seconds_since "$_start")
    [ -n "$timed_first" ] || timed_first=$timed_exit
    if [ "$_status" != 0 ] || ! grep -q "$_marker" out.txt; then
        tail -n 5 out.txt err.txt
        timed_error="exit status $_status, no '$_marker' in its output"
        return 1
    fi
}

# run_logged FILE COMMAND...: runs COMMAND with its output both on the console (so the
# L1 log shows it) and in FILE (so the scenario can check it); returns its status.
run_logged() {
    _log=$1
    shift
    rm -f "$_log.status"
    { "$@" 2>&1; echo $? >"$_log.status"; } | tee "$_log"
    read -r _status <"$_log.status"
    return "$_status"
}

# run_quiet FILE COMMAND...: like run_logged, for commands whose output is long (JSON
# listings): it goes only to FILE, and to the console too only if COMMAND fails.
run_quiet() {
    _log=$1
    shift
    "$@" >"$_log" 2>&1 && return 0
    _status=$?
    tail -n 20 "$_log"
    return $_status
}

# json_after FILE KEY VALUE FIELD: the value of the first "FIELD" that follows
# "KEY": "VALUE" in a JSON file, unquoted ("null" for null). Busybox has no JSON parser;
# this reads an object's own scalar fields, which is what the scenarios check (e.g.
# `json_after list.json bdf 0000:00:01.0 driver`). Works on pretty or compact JSON.
json_after() {
    # shellcheck disable=SC2020 # five separators, each to a newline
    tr ',{}[]' '\n\n\n\n\n' <"$1" | awk -v key="\"$2\":" -v val="\"$3\"" -v field="\"$4\":" '
        !on { i = index($0, key); if (i && index(substr($0, i), val)) on = 1; next }
        index($0, field) { sub(/^[^:]*: */, ""); gsub(/"/, ""); sub(/ *$/, ""); print; exit }'
}

# expect_output FILE PATTERN [WHAT]: fails unless a line of FILE matches PATTERN (grep -E).
expect_output() {
    grep -qE "$2" "$1" || fail "${3:-output} lacks '$2'"
}

# --- form-vmm's own API and VFIO binding, for the VFIO scenarios ---------------------

# vmm_api SOCKET METHOD ENDPOINT [JSON]: one request to form-vmm's HTTP API on its unix
# socket (socat, copied into L1 by scripts/vfio-lab). Prints the response body; returns
# 0 for a 2xx status, 1 otherwise (the status line goes to stderr then).
vmm_api() {
    _body=${4:-}
    command -v socat >/dev/null ||
        fail "socat is not on L1's PATH (scripts/vfio-lab copies it to /lab/bin)"
    printf '%s /api/v1/%s HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: %s\r\n\r\n%s' \
        "$2" "$3" "${#_body}" "$_body" |
        socat -t 10 - "UNIX-CONNECT:$1" >"$LAB_TMP/.api-response" 2>&1
    _rc=$?
    if [ "$_rc" = 126 ] || [ "$_rc" = 127 ]; then
        # Seen once: socat "not found" although it was copied; say what L1 has.
        ls -l "$(command -v socat)" /lib64/ld-linux-x86-64.so.2 >&2
        fail "socat cannot run in L1 (status $_rc): $(head -n1 "$LAB_TMP/.api-response")"
    fi
    _status=$(head -n1 "$LAB_TMP/.api-response" | tr -d '\r')
    # The body: everything after the first empty line.
    tr -d '\r' <"$LAB_TMP/.api-response" | awk 'body { print } /^$/ { body = 1 }'
    case "$_status" in
    "HTTP/1."?" 2"*) return 0 ;;
    *)
        echo "vmm_api $2 $3: ${_status:-no response}" >&2
        return 1
        ;;
    esac
}

# vmm_api_ready PATH: whether PATH is a socket where form-vmm answers vmm.ping.
vmm_api_ready() { [ -S "$1" ] && vmm_api "$1" GET vmm.ping >/dev/null 2>&1; }

# json_number FILE OBJECT FIELD: the number FIELD inside the JSON object named OBJECT
# (e.g. a device id in vm.counters), or nothing.
json_number() {
    tr -d ' \n' <"$1" | sed -n "s/.*\"$2\":{\\([^}]*\\)}.*/\\1/p" | tr ',' '\n' |
        sed -n "s/^\"$3\":\\([0-9][0-9]*\\)\$/\\1/p"
}

# vfio_bind BDF: puts a non-GPU device on vfio-pci through sysfs (vmm-service binds only
# GPUs), and waits for its VFIO group node.
vfio_bind() {
    _dev=/sys/bus/pci/devices/$1
    echo vfio-pci >"$_dev/driver_override"
    [ -e "$_dev/driver" ] && echo "$1" >"$_dev/driver/unbind"
    echo "$1" >/sys/bus/pci/drivers_probe
    expect_driver "$1" vfio-pci
    wait_until 5 test -e "/dev/vfio/$(pci_group "$1")"
}

# vfio_unbind BDF: takes a device off vfio-pci and lets its native driver (if any) probe.
vfio_unbind() {
    _dev=/sys/bus/pci/devices/$1
    echo >"$_dev/driver_override"
    [ -e "$_dev/driver" ] && echo "$1" >"$_dev/driver/unbind"
    echo "$1" >/sys/bus/pci/drivers_probe
    [ "$(pci_driver "$1")" != vfio-pci ] || fail "$1 is still on vfio-pci after unbind"
}

# expect_guest_pass FILE: the test guest's output in FILE has its PASS line and no FAIL.
expect_guest_pass() {
    if grep -q '^form-test-guest: FAIL' "$1"; then
        fail "the test guest says: $(grep -m1 '^form-test-guest: FAIL' "$1" | cut -d' ' -f3-)"
    fi
    expect_output "$1" '^form-test-guest: PASS' "the test guest's output"
}

# wait_for_output SECONDS PID FILE PATTERN: waits until a line of FILE matches PATTERN
# (grep -E) while process PID (form-vmm, started in the background with its output in
# FILE) runs; fails at once, with the end of FILE, when PID exits first.
wait_for_output() {
    _deadline=$(awk -v a="$(lab_uptime)" -v l="$1" 'BEGIN { print a + l }')
    until grep -qE "$4" "$3"; do
        if ! kill -0 "$2" 2>/dev/null; then
            grep -qE "$4" "$3" && return 0
            tail -n 15 "$3"
            if grep -q '^form-test-guest: FAIL' "$3"; then
                fail "the test guest says: $(grep -m1 '^form-test-guest: FAIL' "$3" | cut -d' ' -f3-)"
            fi
            fail "form-vmm exited before its output showed '$4'"
        fi
        if awk -v d="$_deadline" -v n="$(lab_uptime)" 'BEGIN { exit !(n > d) }'; then
            tail -n 15 "$3"
            fail "waited ${1}s for '$4' in $3"
        fi
        sleep 0.1
    done
}

# open_fds PID: how many file descriptors PID holds.
open_fds() { count_entries "/proc/$1/fd"; }

# l2_initramfs_with OUT CHECK_SCRIPT: the L2 initramfs plus, appended as a second
# archive, CHECK_SCRIPT as /l2-check.sh (which scripts/lab/l2-init runs before powering
# off) and L1's own display modules (bochs and the DRM modules before it in L1's load
# order) under /lib/modules/lab: L2 runs the same kernel, so L1's modules fit it.
l2_initramfs_with() {
    l2_initramfs_append "$1" "$LAB_L2_INITRAMFS" "$2" display
}

# l2_virtio_initramfs OUT CHECK_SCRIPT [display]: the virtio L2 initramfs (virtio,
# ext4 and vfat modules; boots from the disk named by lab.root= on the kernel command
# line) plus CHECK_SCRIPT, which the root disk's init runs as /run/lab/check.sh before
# powering off; with "display", L1's display modules too, which l2-init loads before
# switching to the root disk.
l2_virtio_initramfs() {
    l2_initramfs_append "$1" "$LAB_L2_VIRTIO_INITRAMFS" "$2" "${3:-}"
}

# l2_numa_check [LINGER]: prints an L2 check script (for l2_initramfs_with) that loads
# the display modules and reports L2's NUMA shape: L2-NODE <n> cpus=<list> mem_kb=<kB>
# per node, L2-PCI <bdf> <vendor:device> numa_node=<n> <driver> per PCI function, then
# L2-NUMA-DONE, and stays up LINGER seconds more (default 0) for L1's own checks.
l2_numa_check() {
    echo "#!/bin/sh"
    echo "linger=${1:-0}"
    cat <<'CHECK'
busybox --install -s /bin
while read -r name _; do
    insmod "/lib/modules/lab/$name.ko" || echo "L2-MODULE-FAIL $name"
done </lib/modules/lab/load-order
for node in /sys/devices/system/node/node*; do
    echo "L2-NODE ${node##*node} cpus=$(cat "$node/cpulist") mem_kb=$(awk '/MemTotal/ { print $4 }' "$node/meminfo")"
done
for dev in /sys/bus/pci/devices/*; do
    ids="$(cat "$dev/vendor"):$(cat "$dev/device")"
    drv=none
    [ -e "$dev/driver" ] && drv=$(basename "$(readlink "$dev/driver")")
    echo "L2-PCI ${dev##*/} $ids numa_node=$(cat "$dev/numa_node") $drv"
done
echo "L2-NUMA-DONE"
sleep "$linger"
CHECK
}

# expect_l2_numa FILE: the L2-NODE lines in FILE name nodes 0 and 1 (and no third), each
# with about 256 MiB (the kernel keeps some for itself).
expect_l2_numa() {
    for _node in 0 1; do
        _line=$(grep -m1 "^L2-NODE $_node " "$1") || fail "L2 has no NUMA node $_node"
        _kb=${_line##*mem_kb=}
        [ "$_kb" -gt $((200 << 10)) ] && [ "$_kb" -le $((256 << 10)) ] ||
            fail "L2 node $_node has $_kb kB, not about 256 MiB: $_line"
        echo "lab: $_line"
    done
    ! grep -q "^L2-NODE 2 " "$1" || fail "L2 has a third node"
}

# expect_numa_bound PID: form-vmm PID's guest RAM is two mappings bound to L1's nodes 0
# and 1 (numa_maps shows bind:0 and bind:1).
expect_numa_bound() {
    _binds=$(grep -oE ' bind:[0-9]+' "/proc/$1/numa_maps" | sort | tr -d ' ' | tr '\n' ' ')
    echo "lab: form-vmm numa_maps policies: $_binds"
    case "$_binds" in *bind:0*bind:1*) ;; *) fail "form-vmm's RAM is not bound to nodes 0 and 1: $_binds" ;; esac
}

# l2_gpu_hotplug_check [LINGER]: prints an L2 check script that waits for a 1234:1111
# display device to be hotplugged (L2-HOTPLUG-READY, L2-GPU-ADDED, then L2-GPU-BOUND
# once bochs-drm binds it, L2-FB0), then for it to go (L2-GPU-REMOVED), each failure as
# its own marker (L2-GPU-NEVER-ADDED, -NOT-BOUND, -NEVER-REMOVED), and keeps L2 up
# LINGER seconds more (default 3) for L1's checks. For l2_initramfs_with.
l2_gpu_hotplug_check() {
    echo "#!/bin/sh"
    echo "linger=${1:-3}"
    cat <<'CHECK'
busybox --install -s /bin
while read -r name _; do
    insmod "/lib/modules/lab/$name.ko" || echo "L2-MODULE-FAIL $name"
done </lib/modules/lab/load-order
find_gpu() {
    for dev in /sys/bus/pci/devices/*; do
        [ "$(cat "$dev/vendor" 2>/dev/null):$(cat "$dev/device" 2>/dev/null)" = 0x1234:0x1111 ] &&
            echo "${dev##*/}"
    done
}
# wait_for TENTHS COMMAND...: polls COMMAND every 0.1 s.
wait_for() {
    n=$1
    shift
    until "$@"; do
        n=$((n - 1))
        [ $n -gt 0 ] || return 1
        sleep 0.1
    done
}
gpu_present() { [ -n "$(find_gpu)" ]; }
gpu_absent() { [ -z "$(find_gpu)" ]; }
gpu_bound() { [ "$(basename "$(readlink "/sys/bus/pci/devices/$bdf/driver" 2>/dev/null)")" = bochs-drm ]; }
echo "L2-HOTPLUG-READY $(find_gpu | wc -l) GPUs"
wait_for 1200 gpu_present || { echo "L2-GPU-NEVER-ADDED"; exit 0; }
bdf=$(find_gpu)
echo "L2-GPU-ADDED $bdf"
wait_for 300 gpu_bound || { echo "L2-GPU-NOT-BOUND $bdf"; exit 0; }
echo "L2-GPU-BOUND $bdf"
if wait_for 50 test -e /dev/fb0; then echo "L2-FB0"; else echo "L2-NO-FB0"; fi
wait_for 1200 gpu_absent || { echo "L2-GPU-NEVER-REMOVED $bdf"; exit 0; }
echo "L2-GPU-REMOVED $bdf"
# Keeps the VM up while L1 checks what it needs to.
sleep "$linger"
CHECK
}

# l2_initramfs_append OUT BASE CHECK_SCRIPT [display]: BASE plus a second archive with
# CHECK_SCRIPT as /l2-check.sh and, with "display", L1's display modules.
l2_initramfs_append() {
    _extra=$LAB_TMP/l2-extra
    rm -rf "$_extra"
    mkdir -p "$_extra"
    if [ "${4:-}" = display ]; then
        mkdir -p "$_extra/lib/modules/lab"
        awk '{ print $1 } $1 == "bochs" { exit }' /lib/modules/lab/load-order >"$_extra/lib/modules/lab/load-order"
        while read -r _m; do
            cp "/lib/modules/lab/$_m.ko" "$_extra/lib/modules/lab/" || fail "module $_m is not in L1"
        done <"$_extra/lib/modules/lab/load-order"
    fi
    cp "$3" "$_extra/l2-check.sh"
    chmod 0755 "$_extra/l2-check.sh"
    expect_file "$2" "the L2 initramfs"
    cp "$2" "$1"
    (cd "$_extra" && find . | cpio -o -H newc 2>/dev/null | gzip -c) >>"$1" ||
        fail "cannot build the L2 initramfs"
}

# --- the virtio scenarios ----------------------------------------------------------

# l1_load_ondemand: loads the modules of scripts/lab/l1-modules-ondemand (tun, bridge,
# loop, ext4) that are not loaded yet; fails the scenario naming any that will not.
l1_load_ondemand() {
    while read -r _name _params; do
        [ -d "/sys/module/$_name" ] && continue
        # shellcheck disable=SC2086 # params is a list of key=value words
        _out=$(insmod "/lib/modules/lab-ondemand/$_name.ko" $_params 2>&1) ||
            fail "cannot load module $_name: $_out"
    done </lib/modules/lab-ondemand/load-order
}

# l2_root_disk IMG: a fresh, writable copy of the L2 root disk (ext4, label l2root)
# at IMG.
l2_root_disk() {
    expect_file "$LAB_L2_ROOTFS" "the L2 root disk image"
    cp "$LAB_L2_ROOTFS" "$1" || fail "cannot copy the L2 root disk to $1"
}

# mount_image IMG DIR: mounts an ext4 image read-only through a loop device (to read
# what an L2 guest wrote after it powered off).
mount_image() {
    mkdir -p "$2"
    mount -t ext4 -o loop,ro "$1" "$2" ||
        fail "cannot mount $1 (ext4, loop): $(dmesg | grep -iE 'ext4|loop' | tail -n 2 | tr '\n' ' ')"
}

# umount_image DIR: unmounts DIR and frees its loop device.
umount_image() { umount "$1" || fail "cannot unmount $1"; }

# net_up NAME ADDR/PREFIX: gives L1's interface NAME an address and brings it up.
net_up() {
    ip addr add "$2" dev "$1" || fail "cannot add $2 to $1"
    ip link set "$1" up || fail "cannot bring $1 up"
}

# bridge_create NAME: a Linux bridge in L1 (busybox ip, else brctl), up, no address.
bridge_create() {
    ip link add "$1" type bridge 2>/dev/null || brctl addbr "$1" ||
        fail "cannot create bridge $1 (is the bridge module loaded?)"
    ip link set "$1" up || fail "cannot bring bridge $1 up"
}

# bridge_delete NAME: removes a bridge made by bridge_create.
bridge_delete() {
    ip link set "$1" down 2>/dev/null
    ip link del "$1" 2>/dev/null || brctl delbr "$1" || fail "cannot delete bridge $1"
}

# bridge_ports NAME: the interfaces attached to bridge NAME, on one line.
bridge_ports() { list_entries "/sys/class/net/$1/brif"; }

# l2_marker FILE MARKER: the rest of the last line of L2's output in FILE that starts
# with MARKER (e.g. `l2_marker vmm.out L2-NET`), or nothing.
l2_marker() {
    tr -d '\r' <"$1" | sed -n "s/^$2 //p" | tail -n1
}

# expect_l2_ok FILE: L2 reached its root disk's init and shut down cleanly, with no
# module or root failures on the way.
expect_l2_ok() {
    if grep -q L2-MODULE-FAIL "$1"; then
        fail "L2 could not load a module: $(grep -m1 L2-MODULE-FAIL "$1")"
    fi
    if grep -q L2-ROOT-FAIL "$1"; then
        fail "L2 could not boot from its disk: $(grep -m1 L2-ROOT-FAIL "$1" | cut -d' ' -f2-)"
    fi
    expect_output "$1" '^L2-USERSPACE-OK' "L2's output (the initramfs)"
    expect_output "$1" '^L2-ROOT-OK dev=/dev/vda fstype=ext4 options=rw' \
        "L2's output (init on the root disk, mounted read-write)"
    expect_output "$1" '^L2-ROOT-DONE' "L2's output (clean shutdown of the root disk)"
}
