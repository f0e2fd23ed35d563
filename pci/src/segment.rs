//! The root buses of PCI segment 0, by bus number: bus 0 and, with devices placed
//! on guest NUMA nodes, one expander root bus per node (each its own host bridge in
//! the DSDT, as QEMU's pxb-pcie). A config access (ECAM or port 0xCF8) names a bus
//! number; this is where it finds the bus. The set is fixed when the VM is built.

use std::sync::{Arc, Mutex};

use crate::bus::PciBus;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PciSegmentError {
    #[error("PCI root bus {0:#04x} exists already")]
    DuplicateBus(u8),
}

/// Root buses by number; bus 0 is always there.
#[derive(Clone)]
pub struct PciSegment {
    /// In bus-number order.
    roots: Vec<(u8, Arc<Mutex<PciBus>>)>,
}

impl PciSegment {
    /// A segment with only `bus0`.
    pub fn new(bus0: Arc<Mutex<PciBus>>) -> Self {
        Self {
            roots: vec![(0, bus0)],
        }
    }

    /// Adds root bus `number`.
    pub fn add_root_bus(
        &mut self,
        number: u8,
        bus: Arc<Mutex<PciBus>>,
    ) -> Result<(), PciSegmentError> {
        match self.roots.binary_search_by_key(&number, |(n, _)| *n) {
            Ok(_) => Err(PciSegmentError::DuplicateBus(number)),
            Err(at) => {
                self.roots.insert(at, (number, bus));
                Ok(())
            }
        }
    }

    /// Root bus `number`, if the segment has one.
    pub fn bus(&self, number: u8) -> Option<&Arc<Mutex<PciBus>>> {
        self.roots
            .binary_search_by_key(&number, |(n, _)| *n)
            .ok()
            .map(|at| &self.roots[at].1)
    }

    /// Every root bus with its number, lowest first.
    pub fn buses(&self) -> impl Iterator<Item = (u8, &Arc<Mutex<PciBus>>)> {
        self.roots.iter().map(|(n, bus)| (*n, bus))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bus() -> Arc<Mutex<PciBus>> {
        Arc::new(Mutex::new(PciBus::new()))
    }

    #[test]
    fn finds_root_buses_by_number_and_refuses_a_second_of_one_number() {
        let bus0 = bus();
        let bus10 = bus();
        let mut segment = PciSegment::new(bus0.clone());
        segment.add_root_bus(0x20, bus()).unwrap();
        segment.add_root_bus(0x10, bus10.clone()).unwrap();
        assert_eq!(
            segment.add_root_bus(0x10, bus()),
            Err(PciSegmentError::DuplicateBus(0x10))
        );
        assert_eq!(
            segment.add_root_bus(0, bus()),
            Err(PciSegmentError::DuplicateBus(0))
        );
        assert!(Arc::ptr_eq(segment.bus(0).unwrap(), &bus0));
        assert!(Arc::ptr_eq(segment.bus(0x10).unwrap(), &bus10));
        assert!(segment.bus(0x11).is_none());
        assert_eq!(
            segment.buses().map(|(n, _)| n).collect::<Vec<_>>(),
            [0, 0x10, 0x20]
        );
    }
}
