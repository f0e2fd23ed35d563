//! Where each virtio structure sits in BAR0, and the vendor-specific capabilities
//! (virtio 1.2, 4.1.4) that tell the driver so.
//!
//! ```text
//! 0x0000  common configuration   (0x1000)
//! 0x1000  ISR status             (0x1000, one byte used)
//! 0x2000  device configuration   (0x1000)
//! 0x3000  notifications          (4 bytes per queue)
//! 0x4000  MSI-X table            (16 bytes per vector)
//! 0x6000  MSI-X PBA
//! ```
//!
//! Every structure starts on a page of its own so a driver can map each alone.
//! Each queue notifies at `NOTIFY_OFFSET + queue * NOTIFY_OFF_MULTIPLIER`: its own
//! address, so an ioeventfd needs no data match to tell queues apart.

use crate::config::{PciCapabilityId, PciConfigError, PciConfiguration};
use crate::msix::{MsixLayout, MsixRegion};

/// Bytes of BAR0. A power of two, so the BAR can be placed anywhere aligned to it.
pub const VIRTIO_PCI_BAR_SIZE: u64 = 0x8000;
/// BAR0's index.
pub const BAR0: u8 = 0;

pub const COMMON_CFG_OFFSET: u64 = 0x0000;
pub const COMMON_CFG_LEN: u64 = 0x1000;
pub const ISR_OFFSET: u64 = 0x1000;
pub const ISR_LEN: u64 = 0x1000;
pub const DEVICE_CFG_OFFSET: u64 = 0x2000;
pub const DEVICE_CFG_LEN: u64 = 0x1000;
pub const NOTIFY_OFFSET: u64 = 0x3000;
pub const NOTIFY_LEN: u64 = 0x1000;
/// Bytes between two queues' notification addresses.
pub const NOTIFY_OFF_MULTIPLIER: u32 = 4;
pub const MSIX_TABLE_OFFSET: u32 = 0x4000;
pub const MSIX_PBA_OFFSET: u32 = 0x6000;

/// Most queues a device may have: the vectors (queues + 1) must fit the table's
/// 0x2000 bytes and the notification slots their page.
pub const MAX_QUEUES: usize = 256;

/// `cfg_type` of a virtio PCI capability.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum VirtioCapType {
    Common = 1,
    Notify = 2,
    Isr = 3,
    Device = 4,
    PciCfg = 5,
}

/// Bytes of a `virtio_pci_cap` including the PCI ID and next pointer.
const VIRTIO_CAP_LEN: u8 = 16;
/// `virtio_pci_notify_cap`: the cap plus `notify_off_multiplier`.
const NOTIFY_CAP_LEN: u8 = VIRTIO_CAP_LEN + 4;
/// `virtio_pci_cfg_cap`: the cap plus the 4-byte data window.
pub(crate) const PCI_CFG_CAP_LEN: u8 = VIRTIO_CAP_LEN + 4;

/// Offsets inside a `virtio_pci_cap`, from its first byte.
pub(crate) const CAP_BAR: usize = 4;
pub(crate) const CAP_OFFSET: usize = 8;
pub(crate) const CAP_LENGTH: usize = 12;
pub(crate) const PCI_CFG_DATA: usize = 16;

/// A BAR0 structure and the offset into it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bar0Region {
    Common(u64),
    Isr(u64),
    DeviceConfig(u64),
    Notify(u64),
    Msix(MsixRegion),
}

/// The MSI-X layout for `vectors` vectors (at most `MAX_QUEUES + 1`).
pub fn msix_layout(vectors: usize) -> MsixLayout {
    MsixLayout {
        vectors,
        table_bar: BAR0,
        table_offset: MSIX_TABLE_OFFSET,
        pba_bar: BAR0,
        pba_offset: MSIX_PBA_OFFSET,
    }
}

/// Which structure byte `offset` of BAR0 falls in; `None` for the gaps.
pub fn locate(offset: u64, msix: &MsixLayout) -> Option<Bar0Region> {
    let within = |start: u64, len: u64| offset.checked_sub(start).filter(|&o| o < len);
    if let Some(o) = within(COMMON_CFG_OFFSET, COMMON_CFG_LEN) {
        return Some(Bar0Region::Common(o));
    }
    if let Some(o) = within(ISR_OFFSET, ISR_LEN) {
        return Some(Bar0Region::Isr(o));
    }
    if let Some(o) = within(DEVICE_CFG_OFFSET, DEVICE_CFG_LEN) {
        return Some(Bar0Region::DeviceConfig(o));
    }
    if let Some(o) = within(NOTIFY_OFFSET, NOTIFY_LEN) {
        return Some(Bar0Region::Notify(o));
    }
    msix.locate(BAR0, offset).map(Bar0Region::Msix)
}

