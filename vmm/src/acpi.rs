//! ACPI tables: RSDP → XSDT → FADT (→ DSDT), MADT, MCFG, and with guest NUMA the
//! SRAT and SLIT ([`crate::acpi_numa`]), written into the BIOS area of guest memory.
//! The guest nodes' PCI root buses get host bridges of their own
//! ([`crate::acpi_pci_roots`]) and the MCFG covers buses up to the highest. The platform is hardware-reduced: no PM1 blocks, a sleep
//! control/reset register at port 0x600, and a GED for the power button and PCI
//! hotplug (the slot objects are in [`crate::acpi_pci`]).

use crate::acpi_numa::{slit, srat};
use crate::guest_numa::GuestNuma;
use crate::memory::GuestMemoryMmap;
use acpi_tables::aml::{
    self, AddressSpace, AddressSpaceCacheable, And, Device, EISAName, Equal, Field,
    FieldAccessType, FieldEntry, FieldLockRule, FieldUpdateRule, If, Interrupt, Local, Method,
    MethodCall, Name, Notify, OpRegion, OpRegionSpace, Package, ResourceTemplate, Store, IO,
};
use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace as GasSpace, GAS};
use acpi_tables::mcfg::MCFG;
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::Aml;
use devices::acpi::{
    ACPI_PM_PORT, ACPI_RESET_VALUE, GED_EVENT_PCI_HOTPLUG, GED_EVENT_POWER_BUTTON,
    GED_EVENT_REG_OFFSET, SLP_TYP_S5,
};
use devices::serial::{COM1_GSI, COM1_PORT, SERIAL_PORT_LEN};
use form_vm_allocator::layout::{
    GuestLayout, GED_GSI, GED_MMIO_START, IOAPIC_START, LAPIC_START, PCI_CONFIG_IO_SIZE,
    PCI_CONFIG_IO_START, PCI_ECAM_START, RESET_VECTOR, RSDP_START,
};
use std::collections::BTreeSet;
use vm_memory::{Bytes, GuestAddress};

use crate::acpi_oem::{OEM_ID, OEM_REVISION, OEM_TABLE_ID};
const TABLE_ALIGN: u64 = 16;

// MADT structure types and flags (ACPI 6.5, 5.2.12).
const MADT_LOCAL_APIC: u8 = 0;
const MADT_IO_APIC: u8 = 1;
const MADT_INTERRUPT_SOURCE_OVERRIDE: u8 = 2;
const MADT_PCAT_COMPAT: u32 = 1;
const MADT_LAPIC_ENABLED: u32 = 1;
/// FADT IA-PC boot architecture flags: no VGA, no CMOS RTC.
const IAPC_VGA_NOT_PRESENT: u16 = 1 << 2;
const IAPC_CMOS_RTC_NOT_PRESENT: u16 = 1 << 5;

#[derive(Debug, thiserror::Error)]
pub enum AcpiError {
    #[error("the ACPI tables need {needed} bytes but only {available} fit below 1 MiB")]
    TooLarge { needed: u64, available: u64 },
    #[error("cannot write ACPI table {table} into guest memory: {source}")]
    GuestWrite {
        table: &'static str,
        source: vm_memory::GuestMemoryError,
    },
    #[error("{0} vCPUs do not fit in xAPIC IDs (at most 255)")]
    TooManyVcpus(u32),
}

/// What the tables describe.
pub struct AcpiPlatform<'a> {
    pub layout: &'a GuestLayout,
    pub vcpus: u32,
    /// PCI slots whose devices stay for the VM's life (virtio): not hotpluggable.
    pub fixed_slots: BTreeSet<u8>,
    /// The guest's NUMA nodes; an SRAT and a SLIT when `in_acpi`.
    pub numa: Option<&'a GuestNuma>,
}

fn bytes(t: &dyn Aml) -> Vec<u8> {
    let mut v = Vec::new();
    t.to_aml_bytes(&mut v);
    v
}

