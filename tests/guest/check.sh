#!/usr/bin/env bash
# Regression check of the test guest on its own: builds it (scripts/test-guest)
# and harness/kvm-harness.c, then boots the guest once per case below and
# matches its serial output. Cases cover every scenario and the error paths:
# broken checksums, missing tables, bad pointers, bad command lines.
#
# Needs /dev/kvm and gcc. Without /dev/kvm it skips (exit 0) with a reason,
# unless CI=true, where it fails. Prints `guest-check: N passed, M failed`.
set -uo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)

if [[ ! -r /dev/kvm || ! -w /dev/kvm ]]; then
	if [[ "${CI:-}" == true ]]; then
		echo "guest-check: /dev/kvm is not usable, and CI=true requires it" >&2
		exit 1
	fi
	echo "guest-check: skipped: /dev/kvm is not usable here" >&2
	exit 0
fi

elf=$("$repo/scripts/test-guest") || exit 1
harness="$(dirname "$elf")/kvm-harness"
harness_src="$here/harness/kvm-harness.c"
if [[ ! -x "$harness" || "$harness_src" -nt "$harness" ]]; then
	gcc -O2 -Wall -Wextra -o "$harness" "$harness_src" >&2 ||
		{ echo "guest-check: building the harness failed" >&2; exit 1; }
fi

passed=0
failed=0

# check NAME 'HARNESS OPTIONS' 'CMDLINE' PATTERN...
# Each PATTERN is an extended regex that must match a whole output line;
# '!PATTERN' must match no line. Every case must end in a power-off.
check() {
	local name=$1 opts=$2 cmdline=$3
	shift 3
	local out rc ok=true pattern
	# shellcheck disable=SC2086 # the options are meant to split
	out=$("$harness" $opts "$elf" "$cmdline" 2>&1)
	rc=$?
	if ((rc != 0)); then
		ok=false
		echo "  harness exit status $rc (0 is a clean power-off)"
	fi
	for pattern in "$@"; do
		if [[ "$pattern" == '!'* ]]; then
			if grep -Eqx -- "${pattern:1}" <<<"$out"; then
				ok=false
				echo "  unexpected line matching: ${pattern:1}"
			fi
		elif ! grep -Eqx -- "$pattern" <<<"$out"; then
			ok=false
			echo "  missing line matching: $pattern"
		fi
	done
	if $ok; then
		passed=$((passed + 1))
		echo "ok   $name"
	else
		failed=$((failed + 1))
		echo "FAIL $name; output was:"
		sed 's/^/    | /' <<<"$out"
	fi
}

P='form-test-guest: '
PASS="${P}PASS"
NOFAIL="!${P}FAIL.*"
OFF600='harness: power-off via port 0x600'
NOSLEEP="${P}FAIL no ACPI sleep control register"

check hello '' 'hello' \
	"${P}scenario hello" 'Hello from the form-vmm test guest' "$PASS" "$NOFAIL" "$OFF600"
check smp '' 'smp' "${P}scenario smp" 'cpus: 1' "$PASS" "$NOFAIL" "$OFF600"
check 'smp, LAPIC and x2APIC entries' '--cpus 4 --x2apic 2' 'smp' 'cpus: 6' "$PASS" "$NOFAIL"
check 'smp expect= matches' '--cpus 3' 'smp expect=3' 'cpus: 3' "$PASS" "$NOFAIL"
check 'smp expect= differs' '--cpus 3' 'smp expect=0x4' \
	"${P}FAIL expected 4 cpus, MADT lists 3" "!$PASS" "$OFF600"
check 'smp expect= not a number' '' 'smp expect=four' \
	"${P}FAIL parameter expect=four is not a number" "$OFF600"
check pci-scan '' 'pci-scan' \
	"${P}scenario pci-scan" 'ecam: 0xe8000000 \(MCFG\)' \
	'pci 00:00\.0 8086:0d57 class 060000' \
	'pci 00:01\.0 1234:11e8 class 00ff00' \
	'!pci 00:01\.[1-7] .*' \
	'pci 00:1f\.0 8086:2918 class 060100' \
	'!pci 00:1f\.1 .*' \
	'pci 00:1f\.2 8086:2922 class 010601' \
	'pci 00:1f\.3 8086:2930 class 0c0500' \
	'pci-devices: 5' "$PASS" "$NOFAIL" "$OFF600"
check 'pci-scan, ECAM where the MCFG says' '--ecam 0xb0000000' 'pci-scan' \
	'ecam: 0xb0000000 \(MCFG\)' 'pci-devices: 5' "$PASS" "$NOFAIL"
check 'pci-scan, no MCFG' '--omit MCFG' 'pci-scan' \
	'ecam: 0xe8000000 \(no MCFG, platform default\)' 'pci-devices: 5' "$PASS" "$NOFAIL"
check 'pci-scan, empty bus' '--no-devices' 'pci-scan' 'pci-devices: 0' "$PASS" "$NOFAIL"
check 'pci-scan, ECAM beyond 4 GiB' '--ecam 0x100000000' 'pci-scan' \
	"${P}FAIL MCFG ECAM window at 0x100000000 for buses 0-0 is beyond 4 GiB" "$OFF600"
