# shellcheck shell=bash
# Kernel modules for the lab's initramfs builders (build-l1-initramfs,
# build-l2-initramfs): finds the modules a list names in a lib/modules/<version> tree,
# adds everything their depends= entries name, and writes them uncompressed with a
# load-order file that the lab's /init scripts feed to insmod. Sourced, not run; bash.
#
#   modules_install MODDIR LIST DESTDIR
#
# LIST has one "name [params]" per line, '#' comments; DESTDIR gets <name>.ko for each
# module and dependency and "load-order" ("name params" lines, dependencies first).
# Calls `die` (the sourcing script's) on a missing module or a dependency cycle.

# Writes a module's uncompressed contents to stdout.
module_contents() {
    case "$1" in
    *.ko.xz) xz -dc "$1" ;;
    *.ko.zst) zstd -qdc "$1" ;;
    *.ko.gz) gzip -dc "$1" ;;
    *) cat "$1" ;;
    esac
}

# The modules that $1 (a path) needs loaded first, from the depends= entry of its
# .modinfo section (what `modinfo -F depends` prints), comma-separated.
module_depends() {
    module_contents "$1" | tr '\0' '\n' | sed -n 's/^depends=//p' | head -n1
}

modules_install() {
    local moddir="$1" list="$2" dest="$3" name params line f base
    [ -d "$moddir/kernel" ] || die "$moddir/kernel is missing; is it a lib/modules/<version> tree?"
    # Module names in depends= strings and on file names mix '-' and '_'; the kernel
    # treats them as the same, so the index is keyed by the '_' spelling.
    declare -A module_path=() module_params=() module_state=()
    local load_order=()
    while IFS= read -r -d '' f; do
        base="${f##*/}"
        base="${base%%.ko*}"
        module_path["${base//-/_}"]="$f"
    done < <(find "$moddir/kernel" -name '*.ko' -print0 -o -name '*.ko.xz' -print0 \
        -o -name '*.ko.zst' -print0 -o -name '*.ko.gz' -print0)

    # Depth-first topological sort; module_state is "visiting" or "done".
    add_module() {
        local name="${1//-/_}" path dep deps
        case "${module_state[$name]:-}" in
        done) return 0 ;;
        visiting) die "module dependency cycle through $name" ;;
        esac
        path="${module_path[$name]:-}"
        [ -n "$path" ] || die "module $name is not in $moddir (built in? then drop it from $list)"
        module_state[$name]=visiting
        deps=$(module_depends "$path")
        for dep in ${deps//,/ }; do add_module "$dep"; done
        module_state[$name]="done"
        load_order+=("$name")
    }

    while read -r line; do
        line="${line%%#*}"
        [ -n "${line// /}" ] || continue
        read -r name params <<<"$line"
        module_params["${name//-/_}"]="$params"
        add_module "$name"
    done <"$list"
    mkdir -p "$dest"
    : >"$dest/load-order"
    for name in "${load_order[@]}"; do
        module_contents "${module_path[$name]}" >"$dest/$name.ko"
        echo "$name ${module_params[$name]:-}" >>"$dest/load-order"
    done
}
