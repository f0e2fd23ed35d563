//! The guest's view of a passed-through function's configuration space.
//!
//! Built from the device's own config region, then split byte by byte between what
//! the VMM owns (emulated in a [`PciConfiguration`]) and what the hardware answers
//! (passthrough: reads come live from the device, writes go to it):
//!
//! | bytes | handling |
//! | --- | --- |
//! | IDs, class, revision, subsystem, header type | copied once, read-only (multifunction bit cleared: the guest bus sets it for a slot that holds several functions) |
//! | command | emulated with the standard masks; every guest write is also forwarded, so memory, I/O, bus-master and INTx-disable reach the hardware |
//! | status | emulated (capability-list bit ours, error bits write-1-to-clear) |
//! | BARs | virtualised: guest addresses, sizing answered with the host sizes |
//! | expansion ROM BAR | hidden (reads 0): form-vmm does not expose option ROMs |
//! | interrupt line / pin | line emulated; pin is the hardware's (0 when the device has no INTx) |
//! | capability pointer and every capability header | rebuilt: only kept capabilities are linked |
//! | power management, PCI Express, vendor-specific bodies | passthrough (vfio-pci itself virtualises what must not reach hardware, e.g. FLR and D-states) |
//! | MSI, MSI-X | emulated by [`Msi`] / [`Msix`], wired to VFIO eventfds by the device |
//! | GPUDirect clique capability | emulated, read-only, added when asked for |
//! | everything else, extended space included | emulated, read-only |
//!
//! Conventional capabilities kept: power management (0x01), MSI (0x05),
//! vendor-specific (0x09), PCI Express (0x10), MSI-X (0x11). Hidden: everything
//! else (AGP, VPD, PCI-X, HyperTransport, Advanced Features with its FLR, ...), since
//! the VMM neither emulates them nor can let the guest drive them safely.
//!
//! Extended capabilities kept (read-only copies): Device Serial Number (0x03) and
//! vendor-specific (0x0b). Hidden: the rest, notably SR-IOV, Resizable BAR (BAR
//! sizes are fixed by the placement), ATS/PRI/PASID (no vIOMMU), ACS, AER and L1
//! PM substates. When the capability at 0x100 is hidden, 0x100 gets a header with
//! ID 0 that links to the first kept one, as the chain must start there.

use std::sync::Arc;

use log::warn;

use crate::config::{
    PciBar, PciCapabilityId, PciClassCode, PciConfigError, PciConfiguration, PciExtCapabilityId,
    PciHeader, PciInterruptPin, CONFIG_SPACE_SIZE, LEGACY_CONFIG_SPACE_SIZE,
    STATUS_CAPABILITIES_LIST,
};
use crate::msi::{Msi, MsiError};
use crate::msix::{Msix, MsixError, MSIX_CAPABILITY_SIZE};
use crate::vfio::clique::{self, CLIQUE_CAP_LEN};
use crate::{BarReprogram, MsiInterruptRoute};

const VENDOR_ID: usize = 0x00;
const DEVICE_ID: usize = 0x02;
const COMMAND: usize = 0x04;
const STATUS: usize = 0x06;
const REVISION: usize = 0x08;
const CLASS: usize = 0x09;
const HEADER_TYPE: usize = 0x0e;
const SUBSYSTEM_VENDOR: usize = 0x2c;
const SUBSYSTEM_ID: usize = 0x2e;
const CAP_POINTER: usize = 0x34;
const INTERRUPT_PIN: usize = 0x3d;
const FIRST_CAP: usize = 0x40;
const HEADER_LAYOUT_MASK: u8 = 0x7f;
/// More capabilities than fit in 192 bytes means a loop in a broken list.
const MAX_CAPS: usize = 48;
/// Same bound for the 3840 bytes of extended space (4-byte minimum each).
const MAX_EXT_CAPS: usize = 960;

const CAP_ID_DSN: u16 = 0x0003;

