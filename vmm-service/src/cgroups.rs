//! A cgroup (v2) per VM: `<service's cgroup>/vms/<name>`, holding its form-vmm, with
//! `memory.max` (guest RAM plus a bounded overhead), `pids.max` and, for a VM bound
//! to a host NUMA node, `cpuset.cpus`/`cpuset.mems` of that node. A VMM taken over
//! through a guest bug can then neither take the host's memory or pids nor run on
//! other nodes' CPUs.
//!
//! Best effort: without cgroup v2, or where the service's cgroup is not delegated to
//! it (systemd: `Delegate=yes`), the service says so once and VMs run in the
//! service's cgroup, as before.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// What each VMM may use beyond its guest's RAM: form-vmm's own memory (a few MiB
/// of RSS for a small guest in the benchmarks: code, thread stacks, virtio queues,
/// log buffers) and what the kernel charges to it (page tables and KVM's EPT/NPT,
/// about 0.2% of guest RAM with 4 KiB pages, vCPU state, VFIO's tables). 64 MiB
/// covers the fixed part many times over; 2% of RAM covers the part that grows
/// with it tenfold. Page cache of the VMM's disk I/O is charged too, but is
/// reclaimed at the limit rather than killing anything.
pub const FIXED_OVERHEAD: u64 = 64 << 20;
/// 1/50 of guest RAM: see [`FIXED_OVERHEAD`].
pub const RAM_OVERHEAD_DIVISOR: u64 = 50;
/// Processes and threads a VMM may have beyond one per vCPU: the main, API and
/// HTTP connection threads, one per virtio device, serial input.
pub const PIDS_BEYOND_VCPUS: u32 = 64;

/// The controllers VM cgroups use.
const CONTROLLERS: [&str; 3] = ["memory", "pids", "cpuset"];

/// `memory.max` for a guest of `memory` bytes.
/// In whole pages, rounded up: the kernel keeps `memory.max` in pages, rounding
/// down, so what is written is then what `memory.max` reads back.
pub fn memory_max(memory: u64) -> u64 {
    let bytes = memory
        .saturating_add(FIXED_OVERHEAD)
        .saturating_add(memory / RAM_OVERHEAD_DIVISOR);
    bytes.checked_next_multiple_of(page_size()).unwrap_or(bytes)
}

/// The kernel's page size (4 KiB on x86-64, up to 64 KiB on arm64).
fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
        size if size > 0 => size as u64,
        _ => 4096,
    }
}

/// Process `pid`'s cgroup v2 path (the `0::` line of `/proc/PID/cgroup`), from
/// `proc_root`.
pub fn process_cgroup(proc_root: &Path, pid: u32) -> Option<String> {
    let text = fs::read_to_string(proc_root.join(pid.to_string()).join("cgroup")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::to_string)
}

/// The limits of one VM's cgroup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmLimits {
    pub memory_max: u64,
    pub pids_max: u32,
    /// `cpuset.cpus` and `cpuset.mems`, for a VM bound to one host node.
    pub cpuset: Option<(String, String)>,
}

impl VmLimits {
    /// For a guest of `memory` bytes and `vcpus`, bound to `node` (its CPUs read
    /// from `<sysfs>/devices/system/node/node<N>/cpulist`).
    pub fn for_vm(memory: u64, vcpus: u32, node: Option<u32>, sysfs: &Path) -> VmLimits {
        let cpuset = node.and_then(|n| {
            let list = sysfs.join(format!("devices/system/node/node{n}/cpulist"));
            let cpus = fs::read_to_string(list).ok()?.trim().to_string();
            (!cpus.is_empty()).then(|| (cpus, n.to_string()))
        });
        VmLimits {
            memory_max: memory_max(memory),
            pids_max: vcpus.saturating_add(PIDS_BEYOND_VCPUS),
            cpuset,
        }
    }
}

/// The service's delegated cgroup, with `vms/` beneath it for the VMs'.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupTree {
    base: PathBuf,
    /// The service runs in the root cgroup: it holds every process of the host
    /// and may enable controllers with processes in it, so nothing is moved.
    root: bool,
}

impl CgroupTree {
    /// The cgroup the service runs in, from `/proc/self/cgroup`'s `0::/PATH` line,
    /// under `mount` (`/sys/fs/cgroup`), if that is cgroup v2.
    pub fn discover(mount: &Path, self_cgroup: &str) -> Result<CgroupTree, String> {
        if !mount.join("cgroup.controllers").is_file() {
            return Err(format!("{} is not cgroup v2", mount.display()));
        }
        let path = self_cgroup
            .lines()
            .find_map(|l| l.strip_prefix("0::"))
            .ok_or("the service is in no cgroup v2 group (/proc/self/cgroup has no 0:: line)")?;
        let relative = path.trim().trim_start_matches('/');
        // Not mount.join(""), which ends in a slash that every path shown repeats.
        let base = if relative.is_empty() {
            mount.to_path_buf()
        } else {
            mount.join(relative)
        };
        Ok(CgroupTree {
            base,
            root: relative.is_empty(),
        })
    }

