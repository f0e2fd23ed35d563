//! The SRAT and the SLIT (ACPI 6.5, 5.2.16 and 5.2.17): which proximity domain
//! (guest NUMA node) each vCPU and each range of guest RAM belongs to, and how far
//! apart the domains are. An x86 Linux guest takes its node topology from these
//! two tables and nothing else.

use crate::acpi_oem::{OEM_ID, OEM_REVISION, OEM_TABLE_ID};
use crate::guest_numa::GuestNuma;
use acpi_tables::sdt::Sdt;
use form_vm_allocator::MemoryRegion;

/// The SRAT's header: the common 36 bytes, a reserved dword that must be 1 (for
/// compatibility with the first SRATs) and a reserved qword.
const SRAT_HEADER_LEN: u32 = 48;
/// SRAT revision 3: ACPI 6.5's.
const SRAT_REVISION: u8 = 3;
const SRAT_LOCAL_APIC_AFFINITY: u8 = 0;
const SRAT_LOCAL_APIC_AFFINITY_LEN: u8 = 16;
const SRAT_MEMORY_AFFINITY: u8 = 1;
const SRAT_MEMORY_AFFINITY_LEN: u8 = 40;
const SRAT_X2APIC_AFFINITY: u8 = 2;
const SRAT_X2APIC_AFFINITY_LEN: u8 = 24;
/// Flags of all three structures: the entry is to be used.
const SRAT_ENABLED: u32 = 1;
/// APIC ids from 255 up fit only the x2APIC structure (255 is xAPIC broadcast).
const XAPIC_ID_LIMIT: u32 = 255;

/// The SLIT's header: the common 36 bytes and the number of localities.
const SLIT_HEADER_LEN: u32 = 44;
const SLIT_REVISION: u8 = 1;

/// One affinity structure per vCPU below `vcpus` (the vCPUs the MADT lists), in
/// vCPU order, then one memory affinity structure per guest RAM range of each
/// node.
pub fn srat(numa: &GuestNuma, vcpus: u32) -> Vec<u8> {
    let mut sdt = Sdt::new(
        *b"SRAT",
        SRAT_HEADER_LEN,
        SRAT_REVISION,
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
    );
    sdt.write_u32(36, 1);
    for vcpu in 0..vcpus {
        if let Some(node) = numa.node_of_vcpu(vcpu) {
            sdt.append_slice(&apic_affinity(node.id, vcpu));
        }
    }
    for node in &numa.nodes {
        for range in &node.ram {
            sdt.append_slice(&memory_affinity(node.id, range));
        }
    }
    sdt.as_slice().to_vec()
}

fn apic_affinity(domain: u32, apic_id: u32) -> Vec<u8> {
    let d = domain.to_le_bytes();
    if apic_id < XAPIC_ID_LIMIT {
        // The proximity domain is split: bits 7:0 at byte 2, bits 31:8 at 9..12.
        let mut s = vec![
            SRAT_LOCAL_APIC_AFFINITY,
            SRAT_LOCAL_APIC_AFFINITY_LEN,
            d[0],
            apic_id as u8,
        ];
        s.extend_from_slice(&SRAT_ENABLED.to_le_bytes());
        s.push(0); // local SAPIC EID
        s.extend_from_slice(&d[1..4]);
        s.extend_from_slice(&0u32.to_le_bytes()); // clock domain
        s
    } else {
        let mut s = vec![SRAT_X2APIC_AFFINITY, SRAT_X2APIC_AFFINITY_LEN, 0, 0];
        s.extend_from_slice(&d);
        s.extend_from_slice(&apic_id.to_le_bytes());
        s.extend_from_slice(&SRAT_ENABLED.to_le_bytes());
        s.extend_from_slice(&0u32.to_le_bytes()); // clock domain
        s.extend_from_slice(&[0; 4]);
        s
    }
}

fn memory_affinity(domain: u32, range: &MemoryRegion) -> Vec<u8> {
    let mut s = vec![SRAT_MEMORY_AFFINITY, SRAT_MEMORY_AFFINITY_LEN];
    s.extend_from_slice(&domain.to_le_bytes());
    s.extend_from_slice(&[0; 2]);
    s.extend_from_slice(&range.start.to_le_bytes());
    s.extend_from_slice(&range.size.to_le_bytes());
    s.extend_from_slice(&[0; 4]);
    s.extend_from_slice(&SRAT_ENABLED.to_le_bytes());
    s.extend_from_slice(&[0; 8]);
    s
}

