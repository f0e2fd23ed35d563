//! vCPUs: per-vCPU CPUID and MSRs, and the thread that runs each one.

use crate::exit_reason::VmExitReason;
use crate::io_buses::IoBuses;
use hypervisor::bindings::{CpuId, KVM_MP_STATE_UNINITIALIZED};
use hypervisor::{SystemEventKind, Vcpu, VcpuKicker, VmExit};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use vmm_sys_util::eventfd::EventFd;

// CPUID bits (Intel SDM vol. 2A, CPUID; AMD APM vol. 3, appendix E).
const LEAF1_ECX_HYPERVISOR: u32 = 1 << 31;
const LEAF1_EDX_HTT: u32 = 1 << 28;
const TOPOLOGY_LEVEL_SMT: u32 = 1;
const TOPOLOGY_LEVEL_CORE: u32 = 2;

// MSRs the boot CPU starts with set.
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MISC_ENABLE_FAST_STRING: u64 = 1;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
/// MTRRs enabled, default memory type write-back.
const MTRR_ENABLE_WB: u64 = (1 << 11) | 6;

/// Bits needed to number `count` items (x2APIC ID shift for a topology level).
fn id_bits(count: u32) -> u32 {
    count.max(1).next_power_of_two().trailing_zeros()
}

/// KVM's supported CPUID, adjusted for vCPU `apic_id` of `count` vCPUs presented
/// as one socket of single-threaded cores, whose last-level cache `llc_vcpus`
/// vCPUs share (`count`, unless guest NUMA nodes split it: see
/// [`crate::guest_numa::GuestNuma::llc_vcpus`]).
pub fn vcpu_cpuid(supported: &CpuId, apic_id: u32, count: u32, llc_vcpus: u32) -> CpuId {
    let mut cpuid = supported.clone();
    // "AuthenticAMD" and "HygonGenuine" both start their vendor string in EBX so.
    let amd = cpuid.as_slice().iter().any(|e| {
        e.function == 0
            && (e.ebx == u32::from_le_bytes(*b"Auth") || e.ebx == u32::from_le_bytes(*b"Hygo"))
    });
    let logical_ids = count.next_power_of_two().min(0x80);
    for e in cpuid.as_mut_slice() {
        match e.function {
            1 => {
                e.ebx = (e.ebx & 0x0000_ffff) | (apic_id << 24) | (logical_ids << 16);
                e.ecx |= LEAF1_ECX_HYPERVISOR;
                if count > 1 {
                    e.edx |= LEAF1_EDX_HTT;
                } else {
                    e.edx &= !LEAF1_EDX_HTT;
                }
            }
            // A leaf 4 entry with cache type 0 ends the list; leave it alone.
            4 if e.eax & 0x1f != 0 => {
                // Cores per package - 1 in 31:26; threads sharing the cache - 1 in
                // 25:14: the L3 (level 3) is shared by all vCPUs, lower levels by one.
                let level = (e.eax >> 5) & 0x7;
                let sharing = if level >= 3 { llc_vcpus - 1 } else { 0 };
                e.eax = (e.eax & 0x3fff) | ((count - 1) << 26) | ((sharing & 0xfff) << 14);
            }
            // AMD's cache leaf, the one Linux reads the LLC from there. Left as KVM
            // gives it unless nodes split the cache, so one-node guests see what
            // they always did.
            0x8000_001d if amd && llc_vcpus < count && (e.eax >> 5) & 0x7 >= 3 => {
                e.eax = (e.eax & !(0xfff << 14)) | (((llc_vcpus - 1) & 0xfff) << 14);
            }
            0xb | 0x1f => {
                e.edx = apic_id;
                match e.index {
                    0 => {
                        e.eax = 0;
                        e.ebx = 1;
                        e.ecx = TOPOLOGY_LEVEL_SMT << 8;
                    }
                    1 => {
                        e.eax = id_bits(count);
                        e.ebx = count;
                        e.ecx = (TOPOLOGY_LEVEL_CORE << 8) | 1;
                    }
                    index => {
                        e.eax = 0;
                        e.ebx = 0;
                        e.ecx = index;
                    }
                }
            }
            0x8000_0008 if amd => {
                // AMD: number of cores - 1, and the APIC ID bits used for the core.
                e.ecx = (e.ecx & !0xf0ff) | ((count - 1) & 0xff) | (id_bits(count) << 12);
            }
            0x8000_001e if amd => {
                // AMD extended APIC ID; one thread per core, one node.
                e.eax = apic_id;
                e.ebx &= !0xffff;
                e.ebx |= apic_id & 0xff;
                e.ecx &= !0xff;
            }
            _ => {}
        }
    }
    cpuid
}

