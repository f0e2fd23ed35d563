//! The IOVA ranges the host IOMMU can translate, from `VFIO_IOMMU_GET_INFO`.
//!
//! VFIO maps guest RAM 1:1 (IOVA = guest physical address), so guest RAM and the
//! BAR windows (for peer-to-peer) must lie inside these ranges; the VMM clamps its
//! layout with `GuestLayout::with_iova_ranges`. The kernel reports them (since
//! Linux 5.4) in the `VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE` capability of the info
//! structure: a chain of `{id: u16, version: u16, next: u32}` headers starting at
//! `cap_offset`; the IOVA one carries `nr_iovas: u32, reserved: u32` and then
//! `nr_iovas` pairs of inclusive `{start: u64, end: u64}`.

use form_vm_allocator::IovaRange;

/// `struct vfio_iommu_type1_info`: argsz, flags, iova_pgsizes, cap_offset, pad.
pub const INFO_LEN: usize = 24;
const INFO_FLAGS: usize = 4;
const INFO_CAP_OFFSET: usize = 16;
const INFO_FLAG_CAPS: u32 = 1 << 1;
const CAP_IOVA_RANGE: u16 = 1;
const CAP_HEADER_LEN: usize = 8;
const IOVA_HEADER_LEN: usize = 16;
const IOVA_RANGE_LEN: usize = 16;
/// Bounds a capability chain walk.
const MAX_CAPS: usize = 64;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IovaError {
    #[error("IOMMU info capability at {offset:#x} runs past the {len}-byte buffer")]
    Truncated { offset: usize, len: usize },
    #[error("IOVA range {start:#x}-{end:#x} from the kernel is empty or reversed")]
    BadRange { start: u64, end: u64 },
}