fn dsdt(platform: &AcpiPlatform<'_>) -> Vec<u8> {
    let layout = platform.layout;
    let mut sdt = Sdt::new(*b"DSDT", 36, 6, OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    // Each object is built and serialised in one statement: the AML builders
    // borrow their children, which must outlive the serialisation.
    sdt.append_slice(&bytes(&Name::new(
        "_S5_".into(),
        &Package::new(vec![&SLP_TYP_S5, &SLP_TYP_S5]),
    )));

    // Bus 0's slices of the windows; the guest nodes' root buses have the rest.
    let roots = layout.pci_roots();
    let root0 = roots.first().filter(|r| r.bus == 0);
    let m32 = root0.map_or(layout.mmio32(), |r| r.mmio32);
    let m64 = root0.map_or(layout.mmio64(), |r| r.mmio64);
    let io_last = root0.map_or(layout.pci_io(), |r| r.io).last() as u16;
    let cfg_io_last = (PCI_CONFIG_IO_START - 1) as u16;
    let cfg_io_after = (PCI_CONFIG_IO_START + PCI_CONFIG_IO_SIZE) as u16;
    let cfg_port = PCI_CONFIG_IO_START as u16;
    let hid = Name::new("_HID".into(), &EISAName::new("PNP0A08"));
    let cid = Name::new("_CID".into(), &EISAName::new("PNP0A03"));
    let adr = Name::new("_ADR".into(), &aml::ZERO);
    let seg = Name::new("_SEG".into(), &aml::ZERO);
    let uid = Name::new("_UID".into(), &aml::ZERO);
    let bbn = Name::new("_BBN".into(), &aml::ZERO);
    // With guest NUMA nodes bus 0 is node 0's: its devices are node 0's too.
    let pxm = Name::new("_PXM".into(), &aml::ZERO);
    let told_numa = platform.numa.is_some_and(|n| n.in_acpi);
    let crs = Name::new(
        "_CRS".into(),
        &ResourceTemplate::new(vec![
            &AddressSpace::<u16>::new_bus_number(0, 0),
            &IO::new(cfg_port, cfg_port, 1, PCI_CONFIG_IO_SIZE as u8),
            &AddressSpace::<u16>::new_io(0, cfg_io_last, None),
            &AddressSpace::<u16>::new_io(cfg_io_after, io_last, None),
            &AddressSpace::<u32>::new_memory(
                AddressSpaceCacheable::NotCacheable,
                true,
                m32.start as u32,
                m32.last() as u32,
                None,
            ),
            &AddressSpace::<u64>::new_memory(
                AddressSpaceCacheable::Cacheable,
                true,
                m64.start,
                m64.last(),
                None,
            ),
        ]),
    );
    let mut pci0: Vec<&dyn Aml> = vec![&hid, &cid, &adr, &seg, &uid, &bbn];
    if told_numa {
        pci0.push(&pxm);
    }
    pci0.push(&crs);
    sdt.append_slice(&bytes(&Device::new("_SB_.PCI0".into(), pci0)));

    sdt.append_slice(&crate::acpi_pci::pci_slots_aml(&platform.fixed_slots));
    for root in roots.iter().filter(|r| r.bus != 0) {
        sdt.append_slice(&crate::acpi_pci_roots::root_bridge_aml(root));
    }

    sdt.append_slice(&bytes(&Device::new(
        "_SB_.COM1".into(),
        vec![
            &Name::new("_HID".into(), &EISAName::new("PNP0501")),
            &Name::new("_UID".into(), &aml::ONE),
            &Name::new(
                "_CRS".into(),
                &ResourceTemplate::new(vec![
                    &Interrupt::new(true, true, false, false, COM1_GSI),
                    &IO::new(COM1_PORT as u16, COM1_PORT as u16, 1, SERIAL_PORT_LEN as u8),
                ]),
            ),
        ],
    )));

    sdt.append_slice(&bytes(&Device::new(
        "_SB_.PWRB".into(),
        vec![
            &Name::new("_HID".into(), &EISAName::new("PNP0C0C")),
            &Name::new("_UID".into(), &aml::ZERO),
        ],
    )));

    // The GED: an edge interrupt on GSI 5; _EVT reads (and so clears) the event
    // register once, notifies the power button if its bit is set and lets PCNT
    // notify the PCI slots that changed if the hotplug bit is.
    let reg_addr = GED_MMIO_START + GED_EVENT_REG_OFFSET;
    let reg_len = devices::acpi::GED_EVENT_REG_SIZE;
    let power_bit = GED_EVENT_POWER_BUTTON;
    let hotplug_bit = GED_EVENT_PCI_HOTPLUG;
    let pcnt = MethodCall::new("\\_SB_.PCI0.PCNT".into(), vec![]);
    let pwrb = aml::Path::new("\\_SB_.PWRB");
    let gdat = aml::Path::new("GDAT");
    sdt.append_slice(&bytes(&Device::new(
        "_SB_.GED_".into(),
        vec![
            &Name::new("_HID".into(), &"ACPI0013"),
            &Name::new("_UID".into(), &aml::ZERO),
            &Name::new(
                "_CRS".into(),
                &ResourceTemplate::new(vec![&Interrupt::new(true, true, false, false, GED_GSI)]),
            ),
            &OpRegion::new(
                "GDST".into(),
                OpRegionSpace::SystemMemory,
                &reg_addr,
                &reg_len,
            ),
            &Field::new(
                "GDST".into(),
                FieldAccessType::DWord,
                FieldLockRule::NoLock,
                FieldUpdateRule::WriteAsZeroes,
                vec![FieldEntry::Named(*b"GDAT", 32)],
            ),
            &Method::new(
                "_EVT".into(),
                1,
                true,
                vec![
                    &Store::new(&Local(0), &gdat),
                    &If::new(
                        &Equal::new(&And::new(&aml::ZERO, &Local(0), &power_bit), &power_bit),
                        vec![&Notify::new(&pwrb, &0x80u8)],
                    ),
                    &If::new(
                        &Equal::new(&And::new(&aml::ZERO, &Local(0), &hotplug_bit), &hotplug_bit),
                        vec![&pcnt],
                    ),
                ],
            ),
        ],
    )));
    sdt.as_slice().to_vec()
}

fn fadt(dsdt_addr: u64) -> Vec<u8> {
    let mut b = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::ResetRegSup)
        .flag(Flags::PwrButton)
        .dsdt_64(dsdt_addr);
    let pm_reg = GAS::new(
        GasSpace::SystemIo,
        8,
        0,
        AccessSize::ByteAccess,
        ACPI_PM_PORT,
    );
    b.sleep_control_reg = pm_reg;
    b.sleep_status_reg = pm_reg;
    b.reset_reg = pm_reg;
    b.reset_value = ACPI_RESET_VALUE;
    b.iapc_boot_arch = (IAPC_VGA_NOT_PRESENT | IAPC_CMOS_RTC_NOT_PRESENT).into();
    bytes(&b.finalize())
}