/// Gives a vCPU its CPUID, MSRs and LAPIC wiring; APs wait for INIT/SIPI.
pub fn configure_vcpu(
    vcpu: &Vcpu,
    supported: &CpuId,
    count: u32,
    llc_vcpus: u32,
) -> hypervisor::Result<()> {
    vcpu.set_cpuid(&vcpu_cpuid(supported, vcpu.id(), count, llc_vcpus))?;
    vcpu.set_msrs(&[
        (MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        (MSR_MTRR_DEF_TYPE, MTRR_ENABLE_WB),
    ])?;
    vcpu.configure_lint()?;
    if vcpu.id() != 0 {
        let mut state = vcpu.mp_state()?;
        state.mp_state = KVM_MP_STATE_UNINITIALIZED;
        vcpu.set_mp_state(state)?;
    }
    Ok(())
}

/// The eventfds devices write when the guest asks to power off or reset.
pub struct DeviceRequests {
    pub power_off: EventFd,
    pub reset: EventFd,
}

impl DeviceRequests {
    /// Whether a device raised a request, without consuming it. Checked by the
    /// vCPU right after the trapped write that may have raised it, so the guest
    /// never runs another instruction after asking to be switched off.
    fn pending(&self) -> Option<VmExitReason> {
        let mut fds = [&self.power_off, &self.reset].map(|fd| libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        });
        // SAFETY: fds is a valid pollfd array; a zero timeout never blocks.
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 0) };
        if ready <= 0 {
            return None;
        }
        if fds[0].revents != 0 {
            Some(VmExitReason::PowerOff)
        } else if fds[1].revents != 0 {
            Some(VmExitReason::Reset)
        } else {
            None
        }
    }
}

/// How a VM ended, shared by the vCPU threads: the first reason wins, the
/// matching `VmEvents` fd is written and all vCPUs stop.
pub struct ExitSignal {
    reason: Mutex<Option<VmExitReason>>,
    stop: AtomicBool,
    kickers: Mutex<Vec<VcpuKicker>>,
    exit_evt: EventFd,
    reset_evt: EventFd,
    requests: DeviceRequests,
}

impl ExitSignal {
    pub fn new(exit_evt: EventFd, reset_evt: EventFd, requests: DeviceRequests) -> ExitSignal {
        ExitSignal {
            reason: Mutex::new(None),
            stop: AtomicBool::new(false),
            kickers: Mutex::new(Vec::new()),
            exit_evt,
            reset_evt,
            requests,
        }
    }

    /// Ends the VM if the last trapped write raised a power-off or reset request.
    fn check_device_requests(&self) {
        if let Some(reason) = self.requests.pending() {
            self.fire(reason);
        }
    }

    pub fn add_kicker(&self, kicker: VcpuKicker) {
        self.kickers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(kicker);
    }

    pub fn reason(&self) -> Option<VmExitReason> {
        self.reason
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// Makes every vCPU thread return; no exit reason is recorded.
    pub fn stop_vcpus(&self) {
        self.stop.store(true, Ordering::SeqCst);
        for k in self
            .kickers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            k.kick();
        }
    }

    /// Records why the VM ended (if nothing did before), tells the control loop,
    /// and stops the vCPUs.
    pub fn fire(&self, reason: VmExitReason) {
        let mut slot = self.reason.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_none() {
            let evt = if reason == VmExitReason::Reset {
                &self.reset_evt
            } else {
                &self.exit_evt
            };
            log::info!("VM exit: {reason:?}");
            *slot = Some(reason);
            if let Err(e) = evt.write(1) {
                log::error!("cannot signal the VM exit to the control loop: {e}");
            }
        }
        drop(slot);
        self.stop_vcpus();
    }
}

