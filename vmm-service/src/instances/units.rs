//! What a VM gets when it asks for a device: the device's whole IOMMU group, as the
//! kernel defines it. The kernel hands a group to userspace only whole, and form-vmm
//! refuses a group some of whose functions are on vfio-pci but not its own, so the
//! unit of assignment is the group:
//!
//! - functions of the device's own slot (a GPU's HDMI audio function) always go with
//!   it, whatever their class, into the same guest slot;
//! - non-bridge members in other slots (devices behind a switch without access
//!   control) go only if the operator allows their class, since they may be the
//!   host's own;
//! - no function of the group may belong to a VM already, and every one must be
//!   resettable (or waived by the operator), as it will pass from VM to VM.

use crate::api::types::DeviceRole;
use crate::gpu::{self, Bdf, DevicePolicy, GpuError, HostPaths, PciFunction, ResetMethod};
use crate::state::GpuAssignment;

use super::error::InstanceError;

/// One device asked for and the functions of its IOMMU group that go with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unit {
    pub head: Bdf,
    /// [`DeviceRole::Gpu`] or [`DeviceRole::Companion`].
    pub role: DeviceRole,
    pub group: u32,
    /// The other functions, each [`DeviceRole::Function`] or
    /// [`DeviceRole::GroupMember`], in address order.
    pub members: Vec<(Bdf, DeviceRole)>,
}

impl Unit {
    /// Every function of the unit, head first.
    pub fn functions(&self) -> impl Iterator<Item = Bdf> + '_ {
        std::iter::once(self.head).chain(self.members.iter().map(|(bdf, _)| *bdf))
    }

    /// Members in other slots: the caller approved taking them from the host.
    pub fn other_slots(&self) -> Vec<Bdf> {
        self.members
            .iter()
            .filter(|(_, role)| *role == DeviceRole::GroupMember)
            .map(|(bdf, _)| *bdf)
            .collect()
    }

    /// The unit's rows for VM `name`, its head known to form-vmm as `id`: functions
    /// of the head's slot as `id-f<function>`, members of other slots `id-m<n>`
    /// (form-vmm's ids take letters, digits, `-` and `_`).
    pub fn assignments(&self, name: &str, id: &str) -> Vec<GpuAssignment> {
        let row = |bdf: Bdf, device_id: String, role: DeviceRole| GpuAssignment {
            bdf,
            instance: name.to_string(),
            device_id,
            unit: id.to_string(),
            role,
        };
        let mut rows = vec![row(self.head, id.to_string(), self.role)];
        let mut others = 0;
        for &(bdf, role) in &self.members {
            let device_id = if role == DeviceRole::Function {
                format!("{id}-f{}", bdf.function())
            } else {
                others += 1;
                format!("{id}-m{others}")
            };
            rows.push(row(bdf, device_id, role));
        }
        rows
    }
}

/// Turns devices asked for into units, against the host, the operator's policy and
/// who holds what now.
pub struct Planner<'a> {
    pub host: &'a HostPaths,
    pub policy: &'a DevicePolicy,
    /// Every function any VM holds.
    pub held: &'a [GpuAssignment],
}