    /// A tree at `base` (tests: a fixture directory).
    pub fn at(base: PathBuf) -> CgroupTree {
        CgroupTree { base, root: false }
    }

    /// The service's cgroup.
    pub fn base(&self) -> &Path {
        &self.base
    }

    fn vms(&self) -> PathBuf {
        self.base.join("vms")
    }

    /// Makes `vms/` with the controllers enabled. cgroup v2 lets a group hand
    /// controllers to its children only while it holds no process itself, so the
    /// service (`own_pid`) first moves itself into a `service/` leaf of its own
    /// cgroup. Fails where the cgroup is not the service's alone (another process
    /// in it: a login session's shell) or not the service's to change.
    pub fn prepare(&self, own_pid: u32) -> io::Result<()> {
        let procs = fs::read_to_string(self.base.join("cgroup.procs"))?;
        if !self.root && !procs.trim().is_empty() {
            let others: Vec<&str> = procs
                .split_whitespace()
                .filter(|p| *p != own_pid.to_string())
                .collect();
            if !others.is_empty() {
                return Err(io::Error::other(format!(
                    "{} also holds processes {} that are not the service: it is not delegated to the service alone",
                    self.base.display(),
                    others.join(" ")
                )));
            }
            let leaf = self.base.join("service");
            create_dir(&leaf)?;
            fs::write(leaf.join("cgroup.procs"), own_pid.to_string())?;
        }
        let available = fs::read_to_string(self.base.join("cgroup.controllers"))?;
        let enable: Vec<String> = CONTROLLERS
            .iter()
            .filter(|c| available.split_whitespace().any(|a| a == **c))
            .map(|c| format!("+{c}"))
            .collect();
        let enable = enable.join(" ");
        fs::write(self.base.join("cgroup.subtree_control"), &enable)?;
        create_dir(&self.vms())?;
        fs::write(self.vms().join("cgroup.subtree_control"), &enable)
    }

    /// The cgroup of VM `name`, made (or reused) with `limits`, holding `pid`.
    pub fn confine(&self, name: &str, limits: &VmLimits, pid: u32) -> io::Result<PathBuf> {
        let group = self.vms().join(name);
        create_dir(&group)?;
        fs::write(group.join("memory.max"), limits.memory_max.to_string())?;
        fs::write(group.join("pids.max"), limits.pids_max.to_string())?;
        if let Some((cpus, mems)) = &limits.cpuset {
            fs::write(group.join("cpuset.cpus"), cpus)?;
            fs::write(group.join("cpuset.mems"), mems)?;
        }
        fs::write(group.join("cgroup.procs"), pid.to_string())?;
        Ok(group)
    }

    /// Removes VM `name`'s cgroup once its VMM is gone (the kernel refuses while a
    /// process is in it); none is no error.
    pub fn remove(&self, name: &str) -> io::Result<()> {
        match fs::remove_dir(self.vms().join(name)) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }
}

