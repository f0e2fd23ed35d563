//! The operator's bounds on what VMs may take of the host (`serve --max-vms`,
//! `--max-memory`, `--max-vcpus`) and on the logs the service keeps for them.

use std::time::Duration;

use form_service_api::format_bytes;

use crate::api::types::{VmInstanceConfig, VmState};
use crate::state::InstanceRecord;

use super::error::InstanceError;

/// Admission limits; `None` is no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AdmissionLimits {
    /// VMs recorded (any state).
    pub max_vms: Option<u32>,
    /// Guest RAM, in bytes, of the VMs with a VMM (created or running).
    pub max_memory: Option<u64>,
    /// vCPUs of the VMs with a VMM.
    pub max_vcpus: Option<u32>,
}

/// What the VMs use now, as the limits count it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub vms: u32,
    pub memory: u64,
    pub vcpus: u32,
}

impl Usage {
    pub fn of(records: &[InstanceRecord]) -> Self {
        let mut usage = Self {
            vms: u32::try_from(records.len()).unwrap_or(u32::MAX),
            ..Self::default()
        };
        for record in records.iter().filter(|r| r.state != VmState::Stopped) {
            usage.memory = usage.memory.saturating_add(record.config.memory);
            usage.vcpus = usage.vcpus.saturating_add(record.config.vcpus);
        }
        usage
    }
}

impl AdmissionLimits {
    /// Whether `config` may start (a VMM for it) on top of `usage`; `new_vm` when it
    /// would also be a new record. Refusals name the flag and the current use.
    pub fn admit(
        &self,
        usage: &Usage,
        config: &VmInstanceConfig,
        new_vm: bool,
    ) -> Result<(), InstanceError> {
        if let (Some(max), true) = (self.max_vms, new_vm) {
            if usage.vms >= max {
                return Err(InstanceError::LimitReached(format!(
                    "this service keeps at most {max} VMs (--max-vms) and has {}; delete one first",
                    usage.vms
                )));
            }
        }
        if let Some(max) = self.max_memory {
            if usage.memory.saturating_add(config.memory) > max {
                return Err(InstanceError::LimitReached(format!(
                    "memory: VM {} asks for {}, and created or running VMs hold {} of the {} this service allows (--max-memory); shut a VM down or ask for less",
                    config.name,
                    format_bytes(config.memory),
                    format_bytes(usage.memory),
                    format_bytes(max)
                )));
            }
        }
        if let Some(max) = self.max_vcpus {
            if usage.vcpus.saturating_add(config.vcpus) > max {
                return Err(InstanceError::LimitReached(format!(
                    "vcpus: VM {} asks for {}, and created or running VMs hold {} of the {max} this service allows (--max-vcpus); shut a VM down or ask for fewer",
                    config.name, config.vcpus, usage.vcpus
                )));
            }
        }
        Ok(())
    }
}

/// How large each VM's `serial.log` and `vmm.log` may grow before the service
/// rotates it (copy to `.1`, older ones shifted up to `.<keep>`, then truncate).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogLimits {
    pub max_bytes: u64,
    /// Rotated files kept (`serial.log.1` .. `serial.log.<keep>`).
    pub keep: u32,
    /// How often the logs are checked.
    pub interval: Duration,
}

/// 64 MiB per file, two older files: at most 192 MiB per log.
pub const DEFAULT_LOG_MAX_BYTES: u64 = 64 << 20;
pub const DEFAULT_LOG_KEEP: u32 = 2;
pub const DEFAULT_LOG_INTERVAL: Duration = Duration::from_secs(5);

impl Default for LogLimits {
    fn default() -> Self {
        Self {
            max_bytes: DEFAULT_LOG_MAX_BYTES,
            keep: DEFAULT_LOG_KEEP,
            interval: DEFAULT_LOG_INTERVAL,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(memory: u64, vcpus: u32) -> VmInstanceConfig {
        serde_json::from_value(serde_json::json!({
            "name": "vm", "kernel": "/k", "memory": memory, "vcpus": vcpus
        }))
        .unwrap()
    }

    #[test]
    fn each_limit_names_its_flag() {
        let usage = Usage {
            vms: 2,
            memory: 3 << 30,
            vcpus: 6,
        };
        let limits = AdmissionLimits {
            max_vms: Some(2),
            max_memory: Some(4 << 30),
            max_vcpus: Some(8),
        };
        let message = |r: Result<(), InstanceError>| r.unwrap_err().to_string();
        assert!(message(limits.admit(&usage, &config(1 << 30, 1), true)).contains("--max-vms"));
        // A stopped VM booting again is no new VM.
        limits.admit(&usage, &config(1 << 30, 2), false).unwrap();
        assert!(message(limits.admit(&usage, &config(2 << 30, 1), false)).contains("--max-memory"));
        assert!(message(limits.admit(&usage, &config(1 << 30, 3), false)).contains("--max-vcpus"));
        AdmissionLimits::default()
            .admit(&usage, &config(64 << 30, 64), true)
            .unwrap();
    }
}
