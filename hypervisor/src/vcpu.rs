//! One virtual CPU: its registers and the `KVM_RUN` loop step.

use crate::error::{ioctl, HypervisorError, Result};
use crate::kick::{install_kick_handler, KickState, VcpuKicker};
use kvm_bindings::{
    kvm_fpu, kvm_lapic_state, kvm_mp_state, kvm_msr_entry, kvm_regs, kvm_sregs, CpuId, Msrs,
    KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN,
};
use kvm_ioctls::{VcpuExit, VcpuFd};

/// What a guest's `KVM_SYSTEM_EVENT` exit asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SystemEventKind {
    Shutdown,
    Reset,
    Crash,
    Other(u32),
}

/// Why `KVM_RUN` returned. Accesses to trapped I/O carry the data buffer: for
/// reads the caller fills it before the next `run`.
#[derive(Debug)]
pub enum VmExit<'a> {
    IoIn {
        port: u16,
        data: &'a mut [u8],
    },
    IoOut {
        port: u16,
        data: &'a [u8],
    },
    MmioRead {
        addr: u64,
        data: &'a mut [u8],
    },
    MmioWrite {
        addr: u64,
        data: &'a [u8],
    },
    Hlt,
    /// Triple fault: the CPU reset itself.
    Shutdown,
    SystemEvent(SystemEventKind),
    FailEntry {
        hardware_reason: u64,
        cpu: u32,
    },
    InternalError,
    /// A kick (signal or `immediate_exit`) interrupted the run.
    Interrupted,
    /// Any other exit, by its kvm-ioctls name; the VMM does not handle these.
    Unknown(String),
}

// LAPIC register offsets and LVT delivery modes (Intel SDM vol. 3, 10.5.1).
const APIC_LVT_LINT0: usize = 0x350;
const APIC_LVT_LINT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

fn lapic_reg(lapic: &kvm_lapic_state, offset: usize) -> u32 {
    let b = &lapic.regs[offset..offset + 4];
    u32::from_le_bytes([b[0] as u8, b[1] as u8, b[2] as u8, b[3] as u8])
}

fn set_lapic_reg(lapic: &mut kvm_lapic_state, offset: usize, value: u32) {
    for (dst, src) in lapic.regs[offset..offset + 4]
        .iter_mut()
        .zip(value.to_le_bytes())
    {
        *dst = src as _;
    }
}

fn with_delivery_mode(lvt: u32, mode: u32) -> u32 {
    (lvt & !0x700) | (mode << 8)
}

pub struct Vcpu {
    fd: VcpuFd,
    id: u32,
    kick: KickState,
}

impl Vcpu {
    pub(crate) fn new(mut fd: VcpuFd, id: u32) -> Result<Vcpu> {
        install_kick_handler()?;
        let immediate_exit = &mut fd.get_kvm_run().immediate_exit as *mut u8;
        Ok(Vcpu {
            fd,
            id,
            kick: KickState::new(immediate_exit),
        })
    }

    /// The APIC ID this vCPU was created with.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// A handle another thread can use to interrupt [`Vcpu::run`].
    pub fn kicker(&self) -> VcpuKicker {
        VcpuKicker::new(self.kick.clone())
    }

    /// Tells kickers which thread runs this vCPU; call it on that thread before
    /// the first `run`, and [`Vcpu::unbind_thread`] before the thread ends.
    pub fn bind_to_current_thread(&self) {
        self.kick.bind_current_thread();
    }

    pub fn unbind_thread(&self) {
        self.kick.unbind_thread();
    }