/// Length of the PCI Express capability structure (version 2 and later).
const PCIE_CAP_LEN_V2: usize = 0x3c;
/// Version 1 stops after the slot registers.
const PCIE_CAP_LEN_V1: usize = 0x24;
const PM_CAP_LEN: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum VfioConfigError {
    #[error("config space of {0} bytes is too short; a PCI function has at least 256")]
    TooShort(usize),
    #[error("header type {0:#x} is not an endpoint (type 0); bridges cannot be passed through")]
    NotEndpoint(u8),
    #[error("the GPUDirect clique ID {0} is out of range; it must be 0 to 15")]
    CliqueOutOfRange(u8),
    #[error("the GPUDirect clique capability is NVIDIA's; vendor {0:#06x} is not NVIDIA (0x10de)")]
    CliqueNotNvidia(u16),
    #[error("no 8 free bytes in config space 0x40-0xff for the GPUDirect clique capability")]
    NoRoomForClique,
    #[error("placing BAR: {0}")]
    Bar(#[from] PciConfigError),
    #[error("the device's MSI capability: {0}")]
    Msi(#[from] MsiError),
    #[error("the device's MSI-X capability: {0}")]
    Msix(#[from] MsixError),
}

/// Choices the VMM makes about the guest's view.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConfigOptions {
    /// Adds the NVIDIA GPUDirect P2P clique capability with this ID.
    pub gpudirect_clique: Option<u8>,
}

/// A capability found in the hardware's list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HardwareCapability {
    pub id: u8,
    pub offset: usize,
}

/// What a guest config write changed that the device must act on.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ConfigWriteEffect {
    pub bar_moved: Option<BarReprogram>,
    /// The command register was written; its new guest value.
    pub command: Option<u16>,
    pub msi_touched: bool,
    pub msix_touched: bool,
}

/// How a guest write reaches the hardware.
pub trait ConfigHardware {
    fn read(&self, offset: usize, data: &mut [u8]);
    fn write(&self, offset: usize, data: &[u8]);
}

pub struct VfioConfig {
    config: PciConfiguration,
    /// One bit per config byte: read from and written to the hardware.
    passthrough: Vec<bool>,
    msi: Option<Msi>,
    msix: Option<Msix>,
    kept: Vec<HardwareCapability>,
    hidden: Vec<HardwareCapability>,
    clique_offset: Option<usize>,
}

/// Walks the conventional capability list of raw config bytes, stopping at loops
/// and pointers outside `0x40..0x100`.
pub fn hardware_capabilities(raw: &[u8]) -> Vec<HardwareCapability> {
    let mut found = Vec::new();
    let status = u16::from_le_bytes([byte(raw, STATUS), byte(raw, STATUS + 1)]);
    if status & STATUS_CAPABILITIES_LIST == 0 {
        return found;
    }
    let mut offset = usize::from(byte(raw, CAP_POINTER) & !0x3);
    while (FIRST_CAP..LEGACY_CONFIG_SPACE_SIZE).contains(&offset) && found.len() < MAX_CAPS {
        if found
            .iter()
            .any(|c: &HardwareCapability| c.offset == offset)
        {
            warn!("vfio config: capability list loops at {offset:#x}");
            break;
        }
        found.push(HardwareCapability {
            id: byte(raw, offset),
            offset,
        });
        offset = usize::from(byte(raw, offset + 1) & !0x3);
    }
    found
}

/// Walks the extended capability list: `(id, version, offset)`.
fn hardware_ext_capabilities(raw: &[u8]) -> Vec<(u16, u8, usize)> {
    let mut found: Vec<(u16, u8, usize)> = Vec::new();
    let mut offset = LEGACY_CONFIG_SPACE_SIZE;
    while offset >= LEGACY_CONFIG_SPACE_SIZE
        && offset + 4 <= raw.len()
        && found.len() < MAX_EXT_CAPS
    {
        let header = u32_at(raw, offset);
        if header == 0 || header == u32::MAX || found.iter().any(|c| c.2 == offset) {
            break;
        }
        found.push((header as u16, ((header >> 16) & 0xf) as u8, offset));
        offset = (header >> 20) as usize & !0x3;
    }
    found
}

