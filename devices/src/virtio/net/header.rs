//! The virtio net header (virtio 1.2, 5.1.6 "Device Operation"): with VERSION_1 it
//! is 12 bytes in front of every frame, on both queues and, with IFF_VNET_HDR and
//! TUNSETVNETHDRSZ 12, on the tap too, so frames cross unchanged (offload requests
//! aside, see `offload`).

/// `struct virtio_net_hdr_v1`: flags, gso_type, hdr_len, gso_size, csum_start,
/// csum_offset, num_buffers.
pub(crate) const VNET_HDR_LEN: usize = 12;

/// Where `num_buffers` sits: how many receive buffers one frame spans.
const NUM_BUFFERS_OFFSET: usize = 10;

/// The largest frame either queue carries: the largest IP packet (or GSO packet)
/// plus an Ethernet header and one VLAN tag.
pub(crate) const MAX_FRAME_LEN: usize = 65_535 + 14 + 4;

/// Header plus the largest frame: the longest chain we send and the receive buffer.
pub(crate) const MAX_PACKET_LEN: usize = VNET_HDR_LEN + MAX_FRAME_LEN;

/// Fills in num_buffers of a packet (header + frame) about to be received.
/// `packet` is at least [`VNET_HDR_LEN`] long; shorter ones are left as they are.
pub(crate) fn set_num_buffers(packet: &mut [u8], count: u16) {
    if let Some(field) = packet.get_mut(NUM_BUFFERS_OFFSET..VNET_HDR_LEN) {
        field.copy_from_slice(&count.to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn num_buffers_is_little_endian_at_offset_10() {
        let mut packet = [0xaau8; 14];
        set_num_buffers(&mut packet, 0x0102);
        assert_eq!(&packet[10..12], &[0x02, 0x01]);
        assert_eq!(packet[9], 0xaa);
        assert_eq!(packet[12], 0xaa);
        let mut short = [0u8; 11];
        set_num_buffers(&mut short, 3);
        assert_eq!(short, [0u8; 11]);
    }
}