/// The queue a notification-region offset belongs to.
pub fn notify_queue(offset: u64) -> u64 {
    offset / u64::from(NOTIFY_OFF_MULTIPLIER)
}

/// The guest address queue `queue` notifies at when BAR0 is at `bar0`.
pub fn notify_addr(bar0: u64, queue: usize) -> u64 {
    bar0 + NOTIFY_OFFSET + queue as u64 * u64::from(NOTIFY_OFF_MULTIPLIER)
}

fn cap_body(len: u8, cfg_type: VirtioCapType, offset: u64, length: u64) -> Vec<u8> {
    let mut body = vec![len, cfg_type as u8, BAR0, 0, 0, 0];
    // Every offset and length here is below VIRTIO_PCI_BAR_SIZE.
    body.extend_from_slice(&(offset as u32).to_le_bytes());
    body.extend_from_slice(&(length as u32).to_le_bytes());
    body
}

/// Adds the common, notify, ISR, device and PCI-configuration-access capabilities
/// for a device with `num_queues` queues. Returns the offset of the PCI
/// configuration access capability, whose window the transport serves.
pub fn add_virtio_capabilities(
    config: &mut PciConfiguration,
    num_queues: usize,
) -> Result<usize, PciConfigError> {
    let vendor = PciCapabilityId::VENDOR_SPECIFIC;
    config.add_capability(
        vendor,
        &cap_body(
            VIRTIO_CAP_LEN,
            VirtioCapType::Common,
            COMMON_CFG_OFFSET,
            COMMON_CFG_LEN,
        ),
        &[],
    )?;
    let mut notify = cap_body(
        NOTIFY_CAP_LEN,
        VirtioCapType::Notify,
        NOTIFY_OFFSET,
        num_queues as u64 * u64::from(NOTIFY_OFF_MULTIPLIER),
    );
    notify.extend_from_slice(&NOTIFY_OFF_MULTIPLIER.to_le_bytes());
    config.add_capability(vendor, &notify, &[])?;
    config.add_capability(
        vendor,
        &cap_body(VIRTIO_CAP_LEN, VirtioCapType::Isr, ISR_OFFSET, ISR_LEN),
        &[],
    )?;
    config.add_capability(
        vendor,
        &cap_body(
            VIRTIO_CAP_LEN,
            VirtioCapType::Device,
            DEVICE_CFG_OFFSET,
            DEVICE_CFG_LEN,
        ),
        &[],
    )?;
    // The driver picks the BAR, offset and length of each access through this
    // window, then reads or writes the data dword.
    let mut pci_cfg = cap_body(PCI_CFG_CAP_LEN, VirtioCapType::PciCfg, 0, 0);
    pci_cfg.extend_from_slice(&[0; 4]);
    let mut writable = vec![0u8; pci_cfg.len()];
    let body = |field: usize| field - 2;
    writable[body(CAP_BAR)] = 0xff;
    writable[body(CAP_OFFSET)..body(CAP_OFFSET) + 4].fill(0xff);
    writable[body(CAP_LENGTH)..body(CAP_LENGTH) + 4].fill(0xff);
    writable[body(PCI_CFG_DATA)..body(PCI_CFG_DATA) + 4].fill(0xff);
    config.add_capability(vendor, &pci_cfg, &writable)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{PciClassCode, PciHeader, PciInterruptPin};

    fn config() -> PciConfiguration {
        PciConfiguration::new(&PciHeader {
            vendor_id: 0x1af4,
            device_id: 0x1042,
            class: PciClassCode {
                class: 0x01,
                subclass: 0x00,
                prog_if: 0x00,
            },
            revision_id: 1,
            subsystem_vendor_id: 0x1af4,
            subsystem_id: 2,
            multifunction: false,
            interrupt_pin: PciInterruptPin::None,
        })
    }

    /// `(cfg_type, bar, offset, length)` of each vendor capability, in list order.
    fn virtio_caps(c: &PciConfiguration) -> Vec<(u8, u8, u32, u32)> {
        c.capabilities()
            .into_iter()
            .filter(|(id, _)| *id == PciCapabilityId::VENDOR_SPECIFIC)
            .map(|(_, off)| {
                (
                    c.read_u8(off + 3),
                    c.read_u8(off + CAP_BAR),
                    c.read_u32(off + CAP_OFFSET),
                    c.read_u32(off + CAP_LENGTH),
                )
            })
            .collect()
    }

    #[test]
    fn capabilities_describe_every_structure_in_bar0() {
        let mut c = config();
        let pci_cfg = add_virtio_capabilities(&mut c, 3).unwrap();
        assert_eq!(
            virtio_caps(&c),
            vec![
                (1, 0, 0x0000, 0x1000),
                (2, 0, 0x3000, 12),
                (3, 0, 0x1000, 0x1000),
                (4, 0, 0x2000, 0x1000),
                (5, 0, 0, 0),
            ]
        );
        let notify = c.capabilities()[1].1;
        assert_eq!(c.read_u8(notify + 2), NOTIFY_CAP_LEN);
        assert_eq!(c.read_u32(notify + 16), NOTIFY_OFF_MULTIPLIER);
        assert_eq!(c.read_u8(pci_cfg + 2), PCI_CFG_CAP_LEN);
    }

    #[test]
    fn only_the_pci_cfg_window_fields_are_guest_writable() {
        let mut c = config();
        let pci_cfg = add_virtio_capabilities(&mut c, 1).unwrap();
        for (_, off) in c.capabilities() {
            for reg in off / 4..(off + 20) / 4 {
                c.write_config_register(reg, 0, &[0xff; 4]);
            }
        }
        let caps = virtio_caps(&c);
        assert_eq!(caps[0], (1, 0, 0, 0x1000), "common cap is read-only");
        assert_eq!(caps[4], (5, 0xff, u32::MAX, u32::MAX));
        assert_eq!(c.read_u32(pci_cfg + PCI_CFG_DATA), u32::MAX);
        assert_eq!(c.read_u8(pci_cfg + 3), 5, "cfg_type stays");
    }

    #[test]
    fn locate_maps_offsets_to_structures() {
        let msix = msix_layout(3);
        assert_eq!(locate(0, &msix), Some(Bar0Region::Common(0)));
        assert_eq!(locate(0xfff, &msix), Some(Bar0Region::Common(0xfff)));
        assert_eq!(locate(0x1000, &msix), Some(Bar0Region::Isr(0)));
        assert_eq!(locate(0x2004, &msix), Some(Bar0Region::DeviceConfig(4)));
        assert_eq!(locate(0x3008, &msix), Some(Bar0Region::Notify(8)));
        assert_eq!(
            locate(0x4010, &msix),
            Some(Bar0Region::Msix(MsixRegion::Table(0x10)))
        );
        assert_eq!(locate(0x4030, &msix), None, "past the 3-entry table");
        assert_eq!(
            locate(0x6000, &msix),
            Some(Bar0Region::Msix(MsixRegion::Pba(0)))
        );
        assert_eq!(locate(0x7fff, &msix), None);
        assert_eq!(locate(u64::MAX, &msix), None);
        assert_eq!(notify_queue(8), 2);
        assert_eq!(notify_addr(0xc000_0000, 2), 0xc000_3008);
    }

    #[test]
    fn the_largest_device_fits_the_bar() {
        let msix = msix_layout(MAX_QUEUES + 1);
        let table_end = u64::from(MSIX_TABLE_OFFSET) + msix.table_len();
        assert!(table_end <= u64::from(MSIX_PBA_OFFSET));
        assert!(u64::from(MSIX_PBA_OFFSET) + msix.pba_len() <= VIRTIO_PCI_BAR_SIZE);
        assert!(MAX_QUEUES as u64 * u64::from(NOTIFY_OFF_MULTIPLIER) <= NOTIFY_LEN);
        assert!(VIRTIO_PCI_BAR_SIZE.is_power_of_two());
        let mut c = config();
        add_virtio_capabilities(&mut c, MAX_QUEUES).unwrap();
        let mut route_config = c.clone();
        let route = std::sync::Arc::new(crate::interrupt::testing::RecordingRoute::default());
        crate::msix::Msix::add_to(&mut route_config, msix, route).unwrap();
    }
}
