//! Decoding `VFIO_DEVICE_GET_REGION_INFO` answers.
//!
//! `struct vfio_region_info` is argsz, flags, index, cap_offset (u32 each), size and
//! offset (u64). With `VFIO_REGION_INFO_FLAG_CAPS` the kernel appends a chain of
//! capabilities, each starting `{id: u16, version: u16, next: u32}` with `next`
//! counted from the start of the structure (0 ends the chain). The sparse-mmap one
//! (ID 1) carries `nr_areas: u32, reserved: u32` and `nr_areas` pairs of
//! `{offset: u64, size: u64}`: the only parts of the region that may be mmapped.
//! When the first call's buffer was too small for the capabilities, the kernel sets
//! `argsz` to the size needed and the call is repeated with that much.

use crate::vfio::ops::{RegionInfo, SparseArea};

/// Bytes of `struct vfio_region_info`.
pub const REGION_INFO_LEN: usize = 32;
const FLAG_READ: u32 = 1 << 0;
const FLAG_WRITE: u32 = 1 << 1;
const FLAG_MMAP: u32 = 1 << 2;
const FLAG_CAPS: u32 = 1 << 3;
const CAP_SPARSE_MMAP: u16 = 1;
const SPARSE_HEADER_LEN: usize = 16;
const SPARSE_AREA_LEN: usize = 16;
/// Bounds a capability chain walk.
const MAX_CAPS: usize = 64;

fn u16_at(buf: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(
        buf.get(at..at.checked_add(2)?)?.try_into().ok()?,
    ))
}

fn u32_at(buf: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        buf.get(at..at.checked_add(4)?)?.try_into().ok()?,
    ))
}

fn u64_at(buf: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(
        buf.get(at..at.checked_add(8)?)?.try_into().ok()?,
    ))
}

/// What a filled buffer says: the region and its offset in the device fd, or
/// `None` when the buffer is shorter than the structure. Capabilities that run
/// past the buffer are ignored (the region is then treated as mappable whole or
/// not at all, per its flags).
pub fn parse_region_info(buf: &[u8]) -> Option<(RegionInfo, u64)> {
    let flags = u32_at(buf, 4)?;
    let size = u64_at(buf, 16)?;
    let offset = u64_at(buf, 24)?;
    let mut sparse_areas = None;
    if flags & FLAG_CAPS != 0 {
        let mut at = u32_at(buf, 12)? as usize;
        let mut walked = 0;
        while at >= REGION_INFO_LEN && walked < MAX_CAPS {
            walked += 1;
            let (Some(id), Some(next)) = (u16_at(buf, at), u32_at(buf, at + 4)) else {
                break;
            };
            if id == CAP_SPARSE_MMAP {
                sparse_areas = sparse_mmap_areas(buf, at);
            }
            at = next as usize;
        }
    }
    let info = RegionInfo {
        size,
        readable: flags & FLAG_READ != 0,
        writable: flags & FLAG_WRITE != 0,
        mappable: flags & FLAG_MMAP != 0,
        sparse_areas,
    };
    Some((info, offset))
}

fn sparse_mmap_areas(buf: &[u8], at: usize) -> Option<Vec<SparseArea>> {
    let count = u32_at(buf, at + 8)? as usize;
    (0..count)
        .map(|i| {
            let area = at + SPARSE_HEADER_LEN + i.checked_mul(SPARSE_AREA_LEN)?;
            Some(SparseArea {
                offset: u64_at(buf, area)?,
                size: u64_at(buf, area + 8)?,
            })
        })
        .collect()
}

/// The `argsz` the kernel asked for.
pub fn requested_argsz(buf: &[u8]) -> Option<usize> {
    u32_at(buf, 0).map(|n| n as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(flags: u32, size: u64, offset: u64, caps: &[u8]) -> Vec<u8> {
        let mut buf = Vec::new();
        buf.extend_from_slice(&((REGION_INFO_LEN + caps.len()) as u32).to_le_bytes());
        buf.extend_from_slice(&flags.to_le_bytes());
        buf.extend_from_slice(&0u32.to_le_bytes());
        let cap_offset = if caps.is_empty() {
            0
        } else {
            REGION_INFO_LEN as u32
        };
        buf.extend_from_slice(&cap_offset.to_le_bytes());
        buf.extend_from_slice(&size.to_le_bytes());
        buf.extend_from_slice(&offset.to_le_bytes());
        buf.extend_from_slice(caps);
        buf
    }

    fn cap(id: u16, next: u32, body: &[u8]) -> Vec<u8> {
        let mut c = Vec::new();
        c.extend_from_slice(&id.to_le_bytes());
        c.extend_from_slice(&1u16.to_le_bytes());
        c.extend_from_slice(&next.to_le_bytes());
        c.extend_from_slice(body);
        c
    }

    fn sparse_body(areas: &[(u64, u64)]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&(areas.len() as u32).to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes());
        for (o, s) in areas {
            b.extend_from_slice(&o.to_le_bytes());
            b.extend_from_slice(&s.to_le_bytes());
        }
        b
    }

    #[test]
    fn plain_region() {
        let buf = info(
            FLAG_READ | FLAG_WRITE | FLAG_MMAP,
            1 << 24,
            0x1000_0000_0000,
            &[],
        );
        let (r, off) = parse_region_info(&buf).unwrap();
        assert_eq!(off, 0x1000_0000_0000);
        assert_eq!(
            r,
            RegionInfo {
                size: 1 << 24,
                readable: true,
                writable: true,
                mappable: true,
                sparse_areas: None
            }
        );
        assert_eq!(requested_argsz(&buf), Some(REGION_INFO_LEN));
        assert!(parse_region_info(&buf[..20]).is_none());
    }

    #[test]
    fn sparse_areas_after_another_capability() {
        // An MSI-X-mappable capability (ID 3, header only), then sparse mmap.
        let mut caps = cap(3, (REGION_INFO_LEN + 8) as u32, &[]);
        caps.extend(cap(
            1,
            0,
            &sparse_body(&[(0, 0xb_0000), (0xb_2000, 0x4e000)]),
        ));
        let buf = info(FLAG_READ | FLAG_MMAP | FLAG_CAPS, 1 << 24, 0, &caps);
        let (r, _) = parse_region_info(&buf).unwrap();
        assert_eq!(
            r.sparse_areas,
            Some(vec![
                SparseArea {
                    offset: 0,
                    size: 0xb_0000
                },
                SparseArea {
                    offset: 0xb_2000,
                    size: 0x4e000
                },
            ])
        );
        assert!(!r.writable);
    }

    #[test]
    fn broken_chains_are_survived() {
        // Sparse capability claiming more areas than the buffer holds.
        let mut body = sparse_body(&[(0, 0x1000)]);
        body[0] = 9;
        let buf = info(FLAG_MMAP | FLAG_CAPS, 1 << 20, 0, &cap(1, 0, &body));
        assert_eq!(parse_region_info(&buf).unwrap().0.sparse_areas, None);
        // A chain that loops onto itself stops.
        let buf = info(
            FLAG_MMAP | FLAG_CAPS,
            1 << 20,
            0,
            &cap(2, REGION_INFO_LEN as u32, &[]),
        );
        assert!(parse_region_info(&buf).is_some());
    }
}
