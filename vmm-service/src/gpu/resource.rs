//! BARs from a function's sysfs `resource` file: one line per resource,
//! `start end flags` in hexadecimal; lines 0-5 are the BARs, line 6 the expansion ROM,
//! the rest SR-IOV and bridge windows. An unassigned resource reads all zeros.

use serde::Serialize;

// Kernel resource flags (include/linux/ioport.h).
const IORESOURCE_IO: u64 = 0x0000_0100;
const IORESOURCE_MEM: u64 = 0x0000_0200;
const IORESOURCE_PREFETCH: u64 = 0x0000_2000;
const IORESOURCE_MEM_64: u64 = 0x0010_0000;

const BAR_COUNT: usize = 6;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BarKind {
    Io,
    Memory32,
    Memory64,
}

/// One assigned BAR.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Bar {
    /// BAR number (0-5); a 64-bit BAR occupies two registers and is named by the first.
    pub index: u8,
    pub kind: BarKind,
    pub prefetchable: bool,
    /// Host physical address the firmware or kernel assigned.
    pub start: u64,
    /// Size in bytes.
    pub size: u64,
}

/// The assigned BARs listed in a `resource` file; lines that do not parse are skipped,
/// since a partial answer is more useful for an inventory than none.
pub fn parse_bars(text: &str) -> Vec<Bar> {
    text.lines()
        .take(BAR_COUNT)
        .enumerate()
        .filter_map(|(index, line)| {
            let mut fields = line.split_whitespace().map(parse_field);
            let (start, end, flags) = (fields.next()??, fields.next()??, fields.next()??);
            if end == 0 || end < start {
                return None;
            }
            let kind = if flags & IORESOURCE_IO != 0 {
                BarKind::Io
            } else if flags & IORESOURCE_MEM != 0 {
                if flags & IORESOURCE_MEM_64 != 0 {
                    BarKind::Memory64
                } else {
                    BarKind::Memory32
                }
            } else {
                return None;
            };
            Some(Bar {
                index: u8::try_from(index).ok()?,
                kind,
                prefetchable: flags & IORESOURCE_PREFETCH != 0,
                start,
                size: (end - start).checked_add(1)?,
            })
        })
        .collect()
}

fn parse_field(text: &str) -> Option<u64> {
    u64::from_str_radix(text.strip_prefix("0x")?, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_an_h100_resource_file() {
        let text = "\
0x00000000e2000000 0x00000000e2ffffff 0x0000000000040200
0x0000220000000000 0x0000221fffffffff 0x000000000014220c
0x0000000000000000 0x0000000000000000 0x0000000000000000
0x0000222000000000 0x0000222001ffffff 0x000000000014220c
0x0000000000000000 0x0000000000000000 0x0000000000000000
0x0000000000000000 0x0000000000000000 0x0000000000000000
0x0000000000000000 0x0000000000000000 0x0000000000000000
";
        let bars = parse_bars(text);
        assert_eq!(bars.len(), 3);
        assert_eq!(
            (bars[0].index, bars[0].kind, bars[0].size),
            (0, BarKind::Memory32, 16 << 20)
        );
        assert!(!bars[0].prefetchable);
        assert_eq!(
            (bars[1].index, bars[1].kind, bars[1].size),
            (1, BarKind::Memory64, 128 << 30)
        );
        assert!(bars[1].prefetchable);
        assert_eq!((bars[2].index, bars[2].size), (3, 32 << 20));
    }

    #[test]
    fn reads_io_bars_and_ignores_garbage() {
        let text = "0x000000000000e000 0x000000000000e07f 0x0000000000040101\nnonsense\n";
        let bars = parse_bars(text);
        assert_eq!(bars.len(), 1);
        assert_eq!((bars[0].kind, bars[0].size), (BarKind::Io, 128));
    }
}
