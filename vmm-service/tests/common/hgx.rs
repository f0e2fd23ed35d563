//! An HGX H100 host with everything an HGX full-passthrough VM takes: 8 H100 SXM5
//! GPUs, 4 NVSwitches and 8 ConnectX-7 NICs on two NUMA nodes. Each node has two
//! PCIe switches, and each switch holds 2 GPUs and 2 NICs (the GPUDirect RDMA
//! pairing); 2 NVSwitches hang off each node. Every function has its own IOMMU
//! group (the switches do ACS).

use super::{Function, HostBuilder};

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;

/// The root bus of switch `s` (0-3): switches 0 and 1 are on node 0, 2 and 3 on node 1.
fn root_bus(switch: usize) -> usize {
    0x10 + switch * 0x20
}

/// GPU `k` (0 or 1) of switch `s`.
pub fn gpu(switch: usize, k: usize) -> String {
    format!("0000:{:02x}:00.0", root_bus(switch) + 3 + k)
}

/// NIC `k` (0 or 1) of switch `s`.
pub fn nic(switch: usize, k: usize) -> String {
    format!("0000:{:02x}:00.0", root_bus(switch) + 5 + k)
}

/// NVSwitch `i` (0-3); 0 and 1 on node 0.
pub fn nvswitch(i: usize) -> String {
    format!("0000:{:02x}:00.0", 0xc0 + i)
}

pub fn hgx_full() -> HostBuilder {
    let mut host = HostBuilder::new().numa_nodes(2);
    let mut group = 100;
    let mut next_group = || {
        group += 1;
        group
    };
    for switch in 0..4 {
        let node = (switch / 2) as i32;
        let bus = root_bus(switch);
        let root_port = format!("0000:{bus:02x}:01.0");
        let upstream = format!("0000:{:02x}:00.0", bus + 1);
        host = host
            .function(
                Function::bridge(&root_port, 0x8086, 0x352a)
                    .group(next_group())
                    .numa(node),
            )
            .function(
                Function::bridge(&upstream, 0x1000, 0xc030)
                    .parent(&root_port)
                    .group(next_group())
                    .numa(node),
            );
        for port in 0..4 {
            let downstream = format!("0000:{:02x}:{port:02x}.0", bus + 2);
            host = host.function(
                Function::bridge(&downstream, 0x1000, 0xc030)
                    .parent(&upstream)
                    .group(next_group())
                    .numa(node),
            );
            let endpoint = format!("0000:{:02x}:00.0", bus + 3 + port);
            let function = if port < 2 {
                let bar1 = 0x2000_0000_0000 + ((switch * 2 + port) as u64) * 256 * GIB;
                Function::new(&endpoint, 0x030200, 0x10de, 0x2330)
                    .subsystem(0x10de, 0x16c1)
                    .driver("nvidia")
                    .mem32(
                        0,
                        0xa000_0000 + ((switch * 2 + port) as u64) * 0x0200_0000,
                        16 * MIB,
                    )
                    .mem64_pref(1, bar1, 128 * GIB)
            } else {
                Function::new(&endpoint, 0x020700, 0x15b3, 0x1021)
                    .driver("mlx5_core")
                    .mem64_pref(
                        0,
                        0x3000_0000_0000 + ((switch * 4 + port) as u64) * 64 * MIB,
                        32 * MIB,
                    )
            };
            host = host.function(function.parent(&downstream).group(next_group()).numa(node));
        }
    }
    for i in 0..4 {
        host = host.function(
            Function::new(&nvswitch(i), 0x068000, 0x10de, 0x22a3)
                .driver("nvidia")
                .group(next_group())
                .numa((i / 2) as i32)
                .mem32(0, 0xe000_0000 + (i as u64) * 0x0200_0000, 32 * MIB),
        );
    }
    host
}