fn byte(raw: &[u8], offset: usize) -> u8 {
    raw.get(offset).copied().unwrap_or(0)
}

fn u16_at(raw: &[u8], offset: usize) -> u16 {
    u16::from_le_bytes([byte(raw, offset), byte(raw, offset + 1)])
}

fn u32_at(raw: &[u8], offset: usize) -> u32 {
    u32::from_le_bytes([
        byte(raw, offset),
        byte(raw, offset + 1),
        byte(raw, offset + 2),
        byte(raw, offset + 3),
    ])
}

fn kept_capability(id: u8) -> bool {
    [
        PciCapabilityId::POWER_MANAGEMENT,
        PciCapabilityId::MSI,
        PciCapabilityId::VENDOR_SPECIFIC,
        PciCapabilityId::PCI_EXPRESS,
        PciCapabilityId::MSIX,
    ]
    .contains(&PciCapabilityId(id))
}

fn kept_ext_capability(id: u16) -> bool {
    id == CAP_ID_DSN || id == PciExtCapabilityId::VENDOR_SPECIFIC.0
}

/// Bytes a kept capability occupies, header included, clamped to the
/// conventional space.
fn capability_len(raw: &[u8], cap: HardwareCapability, msi: Option<&Msi>) -> usize {
    let len = match PciCapabilityId(cap.id) {
        PciCapabilityId::POWER_MANAGEMENT => PM_CAP_LEN,
        PciCapabilityId::MSI => msi.map_or(0x18, |m| m.capability().byte_len()),
        PciCapabilityId::MSIX => MSIX_CAPABILITY_SIZE,
        PciCapabilityId::PCI_EXPRESS => {
            if u16_at(raw, cap.offset + 2) & 0xf >= 2 {
                PCIE_CAP_LEN_V2
            } else {
                PCIE_CAP_LEN_V1
            }
        }
        // Vendor-specific: byte 2 is the length.
        _ => usize::from(byte(raw, cap.offset + 2)).max(3),
    };
    len.min(LEGACY_CONFIG_SPACE_SIZE - cap.offset)
}

fn interrupt_pin(pin: u8) -> PciInterruptPin {
    match pin {
        1 => PciInterruptPin::IntA,
        2 => PciInterruptPin::IntB,
        3 => PciInterruptPin::IntC,
        4 => PciInterruptPin::IntD,
        _ => PciInterruptPin::None,
    }
}

