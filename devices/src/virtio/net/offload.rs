//! Checksum and TCP segmentation offloads, which pass straight between the guest
//! and the tap in the virtio net header: the guest may send partially checksummed
//! frames and TCP segments up to 64 KiB (CSUM, HOST_TSO4/6), and receive them
//! (GUEST_CSUM, GUEST_TSO4/6) once the tap is told it may produce them.

use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6,
    VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_HDR_F_NEEDS_CSUM,
    VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_HDR_GSO_TCPV6,
};

/// Offload feature bits the device offers.
pub(crate) const OFFLOAD_FEATURES: u64 = (1 << VIRTIO_NET_F_CSUM)
    | (1 << VIRTIO_NET_F_GUEST_CSUM)
    | (1 << VIRTIO_NET_F_GUEST_TSO4)
    | (1 << VIRTIO_NET_F_GUEST_TSO6)
    | (1 << VIRTIO_NET_F_HOST_TSO4)
    | (1 << VIRTIO_NET_F_HOST_TSO6);

const fn acked(features: u64, bit: u32) -> bool {
    features & (1 << bit) != 0
}

/// The `TUN_F_*` flags for TUNSETOFFLOAD: what the kernel may put in frames it
/// hands the guest. The kernel only segments-offloads with checksum offload.
pub(crate) fn tap_offload_flags(acked_features: u64) -> libc::c_uint {
    if !acked(acked_features, VIRTIO_NET_F_GUEST_CSUM) {
        return 0;
    }
    let mut flags = libc::TUN_F_CSUM;
    if acked(acked_features, VIRTIO_NET_F_GUEST_TSO4) {
        flags |= libc::TUN_F_TSO4;
    }
    if acked(acked_features, VIRTIO_NET_F_GUEST_TSO6) {
        flags |= libc::TUN_F_TSO6;
    }
    flags
}

/// What a transmitted header may ask of the host, per the accepted features.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct TxOffloads {
    csum: bool,
    tso4: bool,
    tso6: bool,
}

/// Header fields (virtio 1.2, 5.1.6): flags, gso_type, hdr_len, gso_size,
/// csum_start, csum_offset.
const FLAGS: usize = 0;
const GSO_TYPE: usize = 1;
const GSO_FIELDS: std::ops::Range<usize> = 1..6;
const ALL_OFFLOAD_FIELDS: std::ops::Range<usize> = 0..10;

impl TxOffloads {
    pub(crate) fn from_features(acked_features: u64) -> Self {
        let csum = acked(acked_features, VIRTIO_NET_F_CSUM);
        Self {
            csum,
            tso4: csum && acked(acked_features, VIRTIO_NET_F_HOST_TSO4),
            tso6: csum && acked(acked_features, VIRTIO_NET_F_HOST_TSO6),
        }
    }

    /// Clears what the driver asks for without having negotiated it, so the host
    /// kernel never acts on an offload the device did not agree to.
    pub(crate) fn sanitize(&self, packet: &mut [u8]) {
        if !self.csum {
            if let Some(fields) = packet.get_mut(ALL_OFFLOAD_FIELDS) {
                fields.fill(0);
            }
            return;
        }
        if let Some(flags) = packet.get_mut(FLAGS) {
            // DATA_VALID and RSC_INFO only mean something on receive.
            *flags &= VIRTIO_NET_HDR_F_NEEDS_CSUM as u8;
        }
        let gso_allowed = match packet.get(GSO_TYPE).map(|&t| u32::from(t)) {
            Some(VIRTIO_NET_HDR_GSO_TCPV4) => self.tso4,
            Some(VIRTIO_NET_HDR_GSO_TCPV6) => self.tso6,
            // GSO_NONE stays; UDP, ECN and unknown types were never offered.
            Some(0) => true,
            _ => false,
        };
        if !gso_allowed {
            if let Some(fields) = packet.get_mut(GSO_FIELDS) {
                fields.fill(0);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(flags: u8, gso_type: u8) -> [u8; 14] {
        let mut h = [0u8; 14];
        h[0] = flags;
        h[1] = gso_type;
        h[2..10].copy_from_slice(&[54, 0, 0xa8, 5, 34, 0, 16, 0]);
        h[10..].copy_from_slice(&[0xee; 4]);
        h
    }

    const CSUM: u64 = 1 << VIRTIO_NET_F_CSUM;
    const TSO4: u64 = 1 << VIRTIO_NET_F_HOST_TSO4;
    const TSO6: u64 = 1 << VIRTIO_NET_F_HOST_TSO6;

    #[test]
    fn without_csum_every_offload_request_is_cleared() {
        let mut h = header(1, 1);
        TxOffloads::from_features(TSO4).sanitize(&mut h);
        assert_eq!(&h[..10], &[0u8; 10]);
        assert_eq!(&h[10..], &[0xee; 4], "num_buffers and frame untouched");
    }

    #[test]
    fn negotiated_segmentation_passes_and_the_rest_is_cleared() {
        let both = TxOffloads::from_features(CSUM | TSO4 | TSO6);
        for gso in [1u8, 4] {
            let mut h = header(1, gso);
            both.sanitize(&mut h);
            assert_eq!(h, header(1, gso), "gso type {gso}");
        }
        let v4_only = TxOffloads::from_features(CSUM | TSO4);
        let mut h = header(1, 4);
        v4_only.sanitize(&mut h);
        assert_eq!(&h[..6], &[1, 0, 0, 0, 0, 0], "TCPv6 not negotiated");
        assert_eq!(&h[6..10], &[34, 0, 16, 0], "checksum request kept");
        for gso in [3u8, 0x81, 0x42] {
            let mut h = header(1, gso);
            both.sanitize(&mut h);
            assert_eq!(h[1], 0, "gso type {gso:#x} was never offered");
        }
        let mut h = header(0x07, 0);
        both.sanitize(&mut h);
        assert_eq!(h[0], 1, "receive-only flags cleared");
    }

    #[test]
    fn segmentation_needs_checksum_offload() {
        assert_eq!(
            TxOffloads::from_features(TSO4 | TSO6),
            TxOffloads::default()
        );
    }

    #[test]
    fn tap_flags_follow_the_guest_receive_features() {
        let guest_csum = 1 << VIRTIO_NET_F_GUEST_CSUM;
        let guest_tso4 = 1 << VIRTIO_NET_F_GUEST_TSO4;
        let guest_tso6 = 1 << VIRTIO_NET_F_GUEST_TSO6;
        assert_eq!(tap_offload_flags(0), 0);
        assert_eq!(tap_offload_flags(guest_tso4 | guest_tso6), 0);
        assert_eq!(tap_offload_flags(guest_csum), libc::TUN_F_CSUM);
        assert_eq!(
            tap_offload_flags(guest_csum | guest_tso4 | guest_tso6),
            libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6
        );
        assert_eq!(
            tap_offload_flags(OFFLOAD_FEATURES & !CSUM),
            tap_offload_flags(OFFLOAD_FEATURES)
        );
    }
}
