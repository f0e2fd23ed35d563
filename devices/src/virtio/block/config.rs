//! The virtio-blk configuration space (`struct virtio_blk_config`, virtio 1.2 5.2.4),
//! little-endian, as far as the fields of the features this device offers.

use super::image::SECTOR_SIZE;
use super::request::{MAX_RANGES, MAX_RANGE_SECTORS};

/// Up to and including `write_zeroes_may_unmap` and its padding.
pub(crate) const CONFIG_LEN: usize = 60;

const CAPACITY: usize = 0;
const SEG_MAX: usize = 12;
const BLK_SIZE: usize = 20;
const NUM_QUEUES: usize = 34;
const MAX_DISCARD_SECTORS: usize = 36;
const MAX_DISCARD_SEG: usize = 40;
const DISCARD_SECTOR_ALIGNMENT: usize = 44;
const MAX_WRITE_ZEROES_SECTORS: usize = 48;
const MAX_WRITE_ZEROES_SEG: usize = 52;
const WRITE_ZEROES_MAY_UNMAP: usize = 56;

/// File systems punch holes in whole pages; telling the driver lets it skip
/// discards that could not free anything.
const DISCARD_ALIGNMENT_SECTORS: u32 = 4096 / SECTOR_SIZE as u32;

pub(crate) fn config_space(capacity_bytes: u64, seg_max: u32) -> [u8; CONFIG_LEN] {
    let mut c = [0u8; CONFIG_LEN];
    put(
        &mut c,
        CAPACITY,
        &(capacity_bytes / SECTOR_SIZE).to_le_bytes(),
    );
    put(&mut c, SEG_MAX, &seg_max.to_le_bytes());
    put(&mut c, BLK_SIZE, &(SECTOR_SIZE as u32).to_le_bytes());
    put(&mut c, NUM_QUEUES, &1u16.to_le_bytes());
    // The discard and write-zeroes fields mean something only when the features
    // are offered (writable disks); filling them always is harmless.
    put(
        &mut c,
        MAX_DISCARD_SECTORS,
        &MAX_RANGE_SECTORS.to_le_bytes(),
    );
    put(&mut c, MAX_DISCARD_SEG, &MAX_RANGES.to_le_bytes());
    put(
        &mut c,
        DISCARD_SECTOR_ALIGNMENT,
        &DISCARD_ALIGNMENT_SECTORS.to_le_bytes(),
    );
    put(
        &mut c,
        MAX_WRITE_ZEROES_SECTORS,
        &MAX_RANGE_SECTORS.to_le_bytes(),
    );
    put(&mut c, MAX_WRITE_ZEROES_SEG, &MAX_RANGES.to_le_bytes());
    c[WRITE_ZEROES_MAY_UNMAP] = 1;
    c
}

fn put(config: &mut [u8; CONFIG_LEN], offset: usize, bytes: &[u8]) {
    config[offset..offset + bytes.len()].copy_from_slice(bytes);
}

/// Copies the part of `config` at `offset` into `data`; bytes past its end read as
/// zero. `offset` and the length come from the guest.
pub(crate) fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(start) = usize::try_from(offset) else {
        return;
    };
    let Some(src) = config.get(start..) else {
        return;
    };
    let n = src.len().min(data.len());
    data[..n].copy_from_slice(&src[..n]);
}
