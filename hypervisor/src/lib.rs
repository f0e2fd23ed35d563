//! The only crate in form-vmm that talks to KVM.
//!
//! Everything above this crate (memory setup, boot, devices, VFIO) goes through
//! [`Hypervisor`], [`Vm`] and [`Vcpu`], so the ioctl surface stays in one place and
//! the rest of the VMM never names `kvm-ioctls`. The KVM structure types that callers
//! must fill in (registers, CPUID, MSRs, LAPIC state) are re-exported as [`bindings`].

// A panic in device or hypervisor code kills the vCPU thread a guest access
// runs on; failures there are errors, not unwraps.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

mod error;
mod hypervisor;
mod kick;
mod routing;
mod vcpu;
mod vm;

pub use error::{HypervisorError, Result};
pub use hypervisor::{host_phys_bits, Hypervisor};
pub use kick::{kick_signal, VcpuKicker};
pub use routing::MsiMessage;
pub use vcpu::{SystemEventKind, Vcpu, VmExit};
pub use vm::{DataMatch, IoEventAddress, Vm};

/// KVM's structure definitions, for code that fills registers, CPUID or MSRs.
pub use kvm_bindings as bindings;
/// A KVM device file descriptor (for example the KVM-VFIO pseudo device).
pub use kvm_ioctls::DeviceFd;

/// Number of IOAPIC pins; GSIs below this are the legacy irqchip routes.
pub const IOAPIC_PINS: u32 = 24;
