//! Choosing what a VM gets: the devices it names or the GPUs (and companions) its
//! request matches, each grown into its IOMMU group's unit, with device ids.

use crate::api::types::{DeviceRole, GpuRequest};
use crate::gpu::{self, Bdf, GpuError, GpuInfo};
use crate::state::{GpuAssignment, Store};

use super::{InstanceError, Manager};
use crate::instances::allocate::{choose, matches_model, Candidate};
use crate::instances::companions::companions_for;
use crate::instances::units::{Planner, Unit};
use crate::instances::validate::GpuSelection;

impl Manager {
    /// The rows VM `name` gets for `selection` and `companions`, numbered after the
    /// ids it holds already. Checks every function against who holds what in
    /// `store` and against the operator's policy; changes nothing.
    pub(super) fn pick(
        &self,
        store: &Store,
        name: &str,
        selection: &GpuSelection,
        companions: &[Bdf],
    ) -> Result<Vec<GpuAssignment>, InstanceError> {
        let held = store.all_gpus()?;
        let planner = Planner {
            host: &self.config.host,
            policy: &self.config.policy,
            held: &held,
        };
        let mut units = match selection {
            GpuSelection::None => Vec::new(),
            GpuSelection::Devices(bdfs) => planner.plan(bdfs, &[])?,
            GpuSelection::Model(request) => self.pick_by_model(&planner, request)?,
        };
        if let GpuSelection::Model(request) = selection {
            let gpus: Vec<Bdf> = units.iter().map(|u| u.head).collect();
            merge(&mut units, companions_for(&planner, request, &gpus)?);
        }
        merge(&mut units, planner.plan(&[], companions)?);
        let mine = store.gpus_of(name)?;
        let mut next_gpu = next_index(&mine, "gpu");
        let mut next_dev = next_index(&mine, "dev");
        let mut rows = Vec::new();
        for unit in &units {
            let id = match unit.role {
                DeviceRole::Gpu => {
                    next_gpu += 1;
                    format!("gpu{}", next_gpu - 1)
                }
                _ => {
                    next_dev += 1;
                    format!("dev{}", next_dev - 1)
                }
            };
            rows.extend(unit.assignments(name, &id));
        }
        Ok(rows)
    }

    pub(super) fn check_gpu(&self, bdf: &Bdf) -> Result<GpuInfo, InstanceError> {
        gpu::gpu_info(&self.config.host, bdf, &gpu::NoOwners).map_err(|e| match e {
            GpuError::NoSuchDevice { bdf, .. } => InstanceError::UnknownGpu(bdf),
            GpuError::NotAGpu { bdf, class } => InstanceError::NotAGpu { bdf, class },
            other => InstanceError::Internal(other.to_string()),
        })
    }

    /// `request.count` GPUs matching the model, close together (see `choose`),
    /// among those whose whole group could go to the VM.
    fn pick_by_model(
        &self,
        planner: &Planner<'_>,
        request: &GpuRequest,
    ) -> Result<Vec<Unit>, InstanceError> {
        let all = gpu::list_gpus(&self.config.host, &gpu::NoOwners)
            .map_err(|e| InstanceError::Internal(e.to_string()))?;
        // The console GPU is never picked by model: taking it blanks the host's display.
        let candidates: Vec<Candidate> = all
            .iter()
            .filter(|info| matches_model(info, &request.model))
            .filter(|info| !info.function.boot_vga && planner.gpu_unit(&info.bdf()).is_ok())
            .map(|info| Candidate::of(&self.config.host, info))
            .collect();
        let count = request.count as usize;
        let chosen = choose(&candidates, count).ok_or_else(|| InstanceError::GpusUnavailable {
            model: request.model.clone(),
            asked: request.count,
            free: candidates.len(),
        })?;
        planner.plan(&chosen, &[])
    }
}

/// Adds `more` to `units`, leaving out groups `units` has already.
fn merge(units: &mut Vec<Unit>, more: Vec<Unit>) {
    for unit in more {
        if !units.iter().any(|u| u.group == unit.group) {
            units.push(unit);
        }
    }
}

/// One past the highest `<prefix>N` unit id in `rows`.
fn next_index(rows: &[GpuAssignment], prefix: &str) -> usize {
    rows.iter()
        .filter_map(|a| a.unit.strip_prefix(prefix)?.parse::<usize>().ok())
        .max()
        .map_or(0, |max| max + 1)
}
