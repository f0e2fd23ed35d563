//! PCI class codes the module cares about (the 24-bit `class` attribute: base class,
//! subclass, programming interface).

/// VGA-compatible controller (consumer GPUs, emulated VGA).
pub const VGA: u16 = 0x0300;
/// 3D controller: data-centre GPUs without display outputs (A100, H100, H200).
pub const DISPLAY_3D: u16 = 0x0302;
/// Other display controller (AMD Instinct on some firmware, QEMU's bochs-display).
pub const DISPLAY_OTHER: u16 = 0x0380;
/// Processing accelerator (AMD Instinct MI300X, Intel Gaudi).
pub const ACCELERATOR: u16 = 0x1200;
/// PCI-to-PCI bridge (switch ports, root ports).
pub const PCI_BRIDGE: u16 = 0x0604;
/// Semi-transparent PCI-to-PCI bridge.
pub const PCI_BRIDGE_SEMI_TRANSPARENT: u16 = 0x0609;

/// Base class and subclass, dropping the programming interface.
pub fn base_and_sub(class: u32) -> u16 {
    ((class >> 8) & 0xffff) as u16
}

/// A function this module inventories and binds.
pub fn is_gpu(class: u32) -> bool {
    matches!(
        base_and_sub(class),
        VGA | DISPLAY_3D | DISPLAY_OTHER | ACCELERATOR
    )
}

/// Bridges share IOMMU groups with what sits behind them but are never handed to a VM;
/// the kernel's VFIO accepts a group whose bridges stay on their own drivers.
pub fn is_bridge(class: u32) -> bool {
    matches!(
        base_and_sub(class),
        PCI_BRIDGE | PCI_BRIDGE_SEMI_TRANSPARENT
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_gpus_and_bridges() {
        for gpu in [0x030000, 0x030200, 0x038000, 0x120000] {
            assert!(is_gpu(gpu), "{gpu:#x}");
        }
        for other in [0x040300, 0x068000, 0x020000, 0x060400, 0x030100] {
            assert!(!is_gpu(other), "{other:#x}");
        }
        assert!(is_bridge(0x060400) && is_bridge(0x060401) && !is_bridge(0x060000));
    }
}