    /// Enters the guest until the next exit.
    pub fn run(&mut self) -> Result<VmExit<'_>> {
        let exit = match self.fd.run() {
            Ok(exit) => exit,
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                // Re-arm: the kick has been seen, the next run must enter the guest.
                self.kick.rearm();
                return Ok(VmExit::Interrupted);
            }
            Err(e) => {
                return Err(HypervisorError::Ioctl {
                    op: "KVM_RUN",
                    source: e,
                })
            }
        };
        Ok(match exit {
            VcpuExit::IoIn(port, data) => VmExit::IoIn { port, data },
            VcpuExit::IoOut(port, data) => VmExit::IoOut { port, data },
            VcpuExit::MmioRead(addr, data) => VmExit::MmioRead { addr, data },
            VcpuExit::MmioWrite(addr, data) => VmExit::MmioWrite { addr, data },
            VcpuExit::Hlt => VmExit::Hlt,
            VcpuExit::Shutdown => VmExit::Shutdown,
            VcpuExit::SystemEvent(kind, _) => VmExit::SystemEvent(match kind {
                KVM_SYSTEM_EVENT_SHUTDOWN => SystemEventKind::Shutdown,
                KVM_SYSTEM_EVENT_RESET => SystemEventKind::Reset,
                KVM_SYSTEM_EVENT_CRASH => SystemEventKind::Crash,
                other => SystemEventKind::Other(other),
            }),
            VcpuExit::FailEntry(hardware_reason, cpu) => VmExit::FailEntry {
                hardware_reason,
                cpu,
            },
            VcpuExit::InternalError => VmExit::InternalError,
            VcpuExit::Intr => VmExit::Interrupted,
            other => VmExit::Unknown(format!("{other:?}")),
        })
    }

    pub fn regs(&self) -> Result<kvm_regs> {
        self.fd.get_regs().map_err(ioctl("KVM_GET_REGS"))
    }

    pub fn set_regs(&self, regs: &kvm_regs) -> Result<()> {
        self.fd.set_regs(regs).map_err(ioctl("KVM_SET_REGS"))
    }

    pub fn sregs(&self) -> Result<kvm_sregs> {
        self.fd.get_sregs().map_err(ioctl("KVM_GET_SREGS"))
    }

    pub fn set_sregs(&self, sregs: &kvm_sregs) -> Result<()> {
        self.fd.set_sregs(sregs).map_err(ioctl("KVM_SET_SREGS"))
    }

    pub fn fpu(&self) -> Result<kvm_fpu> {
        self.fd.get_fpu().map_err(ioctl("KVM_GET_FPU"))
    }

    pub fn set_fpu(&self, fpu: &kvm_fpu) -> Result<()> {
        self.fd.set_fpu(fpu).map_err(ioctl("KVM_SET_FPU"))
    }

    pub fn set_cpuid(&self, cpuid: &CpuId) -> Result<()> {
        self.fd.set_cpuid2(cpuid).map_err(ioctl("KVM_SET_CPUID2"))
    }

    pub fn cpuid(&self) -> Result<CpuId> {
        self.fd
            .get_cpuid2(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
            .map_err(ioctl("KVM_GET_CPUID2"))
    }

    /// Writes MSRs given as (index, value); fails unless KVM took all of them.
    pub fn set_msrs(&self, msrs: &[(u32, u64)]) -> Result<()> {
        let entries: Vec<kvm_msr_entry> = msrs
            .iter()
            .map(|&(index, data)| kvm_msr_entry {
                index,
                data,
                ..Default::default()
            })
            .collect();
        let kvm_msrs = Msrs::from_entries(&entries).map_err(|_| HypervisorError::Ioctl {
            op: "KVM_SET_MSRS",
            source: kvm_ioctls::Error::new(libc::E2BIG),
        })?;
        let written = self.fd.set_msrs(&kvm_msrs).map_err(ioctl("KVM_SET_MSRS"))?;
        if written != entries.len() {
            let rejected = entries.get(written).map_or(0, |e| e.index);
            log::warn!("vCPU {}: KVM rejected MSR {rejected:#x}", self.id);
            return Err(HypervisorError::Ioctl {
                op: "KVM_SET_MSRS",
                source: kvm_ioctls::Error::new(libc::EINVAL),
            });
        }
        Ok(())
    }

    /// Reads the MSRs with the given indices, in order.
    pub fn msrs(&self, indices: &[u32]) -> Result<Vec<(u32, u64)>> {
        let entries: Vec<kvm_msr_entry> = indices
            .iter()
            .map(|&index| kvm_msr_entry {
                index,
                ..Default::default()
            })
            .collect();
        let mut kvm_msrs = Msrs::from_entries(&entries).map_err(|_| HypervisorError::Ioctl {
            op: "KVM_GET_MSRS",
            source: kvm_ioctls::Error::new(libc::E2BIG),
        })?;
        let read = self
            .fd
            .get_msrs(&mut kvm_msrs)
            .map_err(ioctl("KVM_GET_MSRS"))?;
        Ok(kvm_msrs.as_slice()[..read]
            .iter()
            .map(|e| (e.index, e.data))
            .collect())
    }

    pub fn lapic(&self) -> Result<kvm_lapic_state> {
        self.fd.get_lapic().map_err(ioctl("KVM_GET_LAPIC"))
    }

    pub fn set_lapic(&self, lapic: &kvm_lapic_state) -> Result<()> {
        self.fd.set_lapic(lapic).map_err(ioctl("KVM_SET_LAPIC"))
    }

    /// Wires the LAPIC's LINT0 to the PIC (ExtINT) and LINT1 to NMI, as firmware
    /// does on a PC, so legacy interrupts reach the BSP before the IOAPIC is set up.
    pub fn configure_lint(&self) -> Result<()> {
        let mut lapic = self.lapic()?;
        let lint0 = lapic_reg(&lapic, APIC_LVT_LINT0);
        set_lapic_reg(
            &mut lapic,
            APIC_LVT_LINT0,
            with_delivery_mode(lint0, APIC_MODE_EXTINT),
        );
        let lint1 = lapic_reg(&lapic, APIC_LVT_LINT1);
        set_lapic_reg(
            &mut lapic,
            APIC_LVT_LINT1,
            with_delivery_mode(lint1, APIC_MODE_NMI),
        );
        self.set_lapic(&lapic)
    }

    pub fn mp_state(&self) -> Result<kvm_mp_state> {
        self.fd.get_mp_state().map_err(ioctl("KVM_GET_MP_STATE"))
    }

    pub fn set_mp_state(&self, state: kvm_mp_state) -> Result<()> {
        self.fd
            .set_mp_state(state)
            .map_err(ioctl("KVM_SET_MP_STATE"))
    }
}