impl Planner<'_> {
    /// The unit of a GPU named by the address of any function of its group (the
    /// audio function's address gets the GPU's group).
    pub fn gpu_unit(&self, named: &Bdf) -> Result<Unit, InstanceError> {
        let function = self.read(named)?;
        let (group, members) = self.group(&function)?;
        let head = if function.is_gpu() {
            function.bdf
        } else {
            // The GPU of the named function's own slot, else of its group.
            members
                .iter()
                .filter(|m| m.is_gpu())
                .min_by_key(|m| (!m.bdf.same_slot(named), m.bdf))
                .map(|m| m.bdf)
                .ok_or(InstanceError::NotAGpu {
                    bdf: *named,
                    class: function.class,
                })?
        };
        self.unit(named, head, DeviceRole::Gpu, group, &members)
    }

    /// The unit of a companion device (NIC, NVMe, NVSwitch) named by address.
    pub fn companion_unit(&self, named: &Bdf) -> Result<Unit, InstanceError> {
        let function = self.read(named)?;
        if function.is_bridge() {
            return Err(InstanceError::ClassNotAllowed(format!(
                "{named} is a PCI bridge (class {:#08x}); bridges stay with the host: pass the devices behind it",
                function.class
            )));
        }
        if function.is_gpu() {
            return Err(InstanceError::Invalid(format!(
                "{named} is a GPU or accelerator; give it in gpu_devices (--gpu), not devices (--device)"
            )));
        }
        self.check_class(&function, None)?;
        let (group, members) = self.group(&function)?;
        self.unit(named, function.bdf, DeviceRole::Companion, group, &members)
    }

    /// Units for GPUs then companions, one per IOMMU group: naming two functions of
    /// one group (a GPU and its audio function) gets the group once.
    pub fn plan(&self, gpus: &[Bdf], companions: &[Bdf]) -> Result<Vec<Unit>, InstanceError> {
        let mut units: Vec<Unit> = Vec::new();
        let named = gpus
            .iter()
            .map(|b| (b, true))
            .chain(companions.iter().map(|b| (b, false)));
        for (bdf, is_gpu) in named {
            let unit = if is_gpu {
                self.gpu_unit(bdf)?
            } else {
                self.companion_unit(bdf)?
            };
            if !units.iter().any(|u| u.group == unit.group) {
                units.push(unit);
            }
        }
        Ok(units)
    }

    fn read(&self, bdf: &Bdf) -> Result<PciFunction, InstanceError> {
        PciFunction::read(self.host, bdf).map_err(|e| match e {
            GpuError::NoSuchDevice { bdf, .. } => InstanceError::UnknownGpu(bdf),
            other => InstanceError::Internal(other.to_string()),
        })
    }

    fn group(&self, function: &PciFunction) -> Result<(u32, Vec<PciFunction>), InstanceError> {
        let group =
            function
                .iommu_group
                .ok_or(InstanceError::NotAssignable(GpuError::NoIommuGroup {
                    bdf: function.bdf,
                }))?;
        let members = gpu::iommu_group_members(self.host, group)
            .map_err(|e| InstanceError::Internal(e.to_string()))?
            .iter()
            .map(|bdf| self.read(bdf))
            .collect::<Result<Vec<_>, _>>()?;
        Ok((
            group,
            members.into_iter().filter(|m| !m.is_bridge()).collect(),
        ))
    }

    fn check_class(&self, function: &PciFunction, with: Option<&Bdf>) -> Result<(), InstanceError> {
        if self.policy.class_allowed(function.class) {
            return Ok(());
        }
        let why = match with {
            Some(head) => format!(
                "{} shares IOMMU group {} with {head}, so it would go to the VM too, but its class",
                function.bdf,
                function.iommu_group.unwrap_or_default()
            ),
            None => format!("{}'s class", function.bdf),
        };
        Err(InstanceError::ClassNotAllowed(format!(
            "{why} {:#08x} ({}) is not on this service's allow-list of device classes; the operator allows it with `vmm-service serve --allow-class {}`",
            function.class,
            class_name(function.class),
            DevicePolicy::flag_for(function.class)
        )))
    }

    /// The unit of `head`, `named` being what the request named.
    fn unit(
        &self,
        named: &Bdf,
        head: Bdf,
        role: DeviceRole,
        group: u32,
        members: &[PciFunction],
    ) -> Result<Unit, InstanceError> {
        let mut others = Vec::new();
        let mut refused = Vec::new();
        for member in members.iter().filter(|m| m.bdf != head) {
            if member.bdf.same_slot(&head) {
                others.push((member.bdf, DeviceRole::Function));
            } else if self.policy.class_allowed(member.class) {
                others.push((member.bdf, DeviceRole::GroupMember));
            } else {
                refused.push(format!(
                    "{} ({}, class {:#08x}{})",
                    member.bdf,
                    class_name(member.class),
                    member.class,
                    member
                        .driver
                        .as_ref()
                        .map(|d| format!(", driver {d}"))
                        .unwrap_or_default()
                ));
            }
        }
        if !refused.is_empty() {
            return Err(InstanceError::GroupNotAssignable(format!(
                "IOMMU group {group} of {head} also holds {}; the kernel gives a group to one VM whole, and these are not of a class the service may give to VMs. Move the device to a slot with its own group (behind a switch with ACS), or have the operator allow their class (`vmm-service serve --allow-class CLASS`)",
                refused.join(", ")
            )));
        }
        let unit = Unit {
            head,
            role,
            group,
            members: others,
        };
        self.check_free(named, &unit)?;
        self.check_reset(&unit)?;
        Ok(unit)
    }

    fn check_free(&self, named: &Bdf, unit: &Unit) -> Result<(), InstanceError> {
        let owner_of = |bdf: &Bdf| {
            self.held
                .iter()
                .find(|a| a.bdf == *bdf)
                .map(|a| &a.instance)
        };
        if let Some(owner) = owner_of(named) {
            return Err(InstanceError::GpuInUse {
                bdf: *named,
                owner: owner.clone(),
            });
        }
        let taken: Vec<String> = unit
            .functions()
            .filter_map(|bdf| owner_of(&bdf).map(|owner| format!("{bdf} (VM {owner})")))
            .collect();
        if taken.is_empty() {
            return Ok(());
        }
        Err(InstanceError::GroupInUse(format!(
            "IOMMU group {} of {named} also holds {}, which a VM holds; the kernel gives a group to one VM whole, so {named} cannot go to another. Remove it from that VM first",
            unit.group,
            taken.join(", ")
        )))
    }

    fn check_reset(&self, unit: &Unit) -> Result<(), InstanceError> {
        let missing: Vec<String> = unit
            .functions()
            .filter(|bdf| !self.policy.reset_waived(bdf))
            .filter(|bdf| !ResetMethod::read(self.host, bdf).can_reset())
            .map(|bdf| bdf.to_string())
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        Err(InstanceError::NoResetMethod(format!(
            "the kernel has no reset method for {} (no reset_method or reset in sysfs), so whatever a VM leaves in it would reach the next one; the operator may allow it anyway with `vmm-service serve --allow-no-reset {}`",
            missing.join(", "),
            missing.join(" --allow-no-reset ")
        )))
    }
}

fn class_name(class: u32) -> String {
    gpu::class_name(class)
        .unwrap_or("unknown class")
        .to_string()
}