impl VfioConfig {
    /// Builds the guest's view from the device's config bytes `raw` (256 or 4096),
    /// with BARs at `bars` (host sizes, guest addresses) and MSI/MSI-X delivered
    /// through the given routes. `has_intx` false reports interrupt pin 0.
    pub fn build(
        raw: &[u8],
        bars: &[PciBar],
        has_intx: bool,
        msi_route: Arc<dyn MsiInterruptRoute>,
        msix_route: Arc<dyn MsiInterruptRoute>,
        options: &ConfigOptions,
    ) -> Result<Self, VfioConfigError> {
        if raw.len() < LEGACY_CONFIG_SPACE_SIZE {
            return Err(VfioConfigError::TooShort(raw.len()));
        }
        let raw = &raw[..raw.len().min(CONFIG_SPACE_SIZE)];
        let header_type = byte(raw, HEADER_TYPE);
        if header_type & HEADER_LAYOUT_MASK != 0 {
            return Err(VfioConfigError::NotEndpoint(header_type));
        }
        let vendor_id = u16_at(raw, VENDOR_ID);
        if let Some(id) = options.gpudirect_clique {
            if id > clique::MAX_CLIQUE_ID {
                return Err(VfioConfigError::CliqueOutOfRange(id));
            }
            if vendor_id != NVIDIA_VENDOR_ID {
                return Err(VfioConfigError::CliqueNotNvidia(vendor_id));
            }
        }
        let pin = if has_intx {
            interrupt_pin(byte(raw, INTERRUPT_PIN))
        } else {
            PciInterruptPin::None
        };
        let mut config = PciConfiguration::new(&PciHeader {
            vendor_id,
            device_id: u16_at(raw, DEVICE_ID),
            class: PciClassCode {
                class: byte(raw, CLASS + 2),
                subclass: byte(raw, CLASS + 1),
                prog_if: byte(raw, CLASS),
            },
            revision_id: byte(raw, REVISION),
            subsystem_vendor_id: u16_at(raw, SUBSYSTEM_VENDOR),
            subsystem_id: u16_at(raw, SUBSYSTEM_ID),
            multifunction: false,
            interrupt_pin: pin,
        });
        // Everything past the fixed header is copied, then the parts the VMM owns
        // are rewritten below.
        config.write_bytes(FIRST_CAP, raw.get(FIRST_CAP..).unwrap_or(&[]));
        for bar in bars {
            config.add_bar(bar)?;
        }

        let caps = hardware_capabilities(raw);
        let (kept, hidden): (Vec<_>, Vec<_>) =
            caps.iter().copied().partition(|c| kept_capability(c.id));
        let mut this = Self {
            config,
            passthrough: vec![false; CONFIG_SPACE_SIZE],
            msi: None,
            msix: None,
            kept: kept.clone(),
            hidden,
            clique_offset: None,
        };
        this.link_capabilities(&kept);
        if let Some(cap) = kept.iter().find(|c| c.id == PciCapabilityId::MSI.0) {
            this.msi = Some(Msi::from_existing(&mut this.config, cap.offset, msi_route)?);
        }
        if let Some(cap) = kept.iter().find(|c| c.id == PciCapabilityId::MSIX.0) {
            this.msix = Some(Msix::from_existing(
                &mut this.config,
                cap.offset,
                msix_route,
            )?);
        }
        for cap in &kept {
            let passthrough = [
                PciCapabilityId::POWER_MANAGEMENT,
                PciCapabilityId::PCI_EXPRESS,
                PciCapabilityId::VENDOR_SPECIFIC,
            ]
            .contains(&PciCapabilityId(cap.id));
            if passthrough {
                let len = capability_len(raw, *cap, None);
                // The ID and next pointer stay ours.
                for flag in this
                    .passthrough
                    .iter_mut()
                    .skip(cap.offset + 2)
                    .take(len - 2)
                {
                    *flag = true;
                }
            }
        }
        if let Some(id) = options.gpudirect_clique {
            this.add_clique(raw, id)?;
        }
        this.rebuild_extended(raw);
        Ok(this)
    }

    /// Rewrites the capability pointer and next pointers to link only `kept`, in
    /// hardware order.
    fn link_capabilities(&mut self, kept: &[HardwareCapability]) {
        let first = kept.first().map_or(0, |c| c.offset as u8);
        self.config.write_bytes(CAP_POINTER, &[first]);
        for (i, cap) in kept.iter().enumerate() {
            let next = kept.get(i + 1).map_or(0, |c| c.offset as u8);
            self.config.write_bytes(cap.offset + 1, &[next]);
        }
        self.set_capability_list_bit(!kept.is_empty());
    }

    fn set_capability_list_bit(&mut self, on: bool) {
        let status = self.config.status();
        let status = if on {
            status | STATUS_CAPABILITIES_LIST
        } else {
            status & !STATUS_CAPABILITIES_LIST
        };
        self.config.write_bytes(STATUS, &status.to_le_bytes());
    }