fn madt(vcpus: u32) -> Result<Vec<u8>, AcpiError> {
    if vcpus > 255 {
        return Err(AcpiError::TooManyVcpus(vcpus));
    }
    let mut sdt = Sdt::new(*b"APIC", 44, 5, OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    sdt.write_u32(36, LAPIC_START as u32);
    sdt.write_u32(40, MADT_PCAT_COMPAT);
    for id in 0..vcpus as u8 {
        let mut lapic = vec![MADT_LOCAL_APIC, 8, id, id];
        lapic.extend_from_slice(&MADT_LAPIC_ENABLED.to_le_bytes());
        sdt.append_slice(&lapic);
    }
    let mut ioapic = vec![MADT_IO_APIC, 12, 0, 0];
    ioapic.extend_from_slice(&(IOAPIC_START as u32).to_le_bytes());
    ioapic.extend_from_slice(&0u32.to_le_bytes()); // GSI base
    sdt.append_slice(&ioapic);
    // ISA IRQ 0 (the PIT) arrives on IOAPIC pin 2; flags 0 = bus-conforming.
    let mut iso = vec![MADT_INTERRUPT_SOURCE_OVERRIDE, 10, 0, 0];
    iso.extend_from_slice(&2u32.to_le_bytes());
    iso.extend_from_slice(&0u16.to_le_bytes());
    sdt.append_slice(&iso);
    Ok(sdt.as_slice().to_vec())
}

/// ECAM for segment 0's buses 0 to `last_bus`, the highest root bus.
fn mcfg(last_bus: u8) -> Vec<u8> {
    let mut t = MCFG::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    t.add_ecam(PCI_ECAM_START, 0, 0, last_bus);
    bytes(&t)
}

struct Writer<'a> {
    mem: &'a GuestMemoryMmap,
    next: u64,
}

