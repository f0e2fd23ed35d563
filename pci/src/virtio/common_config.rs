//! The common configuration structure (virtio 1.2, 4.1.4.3) as a register file:
//! feature negotiation, device status, queue configuration and MSI-X vectors.
//!
//! It only keeps state and enforces the driver-facing rules; what a status change
//! means for the device (activate, reset) it reports as a [`StatusEffect`] for the
//! transport to carry out. Accesses of any size at any offset are accepted: each
//! byte lands in the field it belongs to, and a field touched by one access is
//! updated once with the merged value, so a 64-bit queue address written as two
//! 32-bit halves, or a 16-bit register written byte by byte, both work.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use devices::virtio::VIRTIO_F_VERSION_1;
use log::debug;
use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_DRIVER_OK, VIRTIO_CONFIG_S_FAILED, VIRTIO_CONFIG_S_FEATURES_OK,
    VIRTIO_CONFIG_S_NEEDS_RESET,
};

/// A vector register value meaning "no interrupt" (also what an out-of-range
/// vector reads back as, telling the driver the assignment failed).
pub const NO_VECTOR: u16 = 0xffff;

const DRIVER_OK: u8 = VIRTIO_CONFIG_S_DRIVER_OK as u8;
const FEATURES_OK: u8 = VIRTIO_CONFIG_S_FEATURES_OK as u8;
const NEEDS_RESET: u8 = VIRTIO_CONFIG_S_NEEDS_RESET as u8;
const FAILED: u8 = VIRTIO_CONFIG_S_FAILED as u8;

/// The fields of the structure, each with its offset and width in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    DeviceFeatureSelect,
    DeviceFeature,
    DriverFeatureSelect,
    DriverFeature,
    ConfigMsixVector,
    NumQueues,
    DeviceStatus,
    ConfigGeneration,
    QueueSelect,
    QueueSize,
    QueueMsixVector,
    QueueEnable,
    QueueNotifyOff,
    QueueDesc,
    QueueDriver,
    QueueDevice,
    /// Meaningful only with VIRTIO_F_NOTIF_CONFIG_DATA, which is never offered.
    QueueNotifConfigData,
    /// Meaningful only with VIRTIO_F_RING_RESET, which is never offered.
    QueueReset,
}

const FIELDS: [(Field, u64, u64); 18] = [
    (Field::DeviceFeatureSelect, 0x00, 4),
    (Field::DeviceFeature, 0x04, 4),
    (Field::DriverFeatureSelect, 0x08, 4),
    (Field::DriverFeature, 0x0c, 4),
    (Field::ConfigMsixVector, 0x10, 2),
    (Field::NumQueues, 0x12, 2),
    (Field::DeviceStatus, 0x14, 1),
    (Field::ConfigGeneration, 0x15, 1),
    (Field::QueueSelect, 0x16, 2),
    (Field::QueueSize, 0x18, 2),
    (Field::QueueMsixVector, 0x1a, 2),
    (Field::QueueEnable, 0x1c, 2),
    (Field::QueueNotifyOff, 0x1e, 2),
    (Field::QueueDesc, 0x20, 8),
    (Field::QueueDriver, 0x28, 8),
    (Field::QueueDevice, 0x30, 8),
    (Field::QueueNotifConfigData, 0x38, 2),
    (Field::QueueReset, 0x3a, 2),
];

/// Bytes of the structure; offsets past it read as zero and ignore writes.
pub const COMMON_CFG_SIZE: u64 = 0x3c;

/// The field byte `offset` belongs to, with the field's offset.
fn field_at(offset: u64) -> Option<(Field, u64)> {
    FIELDS
        .iter()
        .find(|(_, start, width)| (*start..start + width).contains(&offset))
        .map(|&(field, start, _)| (field, start))
}

/// One queue's configuration as the driver wrote it. The addresses are kept as
/// written; the transport validates them (alignment, guest memory) on DRIVER_OK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueConfig {
    pub max_size: u16,
    pub size: u16,
    pub enabled: bool,
    pub msix_vector: u16,
    /// Descriptor table.
    pub desc: u64,
    /// Driver (available) ring.
    pub driver: u64,
    /// Device (used) ring.
    pub device: u64,
}

