# shellcheck shell=bash
# Shared helpers for the host-side lab scripts (scripts/vfio-lab, scripts/fetch-kernels).
# Sourced, not run. Bash only.

# Everything fetched or built for the lab lives here, outside the source tree, so that
# a second run starts at once and `git clean` never throws it away.
LAB_CACHE="${FORM_VMM_CACHE:-${XDG_CACHE_HOME:-${HOME:?set HOME or FORM_VMM_CACHE}/.cache}/form-vmm}"

lab_say() { printf 'lab: %s\n' "$*" >&2; }

lab_die() {
    printf 'lab: error: %s\n' "$*" >&2
    exit 2
}

# Runs "$@" while holding an exclusive lock on the cache, so that two lab runs started
# together (two `cargo test`s) do not download or unpack into the same place at once.
lab_with_cache_lock() {
    mkdir -p "$LAB_CACHE"
    (
        flock 9
        "$@"
    ) 9>"$LAB_CACHE/.lock"
}

lab_package_installed() {
    [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" = "install ok installed" ]
}

# Installs the Debian packages among "$@" that are missing. Needs root (apt-get); when
# not root, says what to install and exits 3.
lab_ensure_packages() {
    local missing=() pkg
    for pkg in "$@"; do
        lab_package_installed "$pkg" || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" -ne 0 ]; then
        # A distinct status, so that vmm/tests/vfio_lab.rs can tell "this machine cannot
        # run the lab" (a skip outside CI) from "the lab failed".
        printf 'lab: error: missing packages: %s; install them (apt-get install %s) or run as root\n' \
            "${missing[*]}" "${missing[*]}" >&2
        exit 3
    fi
    lab_say "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; then
        apt-get update -qq || lab_die "apt-get update failed"
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null ||
            lab_die "apt-get install ${missing[*]} failed"
    fi
}

# Uptime-free wall clock with centiseconds, for the timings the lab reports.
lab_now() { date +%s.%N | cut -c1-14; }

lab_elapsed() { awk -v a="$1" -v b="$(lab_now)" 'BEGIN { printf "%.1f", b - a }'; }