    fn add_clique(&mut self, raw: &[u8], id: u8) -> Result<(), VfioConfigError> {
        let mut used = vec![false; LEGACY_CONFIG_SPACE_SIZE];
        for cap in &self.kept {
            let len = capability_len(raw, *cap, self.msi.as_ref());
            for u in used.iter_mut().skip(cap.offset).take(len) {
                *u = true;
            }
        }
        let free = |off: usize| {
            off + CLIQUE_CAP_LEN <= LEGACY_CONFIG_SPACE_SIZE
                && used[off..off + CLIQUE_CAP_LEN].iter().all(|u| !u)
        };
        let offset = clique::PREFERRED_OFFSETS
            .into_iter()
            .chain((FIRST_CAP..LEGACY_CONFIG_SPACE_SIZE).step_by(4))
            .find(|&off| free(off))
            .ok_or(VfioConfigError::NoRoomForClique)?;
        self.config
            .write_bytes(offset, &clique::clique_capability(id, 0));
        self.config.set_writable_bytes(offset, &[0; CLIQUE_CAP_LEN]);
        for flag in self
            .passthrough
            .iter_mut()
            .skip(offset)
            .take(CLIQUE_CAP_LEN)
        {
            *flag = false;
        }
        // Last in the list, as NVIDIA asks.
        match self.kept.last() {
            Some(last) => self.config.write_bytes(last.offset + 1, &[offset as u8]),
            None => self.config.write_bytes(CAP_POINTER, &[offset as u8]),
        }
        self.set_capability_list_bit(true);
        self.clique_offset = Some(offset);
        Ok(())
    }

    fn rebuild_extended(&mut self, raw: &[u8]) {
        let caps = hardware_ext_capabilities(raw);
        let kept: Vec<_> = caps
            .iter()
            .copied()
            .filter(|c| kept_ext_capability(c.0))
            .collect();
        for (i, (id, version, offset)) in kept.iter().enumerate() {
            let next = kept.get(i + 1).map_or(0, |c| c.2 as u32);
            let header = u32::from(*id) | (u32::from(*version) << 16) | (next << 20);
            self.config.write_bytes(*offset, &header.to_le_bytes());
        }
        let starts_at_0x100 = kept
            .first()
            .is_some_and(|c| c.2 == LEGACY_CONFIG_SPACE_SIZE);
        if !starts_at_0x100 {
            let header = kept.first().map_or(0, |c| (c.2 as u32) << 20);
            self.config
                .write_bytes(LEGACY_CONFIG_SPACE_SIZE, &header.to_le_bytes());
        }
    }

    /// Kept conventional capabilities, in list order.
    pub fn kept_capabilities(&self) -> &[HardwareCapability] {
        &self.kept
    }

    /// Capabilities unlinked from the guest's list.
    pub fn hidden_capabilities(&self) -> &[HardwareCapability] {
        &self.hidden
    }

    pub fn clique_offset(&self) -> Option<usize> {
        self.clique_offset
    }

    pub fn config(&self) -> &PciConfiguration {
        &self.config
    }

    pub fn config_mut(&mut self) -> &mut PciConfiguration {
        &mut self.config
    }

    pub fn msi(&self) -> Option<&Msi> {
        self.msi.as_ref()
    }

    pub fn msix(&self) -> Option<&Msix> {
        self.msix.as_ref()
    }

    pub fn msix_mut(&mut self) -> Option<&mut Msix> {
        self.msix.as_mut()
    }

    /// Vectors the guest enabled in the MSI capability (0 when off or absent).
    pub fn msi_enabled_vectors(&self) -> usize {
        self.msi
            .as_ref()
            .map_or(0, |m| m.enabled_vectors(&self.config))
    }

    pub fn msix_enabled(&self) -> bool {
        self.msix.as_ref().is_some_and(Msix::is_enabled)
    }

    /// Raises MSI `vector` through the emulation (latched if masked).
    pub fn trigger_msi(&mut self, vector: usize) {
        if let Some(msi) = self.msi.as_mut() {
            msi.trigger(&mut self.config, vector);
        }
    }