impl Drop for Vcpu {
    fn drop(&mut self) {
        // Kickers must stop touching kvm_run before its mapping goes away.
        self.kick.detach();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hypervisor::tests::hypervisor_or_skip;
    use crate::Vm;
    use kvm_bindings::kvm_segment;

    const GUEST_CODE: u64 = 0x1000;

    struct GuestRam {
        ptr: *mut u8,
        len: usize,
    }
    impl GuestRam {
        fn new(vm: &Vm, len: usize) -> GuestRam {
            // SAFETY: fresh anonymous mapping, checked below.
            let ptr = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
            assert_ne!(ptr, libc::MAP_FAILED);
            // SAFETY: the mapping is leaked for the test's lifetime (see Drop: none).
            unsafe { vm.add_memory(0, len as u64, ptr.cast(), false) }.unwrap();
            GuestRam {
                ptr: ptr.cast(),
                len,
            }
        }
        fn write(&self, addr: u64, bytes: &[u8]) {
            assert!(addr as usize + bytes.len() <= self.len);
            // SAFETY: bounds checked above.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    bytes.as_ptr(),
                    self.ptr.add(addr as usize),
                    bytes.len(),
                )
            };
        }
        fn write_u64(&self, addr: u64, v: u64) {
            self.write(addr, &v.to_le_bytes());
        }
    }

    /// Puts the vCPU straight into 64-bit mode with identity-mapped 2 MiB pages.
    fn enter_long_mode(vcpu: &Vcpu, ram: &GuestRam) {
        let (pml4, pdpt, pd) = (0x8000u64, 0x9000u64, 0xa000u64);
        ram.write_u64(pml4, pdpt | 0x3);
        ram.write_u64(pdpt, pd | 0x3);
        ram.write_u64(pd, 0x83);
        let mut sregs = vcpu.sregs().unwrap();
        let code = kvm_segment {
            base: 0,
            limit: 0xffff_ffff,
            selector: 0x8,
            type_: 0xb,
            present: 1,
            s: 1,
            l: 1,
            g: 1,
            ..Default::default()
        };
        let data = kvm_segment {
            selector: 0x10,
            type_: 0x3,
            l: 0,
            db: 1,
            ..code
        };
        sregs.cs = code;
        sregs.ds = data;
        sregs.es = data;
        sregs.ss = data;
        sregs.cr3 = pml4;
        sregs.cr4 |= 1 << 5; // PAE
        sregs.cr0 |= (1 << 0) | (1 << 31); // PE, PG
        sregs.efer |= (1 << 8) | (1 << 10); // LME, LMA
        vcpu.set_sregs(&sregs).unwrap();
    }

    #[test]
    fn long_mode_code_exits_on_io_and_mmio_then_halts() {
        let Some(hv) = hypervisor_or_skip("long_mode_code_exits_on_io_and_mmio_then_halts") else {
            return;
        };
        let vm = hv.create_vm().unwrap();
        let ram = GuestRam::new(&vm, 0x10_0000);
        #[rustfmt::skip]
        let code = [
            0x66, 0xba, 0xf8, 0x03,                   // mov dx, 0x3f8
            0xb0, 0x41,                               // mov al, 'A'
            0xee,                                     // out dx, al
            0xec,                                     // in al, dx
            0x48, 0xbb, 0, 0, 0x1f, 0, 0, 0, 0, 0,    // mov rbx, 0x1f0000 (mapped, not RAM)
            0x88, 0x03,                               // mov [rbx], al
            0xf4,                                     // hlt
        ];
        ram.write(GUEST_CODE, &code);
        let mut vcpu = vm.create_vcpu(0).unwrap();
        vcpu.set_cpuid(&hv.supported_cpuid().unwrap()).unwrap();
        enter_long_mode(&vcpu, &ram);
        let mut regs = vcpu.regs().unwrap();
        regs.rip = GUEST_CODE;
        regs.rflags = 0x2;
        vcpu.set_regs(&regs).unwrap();

        match vcpu.run().unwrap() {
            VmExit::IoOut { port: 0x3f8, data } => assert_eq!(data, b"A"),
            other => panic!("expected OUT to 0x3f8, got {other:?}"),
        }
        match vcpu.run().unwrap() {
            VmExit::IoIn { port: 0x3f8, data } => data.copy_from_slice(&[0x5a]),
            other => panic!("expected IN from 0x3f8, got {other:?}"),
        }
        match vcpu.run().unwrap() {
            VmExit::MmioWrite {
                addr: 0x1f_0000,
                data,
            } => assert_eq!(data, [0x5a]),
            other => panic!("expected MMIO write, got {other:?}"),
        }
        // With the in-kernel LAPIC, HLT blocks inside KVM instead of exiting; a
        // kick must still get the thread out.
        let kicker = vcpu.kicker();
        let runner = std::thread::spawn(move || {
            vcpu.bind_to_current_thread();
            let exit = format!("{:?}", vcpu.run().unwrap());
            vcpu.unbind_thread();
            exit
        });
        while !runner.is_finished() {
            kicker.kick();
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(runner.join().unwrap(), "Interrupted");
    }

    #[test]
    fn kick_interrupts_a_spinning_vcpu() {
        let Some(hv) = hypervisor_or_skip("kick_interrupts_a_spinning_vcpu") else {
            return;
        };
        let vm = hv.create_vm().unwrap();
        let ram = GuestRam::new(&vm, 0x20_0000);
        ram.write(GUEST_CODE, &[0xeb, 0xfe]); // jmp $
        let mut vcpu = vm.create_vcpu(0).unwrap();
        enter_long_mode(&vcpu, &ram);
        let mut regs = vcpu.regs().unwrap();
        regs.rip = GUEST_CODE;
        regs.rflags = 0x2;
        vcpu.set_regs(&regs).unwrap();
        let kicker = vcpu.kicker();
        let (tx, rx) = std::sync::mpsc::channel();
        let runner = std::thread::spawn(move || {
            vcpu.bind_to_current_thread();
            tx.send(()).unwrap();
            let interrupted = matches!(vcpu.run().unwrap(), VmExit::Interrupted);
            vcpu.unbind_thread();
            interrupted
        });
        rx.recv().unwrap();
        // Kick until the thread is done: one kick can land before KVM_RUN starts, which
        // immediate_exit covers, but the loop also covers a slow thread start.
        while !runner.is_finished() {
            kicker.kick();
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(runner.join().unwrap());
    }

    #[test]
    fn lint_and_mp_state() {
        let Some(hv) = hypervisor_or_skip("lint_and_mp_state") else {
            return;
        };
        let vm = hv.create_vm().unwrap();
        let vcpu = vm.create_vcpu(1).unwrap();
        vcpu.configure_lint().unwrap();
        let lapic = vcpu.lapic().unwrap();
        assert_eq!(
            (lapic_reg(&lapic, APIC_LVT_LINT0) >> 8) & 7,
            APIC_MODE_EXTINT
        );
        assert_eq!((lapic_reg(&lapic, APIC_LVT_LINT1) >> 8) & 7, APIC_MODE_NMI);
        let mut st = vcpu.mp_state().unwrap();
        st.mp_state = kvm_bindings::KVM_MP_STATE_UNINITIALIZED;
        vcpu.set_mp_state(st).unwrap();
        assert_eq!(
            vcpu.mp_state().unwrap().mp_state,
            kvm_bindings::KVM_MP_STATE_UNINITIALIZED
        );
        vcpu.set_msrs(&[(0x174, 0x10)]).unwrap(); // IA32_SYSENTER_CS
        assert_eq!(vcpu.msrs(&[0x174]).unwrap(), vec![(0x174, 0x10)]);
    }
}