fn create_dir(path: &Path) -> io::Result<()> {
    match fs::create_dir(path) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_cgroup_is_its_v2_line() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("42")).unwrap();
        fs::write(
            dir.path().join("42/cgroup"),
            "4:memory:/old\n0::/form-vmm.service/vms/gpu-1\n",
        )
        .unwrap();
        assert_eq!(
            process_cgroup(dir.path(), 42).as_deref(),
            Some("/form-vmm.service/vms/gpu-1")
        );
        assert_eq!(process_cgroup(dir.path(), 43), None);
    }

    fn read(path: &Path) -> String {
        fs::read_to_string(path).unwrap()
    }

    #[test]
    fn memory_is_guest_ram_plus_64_mib_and_two_percent() {
        assert_eq!(memory_max(0), 64 << 20);
        // 1 GiB / 50 is not a whole number of pages: rounded up to the next one.
        // 1 GiB + 64 MiB + 21_474_836 = 1_162_325_524 bytes, up to a page.
        let page = page_size();
        assert_eq!(memory_max(1 << 30), 1_162_325_524u64.div_ceil(page) * page);
        if page == 4096 {
            assert_eq!(memory_max(1 << 30), 1_162_326_016);
        }
        assert_eq!(memory_max(u64::MAX), u64::MAX);
    }

    #[test]
    fn the_service_cgroup_comes_from_proc_self_cgroup() {
        let dir = tempfile::tempdir().unwrap();
        assert!(CgroupTree::discover(dir.path(), "0::/x").is_err(), "not v2");
        fs::write(
            dir.path().join("cgroup.controllers"),
            "cpuset cpu memory pids\n",
        )
        .unwrap();
        let tree = CgroupTree::discover(dir.path(), "0::/system.slice/form-vmm.service\n").unwrap();
        assert_eq!(
            tree,
            CgroupTree::at(dir.path().join("system.slice/form-vmm.service"))
        );
        let root = CgroupTree::discover(dir.path(), "0::/\n").unwrap();
        // The same string, not only the same path: it is shown in the log.
        assert_eq!(root.base().as_os_str(), dir.path().as_os_str());
        // The root group holds the host's processes: none of them is moved.
        fs::write(dir.path().join("cgroup.procs"), "1\n2\n").unwrap();
        root.prepare(3).unwrap();
        assert!(!dir.path().join("service").exists());
        assert!(CgroupTree::discover(dir.path(), "4:memory:/x\n").is_err());
    }

    /// On a fixture tree: the service moves to its leaf, controllers are enabled
    /// for vms/, a VM's group gets its limits and the VMM, and goes at removal.
    #[test]
    fn a_vm_gets_its_group_limits_and_process() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("form-vmm.service");
        fs::create_dir(&base).unwrap();
        fs::write(
            base.join("cgroup.controllers"),
            "cpuset cpu io memory pids\n",
        )
        .unwrap();
        fs::write(base.join("cgroup.procs"), "4242\n").unwrap();
        let tree = CgroupTree::at(base.clone());
        // Another process (a shell) in the group: not the service's alone.
        fs::write(base.join("cgroup.procs"), "4242\n99\n").unwrap();
        let refused = tree.prepare(4242).unwrap_err().to_string();
        assert!(refused.contains("99"), "{refused}");
        assert!(!base.join("service").exists());
        fs::write(base.join("cgroup.procs"), "4242\n").unwrap();
        tree.prepare(4242).unwrap();
        assert_eq!(read(&base.join("service/cgroup.procs")), "4242");
        assert_eq!(
            read(&base.join("cgroup.subtree_control")),
            "+memory +pids +cpuset"
        );
        assert_eq!(
            read(&base.join("vms/cgroup.subtree_control")),
            "+memory +pids +cpuset"
        );

        let sysfs = dir.path().join("sys");
        fs::create_dir_all(sysfs.join("devices/system/node/node1")).unwrap();
        fs::write(sysfs.join("devices/system/node/node1/cpulist"), "8-15\n").unwrap();
        let limits = VmLimits::for_vm(1 << 30, 4, Some(1), &sysfs);
        assert_eq!(limits.pids_max, 68);
        assert_eq!(limits.cpuset, Some(("8-15".to_string(), "1".to_string())));
        let group = tree.confine("vm1", &limits, 777).unwrap();
        assert_eq!(
            read(&group.join("memory.max")),
            memory_max(1 << 30).to_string()
        );
        assert_eq!(read(&group.join("pids.max")), "68");
        assert_eq!(read(&group.join("cpuset.cpus")), "8-15");
        assert_eq!(read(&group.join("cpuset.mems")), "1");
        assert_eq!(read(&group.join("cgroup.procs")), "777");

        // Unbound: no cpuset written.
        let unbound = VmLimits::for_vm(1 << 30, 2, None, &sysfs);
        let group = tree.confine("vm2", &unbound, 778).unwrap();
        assert!(!group.join("cpuset.cpus").exists());

        // The fixture's files stand in for the kernel's: a real cgroup directory
        // is removable once empty of processes.
        for file in ["memory.max", "pids.max", "cgroup.procs"] {
            fs::remove_file(group.join(file)).unwrap();
        }
        tree.remove("vm2").unwrap();
        assert!(!group.exists());
        tree.remove("vm2").unwrap();
    }

    #[test]
    fn an_empty_service_cgroup_stays_where_it_is() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("cgroup.controllers"), "memory pids\n").unwrap();
        fs::write(dir.path().join("cgroup.procs"), "").unwrap();
        CgroupTree::at(dir.path().to_path_buf()).prepare(1).unwrap();
        assert!(!dir.path().join("service").exists());
        assert_eq!(
            read(&dir.path().join("vms/cgroup.subtree_control")),
            "+memory +pids"
        );
    }
}