    pub fn is_passthrough(&self, offset: usize) -> bool {
        self.passthrough.get(offset).copied().unwrap_or(false)
    }

    /// The guest reads register `reg_idx`.
    pub fn read(&self, reg_idx: usize, hw: &dyn ConfigHardware) -> u32 {
        let value = self.config.read_config_register(reg_idx);
        let Some(base) = reg_idx.checked_mul(4).filter(|&b| b < CONFIG_SPACE_SIZE) else {
            return value;
        };
        if !(base..base + 4).any(|o| self.is_passthrough(o)) {
            return value;
        }
        let mut live = [0u8; 4];
        hw.read(base, &mut live);
        let mut bytes = value.to_le_bytes();
        for (i, b) in bytes.iter_mut().enumerate() {
            if self.is_passthrough(base + i) {
                *b = live[i];
            }
        }
        u32::from_le_bytes(bytes)
    }

    /// The guest writes `data` at byte `offset` of register `reg_idx`.
    pub fn write(
        &mut self,
        reg_idx: usize,
        offset: u64,
        data: &[u8],
        hw: &dyn ConfigHardware,
    ) -> ConfigWriteEffect {
        let mut effect = ConfigWriteEffect::default();
        let Some(start) = reg_idx
            .checked_mul(4)
            .zip(usize::try_from(offset).ok())
            .and_then(|(b, o)| b.checked_add(o))
            .filter(|&s| {
                !data.is_empty()
                    && offset < 4
                    && (offset as usize) + data.len() <= 4
                    && s + data.len() <= CONFIG_SPACE_SIZE
            })
        else {
            return effect;
        };
        self.forward_passthrough(start, data, hw);
        effect.bar_moved = self.config.write_config_register(reg_idx, offset, data);
        if start < COMMAND + 2 && start + data.len() > COMMAND {
            let command = self.config.command();
            hw.write(COMMAND, &command.to_le_bytes());
            effect.command = Some(command);
        }
        if let Some(msi) = self.msi.as_mut() {
            if msi.covers(reg_idx) {
                msi.config_written(&mut self.config);
                effect.msi_touched = true;
            }
        }
        if let Some(msix) = self.msix.as_mut() {
            if msix.covers(reg_idx) {
                msix.config_written(&self.config);
                effect.msix_touched = true;
            }
        }
        effect
    }

    /// Sends the passthrough bytes of a write to the hardware, in naturally
    /// aligned pieces.
    fn forward_passthrough(&self, start: usize, data: &[u8], hw: &dyn ConfigHardware) {
        let mut i = 0;
        while i < data.len() {
            if !self.is_passthrough(start + i) {
                i += 1;
                continue;
            }
            let mut run = 1;
            while i + run < data.len() && self.is_passthrough(start + i + run) {
                run += 1;
            }
            let mut j = i;
            while j < i + run {
                let at = start + j;
                let left = i + run - j;
                let width = [4usize, 2, 1]
                    .into_iter()
                    .find(|w| *w <= left && at.is_multiple_of(*w))
                    .unwrap_or(1);
                hw.write(at, &data[j..j + width]);
                j += width;
            }
            i += run;
        }
    }
}