/// Starts the thread that runs `vcpu` until the VM stops, on `cpus` when given;
/// returns it with its kernel thread id. The thread pins itself before its first
/// KVM_RUN, and a pin that fails is this call's error, not a VM left running
/// elsewhere than asked.
pub fn spawn_vcpu_thread(
    mut vcpu: Vcpu,
    buses: IoBuses,
    exit: Arc<ExitSignal>,
    cpus: Option<Arc<Vec<usize>>>,
) -> std::io::Result<(JoinHandle<()>, libc::pid_t)> {
    let name = format!("vcpu{}", vcpu.id());
    let wanted = cpus
        .as_deref()
        .map(|cpus| format!(" on host CPUs {}", crate::numa::format_list(cpus)))
        .unwrap_or_default();
    let (started, ready) = std::sync::mpsc::sync_channel(1);
    let handle = std::thread::Builder::new().name(name).spawn(move || {
        let pinned = match &cpus {
            Some(cpus) => crate::numa::pin_current_thread(cpus),
            None => Ok(()),
        }
        // The vCPU's seccomp filter, before the guest runs a single instruction.
        .and_then(|()| {
            crate::sandbox::enter(crate::sandbox::ThreadKind::Vcpu).map_err(std::io::Error::other)
        });
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::gettid() };
        let failed = pinned.is_err();
        let _ = started.send(pinned.map(|()| tid));
        if failed {
            return;
        }
        vcpu.bind_to_current_thread();
        run_vcpu(&mut vcpu, &buses, &exit);
        vcpu.unbind_thread();
    })?;
    let outcome = ready.recv().unwrap_or_else(|_| {
        Err(std::io::Error::other(
            "the vCPU thread ended before it started",
        ))
    });
    match outcome {
        Ok(tid) => Ok((handle, tid)),
        Err(e) => {
            let _ = handle.join();
            Err(std::io::Error::new(
                e.kind(),
                format!("cannot start the vCPU thread{wanted}: {e}"),
            ))
        }
    }
}