fn u16_at(buf: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(buf.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(buf: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(buf.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(buf: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(buf.get(at..at + 8)?.try_into().ok()?))
}

/// The IOVA ranges in a filled `vfio_iommu_type1_info` buffer; `None` when the
/// kernel reported no IOVA capability (no restriction known).
pub fn parse_iova_ranges(buf: &[u8]) -> Result<Option<Vec<IovaRange>>, IovaError> {
    let truncated = |offset| IovaError::Truncated {
        offset,
        len: buf.len(),
    };
    let flags = u32_at(buf, INFO_FLAGS).ok_or(truncated(INFO_FLAGS))?;
    if flags & INFO_FLAG_CAPS == 0 {
        return Ok(None);
    }
    let mut offset = u32_at(buf, INFO_CAP_OFFSET).ok_or(truncated(INFO_CAP_OFFSET))? as usize;
    let mut walked = 0;
    while offset != 0 && walked < MAX_CAPS {
        walked += 1;
        if offset < INFO_LEN {
            return Err(truncated(offset));
        }
        let id = u16_at(buf, offset).ok_or(truncated(offset))?;
        let next = u32_at(buf, offset + 4).ok_or(truncated(offset))? as usize;
        if id == CAP_IOVA_RANGE {
            let count = u32_at(buf, offset + CAP_HEADER_LEN).ok_or(truncated(offset))? as usize;
            let mut ranges = Vec::with_capacity(count.min(1024));
            for i in 0..count {
                let at = offset + IOVA_HEADER_LEN + i * IOVA_RANGE_LEN;
                let start = u64_at(buf, at).ok_or(truncated(at))?;
                let end = u64_at(buf, at + 8).ok_or(truncated(at))?;
                if end < start {
                    return Err(IovaError::BadRange { start, end });
                }
                ranges.push(IovaRange { start, end });
            }
            ranges.sort_by_key(|r| r.start);
            return Ok(Some(ranges));
        }
        offset = next;
    }
    Ok(None)
}

/// The `argsz` the kernel asked for in a buffer it filled (more than we gave means
/// "call again with this much").
pub fn requested_argsz(buf: &[u8]) -> Option<usize> {
    u32_at(buf, 0).map(|n| n as usize)
}

#[cfg(test)]
pub(crate) fn info_buffer(ranges: &[(u64, u64)], with_other_cap_first: bool) -> Vec<u8> {
    let mut buf = vec![0u8; INFO_LEN];
    buf[INFO_FLAGS..INFO_FLAGS + 4].copy_from_slice(&(INFO_FLAG_CAPS | 1).to_le_bytes());
    let mut at = INFO_LEN;
    if with_other_cap_first {
        // A migration capability (id 2) of 16 bytes, then the IOVA one.
        buf.extend_from_slice(&2u16.to_le_bytes());
        buf.extend_from_slice(&1u16.to_le_bytes());
        buf.extend_from_slice(&((at + 16) as u32).to_le_bytes());
        buf.extend_from_slice(&[0; 8]);
        at += 16;
    }
    buf[INFO_CAP_OFFSET..INFO_CAP_OFFSET + 4].copy_from_slice(&(INFO_LEN as u32).to_le_bytes());
    let _ = at;
    buf.extend_from_slice(&CAP_IOVA_RANGE.to_le_bytes());
    buf.extend_from_slice(&1u16.to_le_bytes());
    buf.extend_from_slice(&0u32.to_le_bytes());
    buf.extend_from_slice(&(ranges.len() as u32).to_le_bytes());
    buf.extend_from_slice(&0u32.to_le_bytes());
    for (s, e) in ranges {
        buf.extend_from_slice(&s.to_le_bytes());
        buf.extend_from_slice(&e.to_le_bytes());
    }
    let len = buf.len() as u32;
    buf[0..4].copy_from_slice(&len.to_le_bytes());
    buf
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_iova_capability() {
        let buf = info_buffer(&[(0xfef0_0000, (1 << 39) - 1), (0, 0xfedf_ffff)], false);
        assert_eq!(
            parse_iova_ranges(&buf).unwrap().unwrap(),
            vec![
                IovaRange {
                    start: 0,
                    end: 0xfedf_ffff
                },
                IovaRange {
                    start: 0xfef0_0000,
                    end: (1 << 39) - 1
                },
            ]
        );
        assert_eq!(requested_argsz(&buf), Some(buf.len()));
    }

    #[test]
    fn follows_the_chain_past_other_capabilities() {
        let mut buf = info_buffer(&[(0, 0xffff_ffff)], true);
        // Point the chain at the migration capability first.
        buf[INFO_CAP_OFFSET..INFO_CAP_OFFSET + 4].copy_from_slice(&(INFO_LEN as u32).to_le_bytes());
        let ranges = parse_iova_ranges(&buf).unwrap().unwrap();
        assert_eq!(
            ranges,
            vec![IovaRange {
                start: 0,
                end: 0xffff_ffff
            }]
        );
    }

    #[test]
    fn no_capability_means_unknown_and_bad_buffers_are_errors() {
        let mut buf = vec![0u8; INFO_LEN];
        assert_eq!(parse_iova_ranges(&buf), Ok(None));
        buf[INFO_FLAGS] = INFO_FLAG_CAPS as u8;
        buf[INFO_CAP_OFFSET] = 200;
        assert!(matches!(
            parse_iova_ranges(&buf),
            Err(IovaError::Truncated { .. })
        ));
        let mut good = info_buffer(&[(0x1000, 0x2000)], false);
        good.truncate(good.len() - 4);
        assert!(matches!(
            parse_iova_ranges(&good),
            Err(IovaError::Truncated { .. })
        ));
        let reversed = info_buffer(&[(0x2000, 0x1000)], false);
        assert_eq!(
            parse_iova_ranges(&reversed),
            Err(IovaError::BadRange {
                start: 0x2000,
                end: 0x1000
            })
        );
        assert!(parse_iova_ranges(&[]).is_err());
    }
}
