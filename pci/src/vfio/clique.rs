//! The NVIDIA GPUDirect P2P clique capability (`x_nv_gpudirect_clique=N`).
//!
//! NVIDIA's guest driver enables peer-to-peer DMA only between GPUs it is told share
//! a clique. The hypervisor says so with a conventional vendor-specific capability
//! (ID 0x09) of 8 bytes, linked last in the list (next pointer 0). The layout, as
//! QEMU documents and implements it for `x-nv-gpudirect-clique`:
//!
//! | byte | value |
//! | --- | --- |
//! | 0 | capability ID 0x09 |
//! | 1 | next pointer (0: last in the list) |
//! | 2 | capability length, 8 |
//! | 3..6 | signature `'P' '2' 'P'` |
//! | 6 | bits 6:3 clique ID (0-15), bits 2:0 version (0); bit 7 reserved |
//! | 7 | reserved, 0 |
//!
//! NVIDIA reserves and recommends offset 0xC8 for it; 0xD4 is the usual second
//! choice. Which GPUs share a clique is the operator's claim (they must sit under
//! the same PCIe switch or root complex that really routes P2P), not something the
//! VMM can check.

use crate::config::PciCapabilityId;

/// Bytes of the capability.
pub const CLIQUE_CAP_LEN: usize = 8;
/// Highest clique ID the 4-bit field holds.
pub const MAX_CLIQUE_ID: u8 = 15;
/// Offsets tried first, in order, before any other free space.
pub const PREFERRED_OFFSETS: [usize; 2] = [0xc8, 0xd4];

const SIGNATURE: [u8; 3] = *b"P2P";
const CLIQUE_SHIFT: u8 = 3;

/// The capability's 8 bytes with next pointer `next`. `clique` must be at most
/// [`MAX_CLIQUE_ID`]; larger values are masked to 4 bits.
pub fn clique_capability(clique: u8, next: u8) -> [u8; CLIQUE_CAP_LEN] {
    let [p, two, p2] = SIGNATURE;
    [
        PciCapabilityId::VENDOR_SPECIFIC.0,
        next,
        CLIQUE_CAP_LEN as u8,
        p,
        two,
        p2,
        (clique & MAX_CLIQUE_ID) << CLIQUE_SHIFT,
        0,
    ]
}

/// The clique ID in a capability's bytes, if they carry the P2P signature.
pub fn parse_clique_capability(bytes: &[u8]) -> Option<u8> {
    let cap: &[u8; CLIQUE_CAP_LEN] = bytes.get(..CLIQUE_CAP_LEN)?.try_into().ok()?;
    let is_clique = cap[0] == PciCapabilityId::VENDOR_SPECIFIC.0
        && usize::from(cap[2]) == CLIQUE_CAP_LEN
        && cap[3..6] == SIGNATURE;
    is_clique.then_some((cap[6] >> CLIQUE_SHIFT) & MAX_CLIQUE_ID)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_follow_the_documented_layout() {
        assert_eq!(
            clique_capability(5, 0),
            [0x09, 0x00, 0x08, b'P', b'2', b'P', 5 << 3, 0x00]
        );
        assert_eq!(clique_capability(15, 0x40)[6], 0x78);
        assert_eq!(clique_capability(0, 0)[6], 0);
        for id in 0..=MAX_CLIQUE_ID {
            assert_eq!(parse_clique_capability(&clique_capability(id, 0)), Some(id));
        }
        let mut other = clique_capability(3, 0);
        other[4] = b'X';
        assert_eq!(parse_clique_capability(&other), None);
        assert_eq!(parse_clique_capability(&[0x09, 0, 8]), None);
    }
}
