//! The manager's side of VMMs that give up root ([`crate::vmm_user`]): which uid a
//! VM's VMM gets, and handing over and taking back what it reopens without root.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::{Arc, MutexGuard};

use crate::api::types::VmInstanceConfig;
use crate::gpu::{Bdf, PciFunction};
use crate::state::GpuAssignment;
use crate::supervisor::VmPaths;
use crate::vmm_user::{self, acl, handover, ImageAccess, UidPool, VmmIdentity};

use super::super::images::{ImageKind, OpenedImage, OpenedImages};
use super::{InstanceError, Manager};

impl Manager {
    fn uids(&self) -> MutexGuard<'_, UidPool> {
        self.uids.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The identity VM `name`'s VMM is to run as (a new uid from the range, or
    /// the one it holds); `None` when VMMs stay root.
    pub(super) fn vmm_identity(&self, name: &str) -> Result<Option<VmmIdentity>, InstanceError> {
        let Some(users) = &self.config.vmm_users else {
            return Ok(None);
        };
        self.uids()
            .acquire(users, name)
            .map(Some)
            .map_err(InstanceError::LimitReached)
    }

    /// form-vmm's sandbox arguments (its uid with `identity`, its mount namespace,
    /// the paths it may reopen), and the service's directories opened to its group
    /// (again on every start: a restart of the service tightens the state directory
    /// back to 0700). Of the image directories, the VMM is given only those holding
    /// its own disks (for qcow2 backing files): it opens its images through the
    /// descriptors in `images`, and other tenants' images are none of its business.
    pub(super) fn vmm_args(
        &self,
        identity: Option<VmmIdentity>,
        paths: &VmPaths,
        images: &OpenedImages,
    ) -> Result<Vec<OsString>, InstanceError> {
        if let Some(identity) = identity {
            handover::open_parents_to_group(
                &self.config.state_dir,
                &self.config.run_dir,
                identity.gid,
            )
            .map_err(|e| {
                InstanceError::Internal(format!(
                    "opening the state and run directories to the VMMs' group: {e}"
                ))
            })?;
        }
        let vm_dirs: Vec<&Path> = [&paths.serial_log, &paths.api_socket]
            .into_iter()
            .filter_map(|p| p.parent())
            .collect();
        let mut image_dirs: Vec<PathBuf> = Vec::new();
        for dir in images.disks.iter().filter_map(|disk| disk.directory()) {
            if !image_dirs.contains(&dir) {
                image_dirs.push(dir);
            }
        }
        Ok(vmm_user::vmm_args(
            identity,
            self.config.vmm_mount_ns,
            &vm_dirs,
            &image_dirs,
        ))
    }

    /// Hands VM `config`'s directories, files and images to `identity`, once its
    /// VMM started and before it builds the VM. An image the uid cannot be given
    /// (no ACLs) is logged: the VM runs, a reboot fails to reopen that image.
    pub(super) fn hand_over(
        &self,
        config: &VmInstanceConfig,
        paths: &VmPaths,
        images: &OpenedImages,
        identity: VmmIdentity,
    ) -> Result<(), InstanceError> {
        let name = &config.name;
        handover::hand_over_vm(paths, identity).map_err(|e| {
            InstanceError::Internal(format!(
                "handing VM {name}'s files to uid {}: {e}",
                identity.uid
            ))
        })?;
        for warning in handover::grant_images(&image_access(config, images), identity.uid) {
            log::warn!("VM {name}: {warning}");
        }
        log::info!(
            "VM {name}: its VMM runs as uid {} gid {} once the VM is built",
            identity.uid,
            identity.gid
        );
        Ok(())
    }

    /// Takes back what VM `config`'s VMM was handed, once it is gone, and frees its
    /// uid. The uid is the one the pool holds for the VM or, for a VMM that ended
    /// while the service was not running, the owner of the VM's serial log (which
    /// the service chowned to it): either way its files go back and its image
    /// entries go. Each image is opened again by the configuration's path (the
    /// descriptors of the start are closed); one that is gone has nothing to
    /// revoke. The uid returns to the pool only once every entry is gone: a uid
    /// whose entry could not be removed stays out of use (logged), so no other
    /// VM's VMM inherits access to this VM's disks.
    pub(super) fn take_back(&self, config: &VmInstanceConfig) {
        let name = &config.name;
        let paths = self.paths(name);
        let held = self.uids().held(name);
        let Some(uid) = held.or_else(|| handover::handed_to(&paths)) else {
            return;
        };
        if let Err(e) = handover::take_back_vm(&paths) {
            log::warn!("VM {name}: cannot give its files back to the service's user: {e}");
        }
        // A shared uid another VM still runs as keeps its image entries.
        let mut revoked = true;
        if !self.uids().shared_with_others(name, uid) {
            let reopened = self.reopen_images(config);
            let access: Vec<ImageAccess> = reopened.iter().map(|(_, a)| a.clone()).collect();
            let failures = handover::revoke_images(&access, uid);
            for warning in &failures {
                log::error!("VM {name}: {warning}; uid {uid} stays out of the pool until the service restarts");
            }
            revoked = failures.is_empty();
        }
        if revoked && held.is_some() {
            self.uids().release(name);
        }
    }