check 'unknown scenario' '' 'frobnicate' \
	"${P}scenario frobnicate" "${P}FAIL unknown scenario 'frobnicate'" "$OFF600"

# The VFIO scenarios against the harness's model of the lab's devices:
# RAM-backed BARs (one 8 GiB above 4 GiB), an edu with DMA and MSI.
LAB='--lab-devices'
check 'bar-rw, VGA framebuffer' "$LAB" 'bar-rw vendor=0x1234 device=0x1111 bar=0' \
	'found 00:01\.0 1234:1111 class 030000' \
	'bar 0 at 0xc0000000 size 0x1000000 \(32-bit, prefetchable\)' \
	'bar 0: wrote and read back 0x1000 bytes at offset 0x0' "$PASS" "$NOFAIL"
check 'bar-rw, far end of an 8 GiB BAR above 4 GiB' "$LAB" \
	'bar-rw vendor=0x1af4 device=0x1110 bar=2 offset=0x1fffff000 len=0x1000' \
	'bar 2 at 0x200000000 size 0x200000000 \(64-bit, prefetchable\)' \
	'mapped 0x3fffff000-0x3ffffffff above 4 GiB' \
	'bar 2: wrote and read back 0x1000 bytes at offset 0x1fffff000' "$PASS" "$NOFAIL"
check 'bar-rw, window beyond the BAR' "$LAB" \
	'bar-rw vendor=0x1234 device=0x1111 offset=0xfff000 len=0x2000' \
	"${P}FAIL offset 0xfff000 \+ length 0x2000 is beyond BAR 0's 0x1000000 bytes"
check 'bar-rw, BAR not implemented' "$LAB" 'bar-rw vendor=0x1234 device=0x1111 bar=1' \
	"${P}FAIL BAR 1 is not implemented"
check 'bar-rw, no such device' "$LAB" 'bar-rw vendor=0x10de device=0x2330' \
	"${P}FAIL no 10de:2330 on bus 0 after 0 s"
check 'bar-rw, hold' "$LAB" 'bar-rw vendor=0x1234 device=0x1111 hold=1' \
	'holding 1 s' "$PASS" "$NOFAIL"
check edu "$LAB" 'edu' 'edu: id 0x010000ed' 'edu: liveness wrote 0x12345678 read 0xedcba987' \
	'dma: 1024 bytes RAM -> device -> RAM at 0x[0-9a-f]+: match' \
	'msi: capability at 0x40, address 0xfee00000, data 0x40, 64-bit' \
	'msi: received vector 0x40' 'msi: DMA completion on vector 0x40, status 0x100' \
	"$PASS" "$NOFAIL"
check 'edu, vector=' "$LAB" 'edu vector=0x51' 'msi: received vector 0x51' "$PASS" "$NOFAIL"
check 'edu, exception vector refused' "$LAB" 'edu vector=0x0e' \
	"${P}FAIL vector=0xe is an exception vector; use 0x20-0xfe"
check 'edu, no local APIC' '' 'edu' \
	"${P}FAIL the local APIC timer does not count \(stuck at 0x[0-9a-f]+\)"
check 'edu-p2p, into the VGA framebuffer and back' "$LAB" 'edu-p2p' \
	'found 00:02\.0 1234:11e8 class 00ff00' 'p2p: peer 00:01\.0 1234:1111 class 030000' \
	'p2p: edu DMA 2048 bytes -> 00:01\.0 bar 0 at 0xc0000000: match' \
	'p2p: edu DMA 2048 bytes <- 00:01\.0 bar 0 at 0xc0000000: match' "$PASS" "$NOFAIL"
check 'edu-p2p, far end of an 8 GiB BAR above 4 GiB' "$LAB" \
	'edu-p2p target_vendor=0x1af4 target_device=0x1110 bar=2 offset=0x1ffffe000 len=0xffc' \
	'mapped 0x3ffffe000-0x3ffffeffb above 4 GiB' \
	'p2p: edu DMA 4092 bytes -> 00:03\.0 bar 2 at 0x3ffffe000: match' \
	'p2p: edu DMA 4092 bytes <- 00:03\.0 bar 2 at 0x3ffffe000: match' "$PASS" "$NOFAIL"
check 'edu-p2p, BARs not reachable by DMA' "$LAB --no-p2p" 'edu-p2p' \
	'p2p: edu -> peer BAR: 512 of 512 words differ, the first at \+0x0 reads 0x[0-9a-f]+, not 0x[0-9a-f]+' \
	"${P}FAIL no peer-to-peer DMA \(edu -> peer BAR\); is the BAR mapped in the IOMMU\?" "!$PASS"
check 'edu-p2p, a whole 4 KiB refused' "$LAB" 'edu-p2p len=0x1000' \
	"${P}FAIL parameter len=0x1000 is above its limit 0xffc"
check 'edu-p2p, no such peer' "$LAB" 'edu-p2p target_device=0x2222' \
	"${P}FAIL no 1234:2222 on bus 0 to DMA into"