impl QueueConfig {
    fn new(max_size: u16) -> Self {
        Self {
            max_size,
            size: max_size,
            enabled: false,
            msix_vector: NO_VECTOR,
            desc: 0,
            driver: 0,
            device: 0,
        }
    }
}

/// What the transport must do after a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusEffect {
    None,
    /// The driver wrote 0 to device_status: the register file is back to its reset
    /// state; the device must be reset too.
    Reset,
    /// The driver set DRIVER_OK (after a successful FEATURES_OK): activate.
    DriverOk,
}

/// The common configuration registers of one device.
pub struct CommonConfig {
    /// What the device offers, VIRTIO_F_VERSION_1 included.
    device_features: u64,
    device_feature_select: u32,
    driver_feature_select: u32,
    driver_features: u64,
    config_msix_vector: u16,
    status: u8,
    queue_select: u16,
    queues: Vec<QueueConfig>,
    /// Entries in the MSI-X table; vectors at or past it read back as NO_VECTOR.
    msix_vectors: u16,
    /// Shared with the interrupt side, which bumps it on configuration changes.
    generation: Arc<AtomicU8>,
}

impl CommonConfig {
    /// `queue_max_sizes` has one entry per queue (at most 65535 queues);
    /// `device_features` gets VIRTIO_F_VERSION_1 added.
    pub fn new(
        device_features: u64,
        queue_max_sizes: &[u16],
        msix_vectors: u16,
        generation: Arc<AtomicU8>,
    ) -> Self {
        Self {
            device_features: device_features | VIRTIO_F_VERSION_1,
            device_feature_select: 0,
            driver_feature_select: 0,
            driver_features: 0,
            config_msix_vector: NO_VECTOR,
            status: 0,
            queue_select: 0,
            queues: queue_max_sizes
                .iter()
                .map(|&m| QueueConfig::new(m))
                .collect(),
            msix_vectors,
            generation,
        }
    }

    pub fn device_features(&self) -> u64 {
        self.device_features
    }

    /// The features the driver acknowledged. Final once FEATURES_OK is accepted.
    pub fn driver_features(&self) -> u64 {
        self.driver_features
    }

    pub fn status(&self) -> u8 {
        self.status
    }

    pub fn queues(&self) -> &[QueueConfig] {
        &self.queues
    }

    pub fn config_msix_vector(&self) -> u16 {
        self.config_msix_vector
    }

    pub fn generation(&self) -> u8 {
        self.generation.load(Ordering::Acquire)
    }

    /// Activation failed: the driver must reset the device (virtio 1.2, 2.1.1).
    pub fn set_needs_reset(&mut self) {
        self.status |= NEEDS_RESET;
    }

    /// Back to the state after power-on: nothing negotiated, queues disabled with
    /// their maximum size, no vectors. The generation moves on so a driver reading
    /// across the reset sees a change.
    pub fn reset(&mut self) {
        self.device_feature_select = 0;
        self.driver_feature_select = 0;
        self.driver_features = 0;
        self.config_msix_vector = NO_VECTOR;
        self.status = 0;
        self.queue_select = 0;
        for q in &mut self.queues {
            *q = QueueConfig::new(q.max_size);
        }
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// A guest read at `offset` from the structure's start.
    pub fn read(&self, offset: u64, data: &mut [u8]) {
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = offset
                .checked_add(i as u64)
                .and_then(|o| {
                    let (field, start) = field_at(o)?;
                    Some((self.field_value(field) >> ((o - start) * 8)) as u8)
                })
                .unwrap_or(0);
        }
    }

    /// A guest write at `offset` from the structure's start.
    pub fn write(&mut self, offset: u64, data: &[u8]) -> StatusEffect {
        // Fields in the order the access touches them, with merged values.
        let mut touched: Vec<(Field, u64)> = Vec::new();
        for (i, &byte) in data.iter().enumerate() {
            let Some((field, start, o)) = offset
                .checked_add(i as u64)
                .and_then(|o| field_at(o).map(|(f, s)| (f, s, o)))
            else {
                continue;
            };
            let shift = (o - start) * 8;
            let merge = |value: u64| (value & !(0xff << shift)) | (u64::from(byte) << shift);
            match touched.iter_mut().find(|(f, _)| *f == field) {
                Some((_, value)) => *value = merge(*value),
                None => touched.push((field, merge(self.field_value(field)))),
            }
        }
        let mut effect = StatusEffect::None;
        for (field, value) in touched {
            let e = self.write_field(field, value);
            if e != StatusEffect::None {
                effect = e;
            }
        }
        effect
    }

