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