    /// Each of `config`'s images that can still be opened, with what its VMM was
    /// given of it; the opened image keeps `ImageAccess::path` valid.
    fn reopen_images(&self, config: &VmInstanceConfig) -> Vec<(OpenedImage, ImageAccess)> {
        let policy = &self.config.images;
        let mut wanted: Vec<(String, &str, ImageKind, String, acl::Perm)> = Vec::new();
        if let Some(kernel) = &config.kernel {
            wanted.push((
                "kernel".into(),
                kernel,
                ImageKind::Payload,
                "the kernel".into(),
                acl::READ,
            ));
        }
        if let Some(initramfs) = &config.initramfs {
            wanted.push((
                "initramfs".into(),
                initramfs,
                ImageKind::Payload,
                "the initramfs".into(),
                acl::READ,
            ));
        }
        for (i, disk) in config.disks.iter().enumerate() {
            let perm = if disk.readonly {
                acl::READ
            } else {
                acl::READ | acl::WRITE
            };
            wanted.push((
                format!("disks[{i}].path"),
                &disk.path,
                ImageKind::Disk,
                format!("disk {}", disk.path),
                perm,
            ));
        }
        wanted
            .into_iter()
            .filter_map(|(field, path, kind, shown, perm)| {
                let image = policy.open(&field, path, kind).ok()?;
                let access = ImageAccess {
                    path: image.vmm_path(),
                    shown,
                    perm,
                };
                Some((image, access))
            })
            .collect()
    }

    /// Records the uid of a re-adopted VMM, read from the process.
    pub(super) fn adopt_uid(&self, name: &str, pid: u32) {
        if self.config.vmm_users.is_none() {
            return;
        }
        match vmm_user::process_uid(&self.config.host.procfs, pid) {
            Some(0) | None => {}
            Some(uid) => self.uids().adopt(name, uid),
        }
    }

    /// `/dev/vfio/N` of `bdf`'s group to the VMM of VM `name` (after a bind): it
    /// reopens the group on a reboot, and opens a hotplugged one, without root.
    pub(super) fn hand_vfio_group(&self, name: &str, bdf: &Bdf) {
        let Some(users) = &self.config.vmm_users else {
            return;
        };
        let Some(uid) = self.uids().held(name) else {
            return;
        };
        let identity = VmmIdentity {
            uid,
            gid: users.gid,
        };
        if let Some(node) = self.vfio_node(bdf) {
            if let Err(e) = handover::set_vfio_node_owner(&node, Some(identity)) {
                log::warn!("VM {name}: cannot give {} to uid {uid}: {e}; a reboot or hotplug of it will fail", node.display());
            }
        }
    }

    /// The group nodes of `released` back to the service's user.
    pub(super) fn take_back_vfio_groups(self: &Arc<Self>, released: &[GpuAssignment]) {
        if self.config.vmm_users.is_none() {
            return;
        }
        for assignment in released {
            if let Some(node) = self.vfio_node(&assignment.bdf) {
                match handover::set_vfio_node_owner(&node, None) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        log::warn!(
                            "cannot give {} back to the service's user: {e}",
                            node.display()
                        )
                    }
                    _ => {}
                }
            }
        }
    }

    fn vfio_node(&self, bdf: &Bdf) -> Option<PathBuf> {
        let host = &self.config.host;
        let group = PciFunction::read(host, bdf).ok()?.iommu_group?;
        Some(host.vfio_group_node(group))
    }
}

/// What the VMM reopens of `images` on a reboot, and with which access.
fn image_access(config: &VmInstanceConfig, images: &OpenedImages) -> Vec<ImageAccess> {
    let read = |image: &crate::instances::OpenedImage, shown: String| ImageAccess {
        path: image.vmm_path(),
        shown,
        perm: acl::READ,
    };
    let mut access: Vec<ImageAccess> = Vec::new();
    if let Some(kernel) = &images.kernel {
        access.push(read(kernel, "the kernel".into()));
    }
    if let Some(initramfs) = &images.initramfs {
        access.push(read(initramfs, "the initramfs".into()));
    }
    for (disk, image) in config.disks.iter().zip(&images.disks) {
        let mut entry = read(image, format!("disk {}", disk.path));
        if !disk.readonly {
            entry.perm |= acl::WRITE;
        }
        access.push(entry);
    }
    access
}