check 'msix, no MSI-X capability' "$LAB" 'msix vendor=0x1234 device=0x11e8' \
	"${P}FAIL the device has no MSI-X capability"
check 'pci-wait, present' "$LAB" 'pci-wait vendor=0x1234 device=0x11e8' \
	'found 00:02\.0 1234:11e8 class 00ff00 after [0-9]+ ms' "$PASS" "$NOFAIL"
check 'pci-wait, never appears' "$LAB" 'pci-wait vendor=0x1234 device=0x9999 wait=1' \
	"${P}FAIL 1234:9999 still absent after 1 s"
check 'pci-wait gone=1' "$LAB" 'pci-wait vendor=0x1234 device=0x9999 gone=1' \
	'gone after [0-9]+ ms' "$PASS" "$NOFAIL"
check 'hotplug-cycle' "$LAB --hotplug-cycle 300" 'hotplug-cycle vendor=0x1234 device=0x11e8 wait=3' \
	'waiting for 1234:11e8 to appear' 'found 00:02\.0 1234:11e8 class 00ff00 after [0-9]+ ms' \
	'gone after [0-9]+ ms' 'found again 00:02\.0 1234:11e8 class 00ff00 after [0-9]+ ms' \
	"$PASS" "$NOFAIL"
check 'hotplug-cycle, eject=1 answers the removal request' "$LAB --hotplug-cycle 300" \
	'hotplug-cycle vendor=0x1234 device=0x11e8 wait=3 eject=1' \
	'eject request for slot 2: ejecting' 'harness: slot 2 ejected' 'gone after [0-9]+ ms' \
	'found again 00:02\.0 .*' "$PASS" "$NOFAIL"
check 'hotplug-cycle, never removed' "$LAB" 'hotplug-cycle vendor=0x1234 device=0x11e8 wait=1' \
	'found 00:02\.0 .*' "${P}FAIL 1234:11e8 still present after 1 s"

# Power-off goes where the FADT says, found directly or by scanning.
check 'power-off through the FADT' '--sleep-port 0x604' 'hello' \
	"$PASS" "$NOFAIL" 'harness: power-off via port 0x604'
check 'RSDP found by scanning' '--rsdp-scan --sleep-port 0x604' 'smp' \
	'cpus: 1' "$PASS" "$NOFAIL" 'harness: power-off via port 0x604'
check 'no ACPI' '--no-acpi' 'hello' \
	"$PASS" 'acpi: no RSDP: .*' "$NOSLEEP" "$OFF600"
check 'FADT too old' '--fadt-revision 4 --sleep-port 0x604' 'hello' \
	'acpi: FADT revision 4 has no sleep registers \(needs 5\)' "$NOSLEEP" "$OFF600"
check 'no FADT' '--omit FACP' 'hello' 'acpi: no FACP table in the XSDT' "$NOSLEEP" "$OFF600"

# Broken tables and pointers give a FAIL line, not a hang.
check 'bad RSDP checksum' '--corrupt RSDP' 'smp' \
	"${P}FAIL RSDP at 0xe0000: checksum mismatch" "$NOSLEEP" "$OFF600"
check 'bad XSDT checksum' '--corrupt XSDT' 'smp' \
	"${P}FAIL XSDT at 0x[0-9a-f]+: checksum mismatch" "$NOSLEEP" "$OFF600"
check 'bad MADT checksum' '--corrupt APIC --sleep-port 0x604' 'smp' \
	"${P}FAIL APIC at 0x[0-9a-f]+: checksum mismatch" 'harness: power-off via port 0x604'
check 'bad MCFG checksum' '--corrupt MCFG' 'pci-scan' \
	"${P}FAIL MCFG at 0x[0-9a-f]+: checksum mismatch" '!pci-devices: .*'
check 'bad FADT checksum' '--corrupt FACP' 'hello' \
	"$PASS" 'acpi: FACP at 0x[0-9a-f]+: checksum mismatch' "$NOSLEEP" "$OFF600"
check 'no MADT' '--omit APIC' 'smp' "${P}FAIL no APIC table in the XSDT"
check 'RSDP pointer beyond 4 GiB' '--rsdp-addr 0x200000000' 'smp' \
	"${P}FAIL RSDP address 0x200000000 is beyond 4 GiB" "$OFF600"
check 'RSDP pointer to garbage' '--rsdp-addr 0x8000' 'smp' \
	"${P}FAIL no RSDP signature at 0x8000" "$OFF600"
check 'boot_params pointer beyond 4 GiB' '--boot-params 0x300000000 --sleep-port 0x604' 'hello' \
	"${P}FAIL boot_params pointer 0x300000000 in %rsi is not usable" \
	'harness: power-off via port 0x604'

# Command lines.
check 'empty command line' '' '' "${P}FAIL no scenario name on the command line" "$OFF600"
check 'parameters before the scenario' '' 'console=ttyS0 hello' "${P}scenario hello" "$PASS"
check 'stray word' '' 'hello extra' \
	"!${P}scenario .*" "!$PASS" \
	"${P}FAIL unexpected word 'extra' on the command line \(parameters are key=value\)"

echo "guest-check: $passed passed, $failed failed"
((failed == 0))
