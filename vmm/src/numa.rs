//! Host NUMA placement (`memory.host_numa_node`): guest RAM bound to one host node
//! with mbind(2), and the vCPU threads run on that node's CPUs, so a guest whose
//! GPUs hang off that node reaches its RAM without crossing the socket link.

pub use form_vmm_api::host_list::{format_list, parse_list};
use std::io;
use std::path::{Path, PathBuf};

/// Where the kernel describes the host's NUMA nodes.
pub const NODE_SYSFS: &str = "/sys/devices/system/node";

// include/uapi/linux/mempolicy.h: get_mempolicy(2) flags.
pub const MPOL_F_NODE: libc::c_ulong = 1 << 0;
pub const MPOL_F_ADDR: libc::c_ulong = 1 << 1;

const WORD_BITS: usize = libc::c_ulong::BITS as usize;

/// Bits of the node and CPU masks read back from the kernel: enough for any
/// host Linux builds for (MAX_NUMNODES is at most 1024, NR_CPUS at most 8192).
const READ_MASK_BITS: usize = 8192;

#[derive(Debug, thiserror::Error)]
pub enum NumaError {
    #[error("host NUMA node {node} does not exist on this host ({path} is missing); its nodes are {online}")]
    NoSuchNode {
        node: u32,
        path: PathBuf,
        online: String,
    },
    #[error("host NUMA node {node} has no memory (it is not in {path}: {with_memory}); pick a node that has memory")]
    NodeWithoutMemory {
        node: u32,
        path: PathBuf,
        with_memory: String,
    },
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("{path}: '{text}' is not a list of numbers and ranges (such as 0-3,8)")]
    List { path: PathBuf, text: String },
    #[error("cannot bind {len:#x} bytes of guest memory to host NUMA node {node}: {source}")]
    Bind {
        node: u32,
        len: usize,
        source: io::Error,
    },
}

impl NumaError {
    /// A node the host lacks or that has no memory is the caller's mistake; the
    /// rest are the host failing.
    pub fn is_bad_request(&self) -> bool {
        matches!(
            self,
            NumaError::NoSuchNode { .. } | NumaError::NodeWithoutMemory { .. }
        )
    }
}

fn read_list(path: &Path) -> Result<Vec<usize>, NumaError> {
    let text = std::fs::read_to_string(path).map_err(|source| NumaError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse_list(&text).ok_or_else(|| NumaError::List {
        path: path.to_path_buf(),
        text: text.trim().to_string(),
    })
}

/// One host node a VM is placed on: checked to exist and to have memory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostNode {
    pub node: u32,
    /// The node's CPUs (its `cpulist`); empty for a memory-only node.
    pub cpus: Vec<usize>,
}

impl HostNode {
    /// Looks `node` up under `root` (normally [`NODE_SYSFS`]).
    pub fn probe(root: &Path, node: u32) -> Result<HostNode, NumaError> {
        let dir = root.join(format!("node{node}"));
        if !dir.is_dir() {
            let online = std::fs::read_to_string(root.join("online"))
                .map(|s| s.trim().to_string())
                .unwrap_or_else(|_| "unknown".to_string());
            return Err(NumaError::NoSuchNode {
                node,
                path: dir,
                online,
            });
        }
        let has_memory = root.join("has_memory");
        let with_memory = read_list(&has_memory)?;
        if !with_memory.contains(&(node as usize)) {
            return Err(NumaError::NodeWithoutMemory {
                node,
                path: has_memory,
                with_memory: format_list(&with_memory),
            });
        }
        let cpus = read_list(&dir.join("cpulist"))?;
        Ok(HostNode { node, cpus })
    }
}

fn mask_words(bits: usize) -> usize {
    bits.div_ceil(WORD_BITS).max(1)
}

/// A bitmap of `items` in the kernel's layout: an array of longs, bit n of the
/// whole array for item n.
fn to_mask(items: &[usize]) -> Vec<libc::c_ulong> {
    let top = items.iter().max().map_or(0, |m| m + 1);
    let mut mask = vec![0; mask_words(top)];
    for &i in items {
        mask[i / WORD_BITS] |= 1 << (i % WORD_BITS);
    }
    mask
}

fn from_mask(mask: &[libc::c_ulong]) -> Vec<usize> {
    (0..mask.len() * WORD_BITS)
        .filter(|i| mask[i / WORD_BITS] & (1 << (i % WORD_BITS)) != 0)
        .collect()
}