fn run_vcpu(vcpu: &mut Vcpu, buses: &IoBuses, exit: &ExitSignal) {
    let id = vcpu.id();
    while !exit.stopping() {
        let outcome = match vcpu.run() {
            Ok(VmExit::IoIn { port, data }) => {
                if !buses.pio.read(u64::from(port), data) {
                    data.fill(0xff);
                }
                None
            }
            Ok(VmExit::IoOut { port, data }) => {
                buses.pio.write(u64::from(port), data);
                exit.check_device_requests();
                None
            }
            Ok(VmExit::MmioRead { addr, data }) => {
                if !buses.mmio.read(addr, data) {
                    data.fill(0xff);
                }
                None
            }
            Ok(VmExit::MmioWrite { addr, data }) => {
                buses.mmio.write(addr, data);
                exit.check_device_requests();
                None
            }
            Ok(VmExit::Hlt) | Ok(VmExit::Interrupted) => None,
            // A triple fault resets a PC.
            Ok(VmExit::Shutdown) => Some(VmExitReason::Reset),
            Ok(VmExit::SystemEvent(kind)) => Some(match kind {
                SystemEventKind::Shutdown => VmExitReason::PowerOff,
                SystemEventKind::Reset => VmExitReason::Reset,
                SystemEventKind::Crash => VmExitReason::Crashed(format!("vCPU {id}: guest reported a crash")),
                SystemEventKind::Other(t) => {
                    VmExitReason::Crashed(format!("vCPU {id}: unknown system event {t}"))
                }
            }),
            Ok(VmExit::FailEntry { hardware_reason, cpu }) => Some(VmExitReason::Crashed(format!(
                "vCPU {id}: KVM failed to enter the guest (hardware reason {hardware_reason:#x}, host CPU {cpu})"
            ))),
            Ok(VmExit::InternalError) => Some(VmExitReason::Crashed(format!(
                "vCPU {id}: KVM internal error (the guest did something KVM cannot emulate)"
            ))),
            Ok(VmExit::Unknown(what)) => {
                Some(VmExitReason::Crashed(format!("vCPU {id}: unhandled exit {what}")))
            }
            Err(e) => Some(VmExitReason::Crashed(format!("vCPU {id}: {e}"))),
        };
        if let Some(reason) = outcome {
            exit.fire(reason);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hypervisor::bindings::kvm_cpuid_entry2;

    fn entry(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            ..Default::default()
        }
    }

    #[test]
    fn cpuid_carries_apic_ids_and_topology() {
        let supported = CpuId::from_entries(&[
            kvm_cpuid_entry2 {
                ebx: u32::from_le_bytes(*b"Auth"),
                ..entry(0, 0)
            },
            entry(0x8000_0008, 0),
            entry(1, 0),
            kvm_cpuid_entry2 {
                eax: 3 << 5 | 0x3,
                ..entry(4, 3)
            },
            kvm_cpuid_entry2 {
                eax: 1 << 5,
                ..entry(4, 0)
            },
            entry(0xb, 0),
            entry(0xb, 1),
            entry(0xb, 2),
        ])
        .unwrap();
        let c = vcpu_cpuid(&supported, 2, 4, 4);
        let get = |f: u32, i: u32| {
            *c.as_slice()
                .iter()
                .find(|e| e.function == f && e.index == i)
                .unwrap()
        };
        assert_eq!(get(1, 0).ebx >> 24, 2);
        assert_eq!((get(1, 0).ebx >> 16) & 0xff, 4);
        assert_eq!(
            (vcpu_cpuid(&supported, 0, 3, 3).as_slice()[2].ebx >> 16) & 0xff,
            4
        );
        assert_ne!(get(1, 0).ecx & LEAF1_ECX_HYPERVISOR, 0);
        assert_eq!(get(4, 3).eax >> 26, 3);
        assert_eq!((get(4, 3).eax >> 14) & 0xfff, 3);
        assert_eq!((get(4, 0).eax >> 14) & 0xfff, 0);
        assert_eq!(
            (get(0xb, 1).eax, get(0xb, 1).ebx, get(0xb, 1).edx),
            (2, 4, 2)
        );
        assert_eq!(get(0xb, 0).ebx, 1);
        assert_eq!((get(0xb, 2).ebx, get(0xb, 2).ecx), (0, 2));
        assert_eq!(get(0x8000_0008, 0).ecx & 0xff, 3);
        assert_eq!(id_bits(1), 0);
        assert_eq!(id_bits(3), 2);
    }

    #[test]
    fn guest_nodes_split_the_last_level_cache() {
        let l3 = |function| kvm_cpuid_entry2 {
            eax: 3 << 5 | 0x3 | (15 << 14),
            ..entry(function, 3)
        };
        let l2 = |function| kvm_cpuid_entry2 {
            eax: 2 << 5 | 0x3 | (1 << 14),
            ..entry(function, 2)
        };
        let amd = kvm_cpuid_entry2 {
            ebx: u32::from_le_bytes(*b"Auth"),
            ..entry(0, 0)
        };
        let supported =
            CpuId::from_entries(&[amd, l3(4), l3(0x8000_001d), l2(0x8000_001d)]).unwrap();
        let sharing = |c: &CpuId, function: u32, index: u32| {
            let e = c
                .as_slice()
                .iter()
                .find(|e| e.function == function && e.index == index)
                .unwrap();
            (e.eax >> 14) & 0xfff
        };
        let split = vcpu_cpuid(&supported, 5, 8, 4);
        assert_eq!(sharing(&split, 4, 3), 3);
        assert_eq!(sharing(&split, 0x8000_001d, 3), 3);
        assert_eq!(sharing(&split, 0x8000_001d, 2), 1, "the L2 is left alone");
        let whole = vcpu_cpuid(&supported, 5, 8, 8);
        assert_eq!(sharing(&whole, 4, 3), 7);
        assert_eq!(sharing(&whole, 0x8000_001d, 3), 15, "as KVM gave it");
    }
}
