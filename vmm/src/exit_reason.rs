//! Why a VM stopped running: what the vCPU threads report and the controller acts on.

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VmExitReason {
    PowerOff,
    Reset,
    Crashed(String),
}