/// Sets MPOL_BIND to `node` on the mapping at `addr`: pages faulted in later come
/// from that node only. When the node runs out the kernel reclaims there or
/// OOM-kills, rather than quietly handing out a remote node's memory, which is
/// the point of asking for locality.
///
/// # Safety
/// `addr..addr + len` must be a mapping the caller owns, page aligned.
pub unsafe fn bind_memory(addr: *mut u8, len: usize, node: u32) -> Result<(), NumaError> {
    let mask = to_mask(&[node as usize]);
    // The kernel reads one bit fewer than maxnode says (a historical off-by-one
    // that libnuma also pays for), hence the + 1.
    let maxnode = (mask.len() * WORD_BITS + 1) as libc::c_ulong;
    // SAFETY: the mask outlives the call and holds maxnode - 1 bits; the range is
    // the caller's mapping. mbind only changes the policy of that range.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mbind,
            addr as libc::c_ulong,
            len as libc::c_ulong,
            libc::MPOL_BIND as libc::c_ulong,
            mask.as_ptr(),
            maxnode,
            0 as libc::c_ulong,
        )
    };
    if rc != 0 {
        return Err(NumaError::Bind {
            node,
            len,
            source: io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// The memory policy of the mapping at `addr`: its mode and its nodes
/// (get_mempolicy(2) with MPOL_F_ADDR). For tests and diagnostics.
pub fn memory_policy(addr: *const u8) -> io::Result<(i32, Vec<usize>)> {
    let mut mode: libc::c_int = 0;
    let mut mask: Vec<libc::c_ulong> = vec![0; mask_words(READ_MASK_BITS)];
    // SAFETY: mode and the mask are valid for writes of the sizes given (the same
    // off-by-one as in bind_memory); the address is only looked up.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_get_mempolicy,
            &mut mode as *mut libc::c_int,
            mask.as_mut_ptr(),
            (READ_MASK_BITS + 1) as libc::c_ulong,
            addr as libc::c_ulong,
            MPOL_F_ADDR,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((mode, from_mask(&mask)))
}

/// The node the page at `addr` lives on, faulting it in if it is not yet
/// (get_mempolicy(2) with MPOL_F_NODE | MPOL_F_ADDR). For tests and diagnostics.
pub fn page_node(addr: *const u8) -> io::Result<u32> {
    let mut node: libc::c_int = -1;
    // SAFETY: node is valid for a write; no mask is passed.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_get_mempolicy,
            &mut node as *mut libc::c_int,
            std::ptr::null_mut::<libc::c_ulong>(),
            0 as libc::c_ulong,
            addr as libc::c_ulong,
            MPOL_F_NODE | MPOL_F_ADDR,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(node as u32)
}

/// The CPUs thread `tid` may run on (0: the calling thread).
pub fn thread_affinity(tid: libc::pid_t) -> io::Result<Vec<usize>> {
    let mut mask: Vec<libc::c_ulong> = vec![0; mask_words(READ_MASK_BITS)];
    let bytes = mask.len() * std::mem::size_of::<libc::c_ulong>();
    // SAFETY: the mask is valid for writes of `bytes`.
    let rc = unsafe { libc::syscall(libc::SYS_sched_getaffinity, tid, bytes, mask.as_mut_ptr()) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(from_mask(&mask))
}

/// Restricts the calling thread to `cpus`.
pub fn pin_current_thread(cpus: &[usize]) -> io::Result<()> {
    let mask = to_mask(cpus);
    let bytes = mask.len() * std::mem::size_of::<libc::c_ulong>();
    // SAFETY: the mask is valid for reads of `bytes`; 0 is the calling thread.
    let rc = unsafe { libc::syscall(libc::SYS_sched_setaffinity, 0, bytes, mask.as_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The CPUs the vCPU threads of a VM on `node` run on: the node's CPUs that this
/// process may use (a cpuset or taskset can exclude some). None when that leaves
/// none, as on a memory-only node; the threads then run wherever the process may.
pub fn vcpu_cpus(node: &HostNode) -> Option<Vec<usize>> {
    let allowed = match thread_affinity(0) {
        Ok(allowed) => allowed,
        Err(e) => {
            log::warn!(
                "cannot read this process's CPU affinity ({e}); vCPUs use node {}'s whole cpulist",
                node.node
            );
            node.cpus.clone()
        }
    };
    let cpus: Vec<usize> = node
        .cpus
        .iter()
        .copied()
        .filter(|c| allowed.contains(c))
        .collect();
    if cpus.is_empty() {
        log::info!(
            "host NUMA node {} has no CPUs this process may use (node cpus '{}', allowed '{}'); vCPU threads are not pinned",
            node.node,
            format_list(&node.cpus),
            format_list(&allowed)
        );
        return None;
    }
    Some(cpus)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[test]
    fn masks_put_item_n_at_bit_n() {
        assert_eq!(to_mask(&[0]), vec![1]);
        assert_eq!(to_mask(&[]), vec![0]);
        let wide = to_mask(&[1, 64, 130]);
        assert_eq!(wide.len(), 3);
        assert_eq!(wide[0], 2);
        assert_eq!(wide[1], 1);
        assert_eq!(wide[2], 4);
        assert_eq!(from_mask(&wide), vec![1, 64, 130]);
    }

    /// A fake /sys/devices/system/node, removed when dropped.
    struct FakeNodes(PathBuf);

    impl FakeNodes {
        fn new(nodes: &[(u32, &str)], has_memory: &str) -> FakeNodes {
            static NEXT: AtomicU32 = AtomicU32::new(0);
            let root = std::env::temp_dir().join(format!(
                "form-vmm-numa-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::SeqCst)
            ));
            for (node, cpus) in nodes {
                let dir = root.join(format!("node{node}"));
                std::fs::create_dir_all(&dir).unwrap();
                std::fs::write(dir.join("cpulist"), format!("{cpus}\n")).unwrap();
            }
            std::fs::write(root.join("has_memory"), format!("{has_memory}\n")).unwrap();
            std::fs::write(root.join("online"), "0-1\n").unwrap();
            FakeNodes(root)
        }
    }

    impl Drop for FakeNodes {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn a_node_is_found_with_its_cpus() {
        let sys = FakeNodes::new(&[(0, "0-3,8"), (1, "4-7")], "0-1");
        assert_eq!(
            HostNode::probe(&sys.0, 1).unwrap(),
            HostNode {
                node: 1,
                cpus: vec![4, 5, 6, 7]
            }
        );
        assert_eq!(
            HostNode::probe(&sys.0, 0).unwrap().cpus,
            vec![0, 1, 2, 3, 8]
        );
    }

    #[test]
    fn missing_and_memoryless_nodes_are_refused() {
        let sys = FakeNodes::new(&[(0, "0-3"), (1, "")], "0");
        let err = HostNode::probe(&sys.0, 7).unwrap_err();
        assert!(err.is_bad_request());
        assert_eq!(
            err.to_string(),
            format!(
                "host NUMA node 7 does not exist on this host ({}/node7 is missing); its nodes are 0-1",
                sys.0.display()
            )
        );
        let err = HostNode::probe(&sys.0, 1).unwrap_err();
        assert!(err.is_bad_request());
        assert!(
            err.to_string()
                .starts_with("host NUMA node 1 has no memory"),
            "{err}"
        );
        std::fs::write(sys.0.join("node0/cpulist"), "zero\n").unwrap();
        let err = HostNode::probe(&sys.0, 0).unwrap_err();
        assert!(!err.is_bad_request());
        assert!(err.to_string().contains("'zero'"), "{err}");
    }

    #[test]
    fn a_memory_only_node_leaves_vcpus_unpinned() {
        let node = HostNode {
            node: 1,
            cpus: Vec::new(),
        };
        assert_eq!(vcpu_cpus(&node), None);
        let here = thread_affinity(0).unwrap();
        let node = HostNode {
            node: 0,
            cpus: vec![here[0], 100_000],
        };
        assert_eq!(vcpu_cpus(&node), Some(vec![here[0]]));
    }

    #[test]
    fn binding_a_mapping_shows_in_its_policy() {
        if !Path::new(NODE_SYSFS).join("node0").is_dir() {
            eprintln!("skipping: no NUMA node 0 on this kernel");
            return;
        }
        let len = 4 << 20;
        // SAFETY: a fresh private anonymous mapping, unmapped below.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        assert_ne!(addr, libc::MAP_FAILED);
        let addr = addr as *mut u8;
        let before = memory_policy(addr).unwrap();
        assert_ne!(before.0, libc::MPOL_BIND);
        // SAFETY: the mapping above.
        unsafe { bind_memory(addr, len, 0) }.unwrap();
        assert_eq!(memory_policy(addr).unwrap(), (libc::MPOL_BIND, vec![0]));
        // SAFETY: inside the mapping.
        let last = unsafe { addr.add(len - 1) };
        assert_eq!(memory_policy(last).unwrap(), (libc::MPOL_BIND, vec![0]));
        assert_eq!(page_node(last).unwrap(), 0);
        // SAFETY: the mapping above.
        let err = unsafe { bind_memory(addr, len, 1000) }.unwrap_err();
        assert!(err.to_string().contains("node 1000"), "{err}");
        // SAFETY: the mapping above, no longer used.
        unsafe { libc::munmap(addr.cast(), len) };
    }
}
