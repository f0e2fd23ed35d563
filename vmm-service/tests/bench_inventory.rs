//! Inventory timing on generated hosts with 8 and 64 GPUs, for `scripts/bench-service`
//! (ignored in normal runs: `cargo test --release --test bench_inventory -- --ignored`).

mod common;

use std::time::{Duration, Instant};

use common::{Function, HostBuilder};
use vmm_service::gpu::{self, NoOwners};

/// `count` H100s, each behind a root port and a two-level switch like on HGX boards,
/// spread over two NUMA nodes.
fn host_with(count: usize) -> HostBuilder {
    let mut host = HostBuilder::new();
    for i in 0..count {
        // Three buses per GPU (switch upstream port, downstream port, GPU), four apart:
        // 64 GPUs fit in buses 1..=255 of segment 0.
        let bus = 4 * i + 1;
        let node = i32::from(i >= count / 2);
        let group = 10 * i as u32;
        let at = |bus: usize, dev: u8| format!("0000:{bus:02x}:{dev:02x}.0");
        let root = format!("0000:00:{:02x}.{}", i / 8 + 1, i % 8);
        host = host
            .function(
                Function::bridge(&root, 0x8086, 0x352a)
                    .group(group)
                    .numa(node),
            )
            .function(
                Function::bridge(&at(bus, 0), 0x1000, 0xc030)
                    .parent(&root)
                    .group(group + 1)
                    .numa(node),
            )
            .function(
                Function::bridge(&at(bus + 1, 0), 0x1000, 0xc030)
                    .parent(&at(bus, 0))
                    .group(group + 2)
                    .numa(node),
            )
            .function(
                Function::new(&at(bus + 2, 0), 0x030200, 0x10de, 0x2330)
                    .subsystem(0x10de, 0x16c1)
                    .parent(&at(bus + 1, 0))
                    .driver("nvidia")
                    .group(group + 3)
                    .numa(node)
                    .mem32(0, 0xa000_0000 + (i as u64) * 0x0100_0000, 16 << 20)
                    .mem64_pref(1, 0x2000_0000_0000 + (i as u64) * (256 << 30), 128 << 30)
                    .link("32.0 GT/s PCIe", 16, "32.0 GT/s PCIe", 16),
            );
    }
    host
}

fn time_inventory(count: usize) {
    let fixture = host_with(count).build();
    let runs = 20;
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let start = Instant::now();
        let gpus = gpu::list_gpus(&fixture.host, &NoOwners).unwrap();
        times.push(start.elapsed());
        assert_eq!(gpus.len(), count);
    }
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "inventory {count:>2} GPUs: min {:.2} ms, median {:.2} ms, max {:.2} ms ({runs} runs)",
        ms(times[0]),
        ms(times[runs / 2]),
        ms(times[runs - 1])
    );
}

#[test]
#[ignore = "a benchmark: scripts/bench-service runs it"]
fn inventory_of_8_and_64_gpus() {
    time_inventory(8);
    time_inventory(64);
}
