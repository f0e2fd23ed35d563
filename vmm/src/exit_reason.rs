//! Why a VM stopped running: what the vCPU threads report and the controller acts on.

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VmExitReason {
    PowerOff,
    Reset,
    Crashed(String),
    /// The VMM could not keep the VM running (guest RAM could not be mapped for
    /// its devices' DMA).
    Failed(String),
}