/// The distance matrix, row by row: `distances[from][to]`.
pub fn slit(distances: &[Vec<u8>]) -> Vec<u8> {
    let mut sdt = Sdt::new(
        *b"SLIT",
        SLIT_HEADER_LEN,
        SLIT_REVISION,
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
    );
    sdt.write_u64(36, distances.len() as u64);
    let matrix: Vec<u8> = distances.iter().flatten().copied().collect();
    sdt.append_slice(&matrix);
    sdt.as_slice().to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guest_numa::GuestNumaNode;

    const G: u64 = 1 << 30;

    fn u32_at(t: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(t[at..at + 4].try_into().unwrap())
    }

    fn u64_at(t: &[u8], at: usize) -> u64 {
        u64::from_le_bytes(t[at..at + 8].try_into().unwrap())
    }

    /// Signature, length and checksum as any ACPI table's.
    fn check_header(t: &[u8], signature: &[u8; 4], revision: u8) {
        assert_eq!(&t[0..4], signature);
        assert_eq!(u32_at(t, 4) as usize, t.len());
        assert_eq!(t[8], revision);
        assert_eq!(t.iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0);
        assert_eq!(&t[10..16], &OEM_ID);
    }

    /// The SRAT's structures as (type, bytes), walking their lengths.
    fn structures(t: &[u8]) -> Vec<(u8, &[u8])> {
        let mut out = Vec::new();
        let mut at = SRAT_HEADER_LEN as usize;
        while at < t.len() {
            let len = t[at + 1] as usize;
            assert!(len > 0 && at + len <= t.len(), "structure at {at}");
            out.push((t[at], &t[at..at + len]));
            at += len;
        }
        out
    }

    /// (proximity domain, APIC id, enabled) of an APIC structure of either kind.
    fn apic(s: &[u8]) -> (u32, u32, bool) {
        match s[0] {
            SRAT_LOCAL_APIC_AFFINITY => {
                assert_eq!(s.len(), 16);
                let domain = u32::from_le_bytes([s[2], s[9], s[10], s[11]]);
                (domain, u32::from(s[3]), u32_at(s, 4) & 1 == 1)
            }
            SRAT_X2APIC_AFFINITY => {
                assert_eq!(s.len(), 24);
                (u32_at(s, 4), u32_at(s, 8), u32_at(s, 12) & 1 == 1)
            }
            other => panic!("type {other} is not an APIC structure"),
        }
    }

    /// (proximity domain, range, flags) of a memory structure.
    fn memory(s: &[u8]) -> (u32, MemoryRegion, u32) {
        assert_eq!((s[0], s.len()), (SRAT_MEMORY_AFFINITY, 40));
        let range = MemoryRegion {
            start: u64_at(s, 8),
            size: u64_at(s, 16),
        };
        (u32_at(s, 2), range, u32_at(s, 28))
    }

    fn region(start: u64, size: u64) -> MemoryRegion {
        MemoryRegion { start, size }
    }

    /// Two nodes of two vCPUs; node 1's zone crosses the 32-bit hole.
    fn two_nodes() -> GuestNuma {
        GuestNuma {
            nodes: vec![
                GuestNumaNode {
                    id: 0,
                    vcpus: vec![0, 2],
                    ram: vec![region(0, 2 * G)],
                    host_nodes: vec![0],
                },
                GuestNumaNode {
                    id: 1,
                    vcpus: vec![1, 3],
                    ram: vec![region(2 * G, G), region(4 * G, G)],
                    host_nodes: vec![1],
                },
            ],
            distances: vec![vec![10, 21], vec![21, 10]],
            in_acpi: true,
        }
    }

    #[test]
    fn srat_has_one_enabled_entry_per_vcpu_and_the_nodes_ranges() {
        let numa = two_nodes();
        let t = srat(&numa, 4);
        check_header(&t, b"SRAT", SRAT_REVISION);
        assert_eq!(u32_at(&t, 36), 1);
        assert_eq!(u64_at(&t, 40), 0);
        assert_eq!(t.len(), 48 + 4 * 16 + 3 * 40);
        let structures = structures(&t);
        let apics: Vec<(u32, u32, bool)> = structures[..4].iter().map(|(_, s)| apic(s)).collect();
        assert_eq!(
            apics,
            vec![(0, 0, true), (1, 1, true), (0, 2, true), (1, 3, true)]
        );
        let ranges: Vec<(u32, MemoryRegion, u32)> =
            structures[4..].iter().map(|(_, s)| memory(s)).collect();
        assert_eq!(
            ranges,
            vec![
                (0, region(0, 2 * G), SRAT_ENABLED),
                (1, region(2 * G, G), SRAT_ENABLED),
                (1, region(4 * G, G), SRAT_ENABLED),
            ]
        );
    }

    #[test]
    fn srat_lists_only_the_vcpus_the_vm_has() {
        let t = srat(&two_nodes(), 2);
        let apics: Vec<u32> = structures(&t)
            .iter()
            .filter(|(kind, _)| *kind != SRAT_MEMORY_AFFINITY)
            .map(|(_, s)| apic(s).1)
            .collect();
        assert_eq!(apics, vec![0, 1]);
    }

    #[test]
    fn wide_domains_and_apic_ids_use_every_byte() {
        let numa = GuestNuma {
            nodes: vec![GuestNumaNode {
                id: 0x0102_0304,
                vcpus: vec![7, 300],
                ram: vec![region(0, G)],
                host_nodes: Vec::new(),
            }],
            distances: vec![vec![10]],
            in_acpi: true,
        };
        let t = srat(&numa, 301);
        check_header(&t, b"SRAT", SRAT_REVISION);
        let s = structures(&t);
        assert_eq!(s[0].0, SRAT_LOCAL_APIC_AFFINITY);
        assert_eq!(apic(s[0].1), (0x0102_0304, 7, true));
        assert_eq!(s[1].0, SRAT_X2APIC_AFFINITY);
        assert_eq!(apic(s[1].1), (0x0102_0304, 300, true));
        assert_eq!(memory(s[2].1).0, 0x0102_0304);
    }

    #[test]
    fn slit_is_the_matrix_row_by_row() {
        let distances = vec![vec![10, 21, 30], vec![21, 10, 20], vec![30, 20, 10]];
        let t = slit(&distances);
        check_header(&t, b"SLIT", SLIT_REVISION);
        assert_eq!(t.len(), 44 + 9);
        assert_eq!(u64_at(&t, 36), 3);
        assert_eq!(&t[44..], &[10, 21, 30, 21, 10, 20, 30, 20, 10]);
    }
}