    fn selected(&self) -> Option<&QueueConfig> {
        self.queues.get(usize::from(self.queue_select))
    }

    fn selected_mut(&mut self) -> Option<&mut QueueConfig> {
        self.queues.get_mut(usize::from(self.queue_select))
    }

    fn field_value(&self, field: Field) -> u64 {
        let q = self.selected();
        match field {
            Field::DeviceFeatureSelect => u64::from(self.device_feature_select),
            Field::DeviceFeature => {
                feature_window(self.device_features, self.device_feature_select)
            }
            Field::DriverFeatureSelect => u64::from(self.driver_feature_select),
            Field::DriverFeature => {
                feature_window(self.driver_features, self.driver_feature_select)
            }
            Field::ConfigMsixVector => u64::from(self.config_msix_vector),
            Field::NumQueues => self.queues.len() as u64,
            Field::DeviceStatus => u64::from(self.status),
            Field::ConfigGeneration => u64::from(self.generation()),
            Field::QueueSelect => u64::from(self.queue_select),
            Field::QueueSize => q.map_or(0, |q| u64::from(q.size)),
            Field::QueueMsixVector => q.map_or(u64::from(NO_VECTOR), |q| u64::from(q.msix_vector)),
            Field::QueueEnable => q.map_or(0, |q| u64::from(q.enabled)),
            Field::QueueNotifyOff => q.map_or(0, |_| u64::from(self.queue_select)),
            Field::QueueDesc => q.map_or(0, |q| q.desc),
            Field::QueueDriver => q.map_or(0, |q| q.driver),
            Field::QueueDevice => q.map_or(0, |q| q.device),
            Field::QueueNotifConfigData | Field::QueueReset => 0,
        }
    }

    fn write_field(&mut self, field: Field, value: u64) -> StatusEffect {
        match field {
            Field::DeviceFeatureSelect => self.device_feature_select = value as u32,
            Field::DriverFeatureSelect => self.driver_feature_select = value as u32,
            Field::DriverFeature => self.write_driver_features(value as u32),
            Field::ConfigMsixVector => self.config_msix_vector = self.checked_vector(value as u16),
            Field::DeviceStatus => return self.write_status(value as u8),
            Field::QueueSelect => self.queue_select = value as u16,
            Field::QueueMsixVector => {
                let vector = self.checked_vector(value as u16);
                if let Some(q) = self.selected_mut() {
                    q.msix_vector = vector;
                }
            }
            Field::QueueSize => {
                let size = value as u16;
                if let Some(q) = self.configurable_queue() {
                    if size.is_power_of_two() && size <= q.max_size {
                        q.size = size;
                    } else {
                        debug!("virtio: ignoring queue size {size} (max {})", q.max_size);
                    }
                }
            }
            // Only 1 is meaningful; a driver may not disable a queue but by reset.
            Field::QueueEnable => {
                if value == 1 {
                    if let Some(q) = self.configurable_queue() {
                        q.enabled = true;
                    }
                }
            }
            Field::QueueDesc => {
                if let Some(q) = self.configurable_queue() {
                    q.desc = value;
                }
            }
            Field::QueueDriver => {
                if let Some(q) = self.configurable_queue() {
                    q.driver = value;
                }
            }
            Field::QueueDevice => {
                if let Some(q) = self.configurable_queue() {
                    q.device = value;
                }
            }
            Field::DeviceFeature
            | Field::NumQueues
            | Field::ConfigGeneration
            | Field::QueueNotifyOff
            | Field::QueueNotifConfigData
            | Field::QueueReset => {}
        }
        StatusEffect::None
    }

    /// The selected queue while its size and addresses may still change: it exists,
    /// is not enabled yet and the device is not live.
    fn configurable_queue(&mut self) -> Option<&mut QueueConfig> {
        let live = self.status & DRIVER_OK != 0;
        self.selected_mut().filter(|q| !q.enabled && !live)
    }