impl Writer<'_> {
    fn put(&mut self, table: &'static str, data: &[u8]) -> Result<u64, AcpiError> {
        let addr = self.next.next_multiple_of(TABLE_ALIGN);
        let end = addr + data.len() as u64;
        if end > RESET_VECTOR {
            return Err(AcpiError::TooLarge {
                needed: end - RSDP_START,
                available: RESET_VECTOR - RSDP_START,
            });
        }
        self.mem
            .write_slice(data, GuestAddress(addr))
            .map_err(|source| AcpiError::GuestWrite { table, source })?;
        self.next = end;
        Ok(addr)
    }
}

/// Writes all tables; returns the RSDP's address.
pub fn create_acpi_tables(
    mem: &GuestMemoryMmap,
    platform: &AcpiPlatform<'_>,
) -> Result<u64, AcpiError> {
    let rsdp_len = Rsdp::len() as u64;
    let mut w = Writer {
        mem,
        next: RSDP_START + rsdp_len,
    };
    let dsdt_addr = w.put("DSDT", &dsdt(platform))?;
    let fadt_addr = w.put("FADT", &fadt(dsdt_addr))?;
    let madt_addr = w.put("MADT", &madt(platform.vcpus)?)?;
    let last_bus = platform
        .layout
        .pci_roots()
        .iter()
        .map(|r| r.bus)
        .max()
        .unwrap_or(0);
    let mcfg_addr = w.put("MCFG", &mcfg(last_bus))?;
    let mut tables = vec![fadt_addr, madt_addr, mcfg_addr];
    if let Some(numa) = platform.numa.filter(|n| n.in_acpi) {
        tables.push(w.put("SRAT", &srat(numa, platform.vcpus))?);
        tables.push(w.put("SLIT", &slit(&numa.distances))?);
    }
    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    for addr in tables {
        xsdt.add_entry(addr);
    }
    let xsdt_addr = w.put("XSDT", &bytes(&xsdt))?;
    let rsdp = bytes(&Rsdp::new(OEM_ID, xsdt_addr));
    mem.write_slice(&rsdp, GuestAddress(RSDP_START))
        .map_err(|source| AcpiError::GuestWrite {
            table: "RSDP",
            source,
        })?;
    Ok(RSDP_START)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checksum_ok(t: &[u8]) -> bool {
        t.iter().fold(0u8, |a, b| a.wrapping_add(*b)) == 0
    }

    #[test]
    fn tables_have_valid_checksums_and_lengths() {
        let layout = GuestLayout::new(256 << 20, 40).unwrap();
        let p = AcpiPlatform {
            layout: &layout,
            vcpus: 4,
            fixed_slots: Default::default(),
            numa: None,
        };
        for t in [dsdt(&p), fadt(0x1234), madt(4).unwrap(), mcfg(0)] {
            let len = u32::from_le_bytes(t[4..8].try_into().unwrap()) as usize;
            assert_eq!(len, t.len(), "{:?}", std::str::from_utf8(&t[0..4]));
            assert!(checksum_ok(&t), "{:?}", std::str::from_utf8(&t[0..4]));
        }
        let m = madt(4).unwrap();
        let lapics = m[44..].chunks(1).count();
        assert!(lapics > 0);
        assert_eq!(m.len(), 44 + 4 * 8 + 12 + 10);
    }

    /// The signatures of the tables the XSDT that the RSDP at RSDP_START points to
    /// lists, each checked for length and checksum.
    fn xsdt_signatures(mem: &GuestMemoryMmap) -> Vec<String> {
        let mut rsdp = [0u8; 36];
        mem.read_slice(&mut rsdp, GuestAddress(RSDP_START)).unwrap();
        let xsdt_addr = u64::from_le_bytes(rsdp[24..32].try_into().unwrap());
        let read_table = |addr: u64| {
            let mut header = [0u8; 8];
            mem.read_slice(&mut header, GuestAddress(addr)).unwrap();
            let len = u32::from_le_bytes(header[4..8].try_into().unwrap()) as usize;
            let mut t = vec![0u8; len];
            mem.read_slice(&mut t, GuestAddress(addr)).unwrap();
            assert!(checksum_ok(&t), "{:?}", String::from_utf8_lossy(&t[0..4]));
            t
        };
        let xsdt = read_table(xsdt_addr);
        xsdt[36..]
            .chunks(8)
            .map(|entry| {
                let t = read_table(u64::from_le_bytes(entry.try_into().unwrap()));
                String::from_utf8_lossy(&t[0..4]).into_owned()
            })
            .collect()
    }

    #[test]
    fn the_xsdt_lists_srat_and_slit_when_the_guest_is_told_of_its_nodes() {
        let layout = GuestLayout::new(256 << 20, 40).unwrap();
        let mem = crate::memory::create_guest_memory(&layout, &Default::default()).unwrap();
        let numa = two_nodes();
        let mut platform = AcpiPlatform {
            layout: &layout,
            vcpus: 2,
            fixed_slots: Default::default(),
            numa: None,
        };
        create_acpi_tables(&mem, &platform).unwrap();
        assert_eq!(xsdt_signatures(&mem), ["FACP", "APIC", "MCFG"]);
        platform.numa = Some(&numa);
        create_acpi_tables(&mem, &platform).unwrap();
        assert_eq!(
            xsdt_signatures(&mem),
            ["FACP", "APIC", "MCFG", "SRAT", "SLIT"]
        );
        let untold = GuestNuma {
            in_acpi: false,
            ..numa.clone()
        };
        platform.numa = Some(&untold);
        create_acpi_tables(&mem, &platform).unwrap();
        assert_eq!(xsdt_signatures(&mem), ["FACP", "APIC", "MCFG"]);
    }

    #[test]
    fn dsdt_names_the_devices() {
        let layout = GuestLayout::new(256 << 20, 40).unwrap();
        let t = dsdt(&AcpiPlatform {
            layout: &layout,
            vcpus: 1,
            fixed_slots: Default::default(),
            numa: None,
        });
        let has = |s: &[u8]| t.windows(s.len()).any(|w| w == s);
        for name in [
            &b"_S5_"[..],
            b"PCI0",
            b"COM1",
            b"GED_",
            b"PWRB",
            b"ACPI0013",
            b"_EVT",
            b"PCNT",
            b"_PRT",
            b"SL1F",
        ] {
            assert!(has(name), "{}", String::from_utf8_lossy(name));
        }
    }

    fn two_nodes() -> GuestNuma {
        use crate::guest_numa::GuestNumaNode;
        use form_vm_allocator::MemoryRegion;
        let half = |id: u32| GuestNumaNode {
            id,
            vcpus: vec![id],
            ram: vec![MemoryRegion {
                start: u64::from(id) * (128 << 20),
                size: 128 << 20,
            }],
            host_nodes: Vec::new(),
        };
        GuestNuma {
            nodes: vec![half(0), half(1)],
            distances: vec![vec![10, 20], vec![20, 10]],
            in_acpi: true,
        }
    }

    /// A layout with node 1's root bus (0x10) holding a GPU-like device.
    fn layout_with_bus_0x10() -> GuestLayout {
        use form_vm_allocator::{PciRootNeeds, WindowNeed};
        GuestLayout::new(256 << 20, 40)
            .unwrap()
            .with_pci_roots(&[PciRootNeeds {
                bus: 0x10,
                mmio32: WindowNeed {
                    size: 16 << 20,
                    align: 16 << 20,
                },
                mmio64: WindowNeed {
                    size: 1 << 30,
                    align: 1 << 30,
                },
                io: WindowNeed {
                    size: 0x80,
                    align: 0x80,
                },
            }])
            .unwrap()
    }

    fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
        hay.windows(needle.len()).position(|w| w == needle)
    }

    #[test]
    fn a_nodes_root_bus_gets_a_host_bridge_with_its_bus_node_and_windows() {
        let layout = layout_with_bus_0x10();
        let numa = two_nodes();
        let t = dsdt(&AcpiPlatform {
            layout: &layout,
            vcpus: 2,
            fixed_slots: Default::default(),
            numa: Some(&numa),
        });
        let pc10 = layout.pci_roots()[1];
        assert_eq!(pc10.bus, 0x10);
        let start = find(&t, b"PC10").expect("a PC10 device");
        let end = find(&t, b"COM1").unwrap();
        assert!(start < end);
        let (before, bridge) = (&t[..start], &t[start..end]);
        let name = |n: &str, v: u32| bytes(&Name::new(n.into(), &v));
        for (what, pattern) in [
            ("_BBN 0x10", name("_BBN", 0x10)),
            ("_UID 0x10", name("_UID", 0x10)),
            ("_PXM 1", name("_PXM", 1)),
            ("_SEG 0", name("_SEG", 0)),
        ] {
            assert!(find(bridge, &pattern).is_some(), "{what}");
        }
        assert!(find(bridge, b"_PRT").is_some());
        // Bus 0 is node 0's.
        assert!(find(before, &name("_PXM", 0)).is_some());
        // The bridge decodes its slices; PCI0 no longer reaches the top of the
        // 32-bit window, which is PC10's now.
        let m32_last = (pc10.mmio32.last() as u32).to_le_bytes();
        assert_eq!(pc10.mmio32.last(), layout.mmio32().last());
        assert!(find(bridge, &m32_last).is_some());
        assert!(find(before, &m32_last).is_none());
        assert!(find(bridge, &pc10.mmio64.start.to_le_bytes()).is_some());
        assert!(find(before, &pc10.mmio64.last().to_le_bytes()).is_none());
    }

    #[test]
    fn without_nodes_the_dsdt_has_bus_0_alone_and_no_proximity() {
        let layout = GuestLayout::new(256 << 20, 40).unwrap();
        let t = dsdt(&AcpiPlatform {
            layout: &layout,
            vcpus: 1,
            fixed_slots: Default::default(),
            numa: None,
        });
        assert!(find(&t, b"_PXM").is_none());
        assert!(find(&t, b"PC10").is_none());
        // PCI0 decodes the whole windows.
        assert!(find(&t, &(layout.mmio32().last() as u32).to_le_bytes()).is_some());
        assert!(find(&t, &layout.mmio64().last().to_le_bytes()).is_some());
    }

    #[test]
    fn mcfg_covers_buses_up_to_the_highest_root_bus() {
        // Entry: base (8), segment (2), start bus, end bus.
        let entry = |t: &[u8]| (t.len(), t[44 + 10], t[44 + 11]);
        assert_eq!(entry(&mcfg(0)), (60, 0, 0));
        assert_eq!(entry(&mcfg(0x10)), (60, 0, 0x10));
        let layout = layout_with_bus_0x10();
        let mem = crate::memory::create_guest_memory(&layout, &Default::default()).unwrap();
        let numa = two_nodes();
        let platform = AcpiPlatform {
            layout: &layout,
            vcpus: 2,
            fixed_slots: Default::default(),
            numa: Some(&numa),
        };
        create_acpi_tables(&mem, &platform).unwrap();
        let mut rsdp = [0u8; 36];
        mem.read_slice(&mut rsdp, GuestAddress(RSDP_START)).unwrap();
        let xsdt_addr = u64::from_le_bytes(rsdp[24..32].try_into().unwrap());
        let mut mcfg_addr = [0u8; 8];
        // The XSDT lists FACP, APIC, then MCFG.
        mem.read_slice(&mut mcfg_addr, GuestAddress(xsdt_addr + 36 + 16))
            .unwrap();
        let mut table = [0u8; 60];
        mem.read_slice(&mut table, GuestAddress(u64::from_le_bytes(mcfg_addr)))
            .unwrap();
        assert_eq!(&table[0..4], b"MCFG");
        assert_eq!(entry(&table), (60, 0, 0x10));
    }

    /// iasl (acpica-tools) disassembles the DSDT with two host bridges and
    /// compiles the result again; skipped where iasl is not installed.
    #[test]
    fn iasl_reads_the_dsdt_with_a_second_host_bridge() {
        let Ok(version) = std::process::Command::new("iasl").arg("-v").output() else {
            eprintln!("iasl not installed; skipping");
            return;
        };
        assert!(version.status.success());
        let layout = layout_with_bus_0x10();
        let numa = two_nodes();
        let t = dsdt(&AcpiPlatform {
            layout: &layout,
            vcpus: 2,
            fixed_slots: Default::default(),
            numa: Some(&numa),
        });
        let dir = std::env::temp_dir().join(format!("form-vmm-dsdt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("dsdt.aml"), &t).unwrap();
        let run = |args: &[&str]| {
            let out = std::process::Command::new("iasl")
                .current_dir(&dir)
                .args(args)
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success(), "iasl {args:?}:\n{text}");
        };
        run(&["-d", "dsdt.aml"]);
        let dsl = std::fs::read_to_string(dir.join("dsdt.dsl")).unwrap();
        std::fs::remove_file(dir.join("dsdt.aml")).unwrap();
        run(&["dsdt.dsl"]);
        let _ = std::fs::remove_dir_all(&dir);
        let pc10 = &dsl[dsl.find("Device (_SB.PC10)").expect(&dsl)..];
        let pc10 = &pc10[..pc10.find("Device (_SB.COM1)").unwrap_or(pc10.len())];
        for expected in [
            "Name (_HID, EisaId (\"PNP0A08\")",
            "Name (_BBN, 0x10)",
            "Name (_UID, 0x10)",
            "Name (_PXM, One)",
            "WordBusNumber",
            "Name (_PRT, Package",
        ] {
            assert!(pc10.contains(expected), "{expected}:\n{pc10}");
        }
        let pc10_m32 = format!("0x{:08X}", layout.pci_roots()[1].mmio32.start);
        assert!(pc10.contains(&pc10_m32), "{pc10_m32}:\n{pc10}");
        let pci0 = &dsl[dsl.find("Device (_SB.PCI0)").unwrap()..];
        let pci0 = &pci0[..pci0.find("Scope").unwrap_or(pci0.len())];
        assert!(pci0.contains("Name (_PXM, Zero)"), "{pci0}");
        let old_top = format!("0x{:08X}", layout.mmio32().last());
        assert!(
            !pci0.contains(&old_top),
            "PCI0 still claims {old_top}:\n{pci0}"
        );
    }
}