/// PCI vendor ID of NVIDIA.
pub const NVIDIA_VENDOR_ID: u16 = 0x10de;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::interrupt::testing::RecordingRoute;

    fn raw(vendor: u16) -> Vec<u8> {
        let mut raw = vec![0u8; LEGACY_CONFIG_SPACE_SIZE];
        raw[..2].copy_from_slice(&vendor.to_le_bytes());
        raw
    }

    fn with_caps(mut raw: Vec<u8>, caps: &[(usize, u8, usize)]) -> Vec<u8> {
        raw[STATUS] |= STATUS_CAPABILITIES_LIST as u8;
        raw[CAP_POINTER] = caps.first().map_or(0, |c| c.0 as u8);
        for (i, &(off, id, len)) in caps.iter().enumerate() {
            raw[off] = id;
            raw[off + 1] = caps.get(i + 1).map_or(0, |c| c.0 as u8);
            raw[off + 2] = len as u8;
        }
        raw
    }

    fn build(raw: &[u8], clique: Option<u8>) -> Result<VfioConfig, VfioConfigError> {
        let route = Arc::new(RecordingRoute::default());
        VfioConfig::build(
            raw,
            &[],
            true,
            route.clone(),
            route,
            &ConfigOptions {
                gpudirect_clique: clique,
            },
        )
    }

    #[test]
    fn malformed_spaces_are_refused() {
        assert!(matches!(
            build(&[0; 64], None),
            Err(VfioConfigError::TooShort(64))
        ));
        let mut bridge = raw(0x8086);
        bridge[HEADER_TYPE] = 0x81;
        assert!(matches!(
            build(&bridge, None),
            Err(VfioConfigError::NotEndpoint(0x81))
        ));
    }

    #[test]
    fn broken_capability_lists_end_the_walk() {
        let looped = with_caps(raw(0x10de), &[(0x40, 0x09, 4)]);
        let mut looped = looped;
        looped[0x41] = 0x40;
        assert_eq!(hardware_capabilities(&looped).len(), 1);
        let mut outside = with_caps(raw(0x10de), &[]);
        outside[CAP_POINTER] = 0x20;
        assert!(hardware_capabilities(&outside).is_empty());
        let c = build(&looped, None).unwrap();
        assert_eq!(c.config().capabilities().len(), 1);
    }

    #[test]
    fn clique_goes_to_the_first_free_place() {
        // No capabilities at all: the clique capability is the whole list.
        let c = build(&raw(NVIDIA_VENDOR_ID), Some(2)).unwrap();
        assert_eq!(c.clique_offset(), Some(0xc8));
        assert_eq!(c.config().read_u8(CAP_POINTER), 0xc8);
        assert_ne!(c.config().status() & STATUS_CAPABILITIES_LIST, 0);
        // A vendor capability covering 0xc0..0xd0 pushes it to 0xd4.
        let c = build(
            &with_caps(raw(NVIDIA_VENDOR_ID), &[(0xc0, 0x09, 0x10)]),
            Some(2),
        )
        .unwrap();
        assert_eq!(c.clique_offset(), Some(0xd4));
        assert_eq!(c.config().read_u8(0xc1), 0xd4, "linked after the last one");
        // Everything taken.
        let full = with_caps(raw(NVIDIA_VENDOR_ID), &[(0x40, 0x09, 0xc0)]);
        assert!(matches!(
            build(&full, Some(2)),
            Err(VfioConfigError::NoRoomForClique)
        ));
    }

    #[test]
    fn hidden_only_list_clears_the_capability_bit() {
        let c = build(&with_caps(raw(0x1234), &[(0x40, 0x03, 8)]), None).unwrap();
        assert_eq!(c.config().status() & STATUS_CAPABILITIES_LIST, 0);
        assert_eq!(c.config().read_u8(CAP_POINTER), 0);
        assert_eq!(c.hidden_capabilities().len(), 1);
    }

    #[test]
    fn extended_space_without_kept_capabilities_reads_empty() {
        let mut raw = raw(0x1234);
        raw.resize(CONFIG_SPACE_SIZE, 0);
        // AER at 0x100 → ACS at 0x140, both hidden.
        raw[0x100..0x104].copy_from_slice(&(0x0001u32 | (1 << 16) | (0x140 << 20)).to_le_bytes());
        raw[0x140..0x144].copy_from_slice(&(0x000du32 | (1 << 16)).to_le_bytes());
        let c = build(&raw, None).unwrap();
        assert_eq!(c.config().read_u32(0x100), 0);
        assert!(c.config().extended_capabilities().is_empty());
    }
}