    fn checked_vector(&self, vector: u16) -> u16 {
        if vector < self.msix_vectors {
            vector
        } else {
            NO_VECTOR
        }
    }

    fn write_driver_features(&mut self, value: u32) {
        if self.status & FEATURES_OK != 0 {
            debug!("virtio: ignoring driver feature write after FEATURES_OK");
            return;
        }
        let shift = match self.driver_feature_select {
            0 => 0,
            1 => 32,
            _ => return,
        };
        self.driver_features =
            (self.driver_features & !(0xffff_ffff << shift)) | (u64::from(value) << shift);
    }

    fn write_status(&mut self, value: u8) -> StatusEffect {
        if value == 0 {
            self.reset();
            return StatusEffect::Reset;
        }
        // Bits only get set, never cleared, short of a reset; NEEDS_RESET is the
        // device's to set.
        let old = self.status;
        let mut new = old | (value & !NEEDS_RESET);
        if new & FEATURES_OK != 0 && old & FEATURES_OK == 0 && !self.features_acceptable() {
            debug!(
                "virtio: refusing FEATURES_OK: driver features {:#x}, device offers {:#x}",
                self.driver_features, self.device_features
            );
            new &= !FEATURES_OK;
        }
        let mut effect = StatusEffect::None;
        if new & DRIVER_OK != 0 && old & DRIVER_OK == 0 {
            if new & FEATURES_OK == 0 || new & (FAILED | NEEDS_RESET) != 0 {
                debug!("virtio: ignoring DRIVER_OK in status {new:#x}");
                new &= !DRIVER_OK;
            } else {
                effect = StatusEffect::DriverOk;
            }
        }
        self.status = new;
        effect
    }

    fn features_acceptable(&self) -> bool {
        self.driver_features & !self.device_features == 0
            && self.driver_features & VIRTIO_F_VERSION_1 != 0
    }
}

fn feature_window(features: u64, select: u32) -> u64 {
    match select {
        0 => features & 0xffff_ffff,
        1 => features >> 32,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_bindings::virtio_config::{VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER};

    const ACK: u8 = VIRTIO_CONFIG_S_ACKNOWLEDGE as u8;
    const DRIVER: u8 = VIRTIO_CONFIG_S_DRIVER as u8;
    const FEATURE_X: u64 = 1 << 5;

    fn common() -> CommonConfig {
        CommonConfig::new(FEATURE_X, &[256, 64], 3, Arc::new(AtomicU8::new(0)))
    }

    fn r16(c: &CommonConfig, off: u64) -> u16 {
        let mut b = [0u8; 2];
        c.read(off, &mut b);
        u16::from_le_bytes(b)
    }

    fn r32(c: &CommonConfig, off: u64) -> u32 {
        let mut b = [0u8; 4];
        c.read(off, &mut b);
        u32::from_le_bytes(b)
    }

    fn r8(c: &CommonConfig, off: u64) -> u8 {
        let mut b = [0u8; 1];
        c.read(off, &mut b);
        b[0]
    }

    fn w16(c: &mut CommonConfig, off: u64, v: u16) -> StatusEffect {
        c.write(off, &v.to_le_bytes())
    }

    fn w32(c: &mut CommonConfig, off: u64, v: u32) -> StatusEffect {
        c.write(off, &v.to_le_bytes())
    }

    fn negotiate(c: &mut CommonConfig, features: u64) -> StatusEffect {
        c.write(0x14, &[ACK | DRIVER]);
        w32(c, 0x08, 0);
        w32(c, 0x0c, features as u32);
        w32(c, 0x08, 1);
        w32(c, 0x0c, (features >> 32) as u32);
        c.write(0x14, &[ACK | DRIVER | FEATURES_OK])
    }

    #[test]
    fn feature_windows_show_the_offer_with_version_1() {
        let mut c = common();
        assert_eq!(r32(&c, 0x04), FEATURE_X as u32);
        w32(&mut c, 0x00, 1);
        assert_eq!(r32(&c, 0x04), 1, "VERSION_1 is bit 32");
        w32(&mut c, 0x00, 7);
        assert_eq!(r32(&c, 0x04), 0);
        w32(&mut c, 0x04, 0xffff_ffff);
        w32(&mut c, 0x00, 0);
        assert_eq!(
            r32(&c, 0x04),
            FEATURE_X as u32,
            "device_feature is read-only"
        );
        assert_eq!(r16(&c, 0x12), 2);
    }

    #[test]
    fn features_ok_is_accepted_for_an_offered_subset_with_version_1() {
        let mut c = common();
        assert_eq!(
            negotiate(&mut c, FEATURE_X | VIRTIO_F_VERSION_1),
            StatusEffect::None
        );
        assert_eq!(r8(&c, 0x14), ACK | DRIVER | FEATURES_OK);
        assert_eq!(c.driver_features(), FEATURE_X | VIRTIO_F_VERSION_1);
        // Frozen once accepted.
        w32(&mut c, 0x08, 0);
        w32(&mut c, 0x0c, 0);
        assert_eq!(c.driver_features(), FEATURE_X | VIRTIO_F_VERSION_1);
    }

    #[test]
    fn features_ok_is_refused_without_version_1_or_with_unoffered_bits() {
        let mut c = common();
        negotiate(&mut c, FEATURE_X);
        assert_eq!(r8(&c, 0x14), ACK | DRIVER, "read back without FEATURES_OK");
        let mut c = common();
        negotiate(&mut c, VIRTIO_F_VERSION_1 | 1 << 7);
        assert_eq!(r8(&c, 0x14) & FEATURES_OK, 0);
        // DRIVER_OK without FEATURES_OK does not start the device.
        assert_eq!(
            c.write(0x14, &[ACK | DRIVER | DRIVER_OK]),
            StatusEffect::None
        );
        assert_eq!(r8(&c, 0x14) & DRIVER_OK, 0);
    }

    #[test]
    fn driver_ok_after_features_ok_asks_for_activation_once() {
        let mut c = common();
        negotiate(&mut c, VIRTIO_F_VERSION_1);
        let all = ACK | DRIVER | FEATURES_OK | DRIVER_OK;
        assert_eq!(c.write(0x14, &[all]), StatusEffect::DriverOk);
        assert_eq!(c.write(0x14, &[all]), StatusEffect::None);
        assert_eq!(c.status(), all);
        c.set_needs_reset();
        assert_eq!(r8(&c, 0x14), all | NEEDS_RESET);
    }

    #[test]
    fn driver_cannot_set_needs_reset_and_failed_blocks_driver_ok() {
        let mut c = common();
        c.write(0x14, &[ACK | NEEDS_RESET]);
        assert_eq!(c.status(), ACK);
        negotiate(&mut c, VIRTIO_F_VERSION_1);
        c.write(0x14, &[FAILED]);
        assert_eq!(c.write(0x14, &[DRIVER_OK]), StatusEffect::None);
        assert_eq!(c.status() & DRIVER_OK, 0);
    }

    #[test]
    fn queue_registers_follow_queue_select() {
        let mut c = common();
        assert_eq!(r16(&c, 0x18), 256);
        w16(&mut c, 0x16, 1);
        assert_eq!(r16(&c, 0x18), 64);
        assert_eq!(r16(&c, 0x1e), 1, "queue_notify_off is the index");
        w16(&mut c, 0x16, 2);
        assert_eq!(r16(&c, 0x18), 0, "no queue 2");
        w16(&mut c, 0x18, 8);
        w16(&mut c, 0x1c, 1);
        c.write(0x20, &u64::MAX.to_le_bytes());
        assert_eq!(r16(&c, 0x1c), 0);
        assert_eq!(r16(&c, 0x1a), NO_VECTOR);
        assert_eq!(c.queues()[0], QueueConfig::new(256));
        assert_eq!(c.queues()[1], QueueConfig::new(64));
    }

    #[test]
    fn queue_size_takes_powers_of_two_up_to_the_maximum() {
        let mut c = common();
        w16(&mut c, 0x16, 1);
        for bad in [0, 3, 100, 128, u16::MAX] {
            w16(&mut c, 0x18, bad);
            assert_eq!(r16(&c, 0x18), 64, "size {bad} ignored");
        }
        w16(&mut c, 0x18, 16);
        assert_eq!(r16(&c, 0x18), 16);
        w16(&mut c, 0x18, 1);
        assert_eq!(c.queues()[1].size, 1);
    }

    #[test]
    fn queue_addresses_take_two_32_bit_halves_and_freeze_once_enabled() {
        let mut c = common();
        w32(&mut c, 0x20, 0x1234_5000);
        w32(&mut c, 0x24, 0x1);
        c.write(0x28, &0x2000u64.to_le_bytes());
        c.write(0x30, &[0x00, 0x30]);
        assert_eq!(r32(&c, 0x24), 1);
        let q = &c.queues()[0];
        assert_eq!(
            (q.desc, q.driver, q.device),
            (0x1_1234_5000, 0x2000, 0x3000)
        );
        w16(&mut c, 0x1c, 1);
        assert_eq!(r16(&c, 0x1c), 1);
        w16(&mut c, 0x1c, 0);
        assert_eq!(r16(&c, 0x1c), 1, "a queue is disabled only by reset");
        w32(&mut c, 0x20, 0);
        w16(&mut c, 0x18, 2);
        assert_eq!(c.queues()[0].desc, 0x1_1234_5000);
        assert_eq!(c.queues()[0].size, 256);
    }

    #[test]
    fn vectors_beyond_the_table_read_back_as_no_vector() {
        let mut c = common();
        w16(&mut c, 0x10, 0);
        assert_eq!(r16(&c, 0x10), 0);
        w16(&mut c, 0x10, 3);
        assert_eq!(r16(&c, 0x10), NO_VECTOR);
        w16(&mut c, 0x1a, 2);
        assert_eq!(r16(&c, 0x1a), 2);
        w16(&mut c, 0x1a, 0x8000);
        assert_eq!(r16(&c, 0x1a), NO_VECTOR);
        w16(&mut c, 0x16, 9);
        w16(&mut c, 0x1a, 1);
        assert_eq!(r16(&c, 0x1a), NO_VECTOR);
        assert_eq!(c.queues()[0].msix_vector, NO_VECTOR);
    }

    #[test]
    fn writing_zero_resets_everything_and_bumps_the_generation() {
        let mut c = common();
        negotiate(&mut c, VIRTIO_F_VERSION_1);
        w16(&mut c, 0x10, 0);
        w16(&mut c, 0x1a, 1);
        w16(&mut c, 0x18, 4);
        w32(&mut c, 0x20, 0x1000);
        w16(&mut c, 0x1c, 1);
        w16(&mut c, 0x16, 1);
        let generation = r8(&c, 0x15);
        assert_eq!(c.write(0x14, &[0]), StatusEffect::Reset);
        assert_eq!(r8(&c, 0x14), 0);
        assert_eq!(r8(&c, 0x15), generation.wrapping_add(1));
        assert_eq!(r16(&c, 0x10), NO_VECTOR);
        assert_eq!(r16(&c, 0x16), 0);
        assert_eq!(c.driver_features(), 0);
        assert_eq!(c.queues()[0], QueueConfig::new(256));
    }

    #[test]
    fn wide_and_odd_accesses_land_in_the_right_fields() {
        let mut c = common();
        // One 4-byte write covering config_msix_vector and the read-only num_queues.
        w32(&mut c, 0x10, 0xffff_0001);
        assert_eq!(r16(&c, 0x10), 1);
        assert_eq!(r16(&c, 0x12), 2);
        // Byte-wise write of queue_select.
        c.write(0x16, &[1]);
        c.write(0x17, &[0]);
        assert_eq!(r16(&c, 0x16), 1);
        let mut tail = [0xaau8; 8];
        c.read(0x38, &mut tail);
        assert_eq!(tail, [0; 8], "unoffered fields and the gap read zero");
        c.read(u64::MAX - 2, &mut tail);
        assert_eq!(tail, [0; 8]);
        assert_eq!(c.write(u64::MAX - 1, &[0; 8]), StatusEffect::None);
        c.write(0x3c, &[0xff; 16]);
        assert_eq!(r16(&c, 0x16), 1);
    }
}
