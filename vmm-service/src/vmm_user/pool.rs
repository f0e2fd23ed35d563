//! Which uid each running VM's VMM has. Kept in memory: a VMM's uid is in the
//! process itself (`/proc/PID/status`), which is where a restarted service reads
//! it back from for the VMMs it re-adopts.

use std::collections::BTreeMap;
use std::path::Path;

use super::{UidSource, VmmIdentity, VmmUsers};

/// `FIRST-LAST`, both included, neither 0 (root).
pub fn parse_uid_range(text: &str) -> Result<(u32, u32), String> {
    let bad = || format!("'{text}' is not a uid range like 100000-100999");
    let (first, last) = text.split_once('-').ok_or_else(bad)?;
    let first: u32 = first.trim().parse().map_err(|_| bad())?;
    let last: u32 = last.trim().parse().map_err(|_| bad())?;
    if first == 0 || first > last {
        return Err(format!(
            "{}: it must not include 0 (root) and FIRST <= LAST",
            bad()
        ));
    }
    Ok((first, last))
}

/// The uids of running VMs' VMMs, by VM name.
#[derive(Debug, Default)]
pub struct UidPool {
    held: BTreeMap<String, u32>,
}

impl UidPool {
    /// The identity VM `name`'s VMM runs as: the one it holds, else a new one (the
    /// shared uid, or the lowest uid of the range no other VM holds).
    pub fn acquire(&mut self, users: &VmmUsers, name: &str) -> Result<VmmIdentity, String> {
        let uid = match (self.held.get(name), &users.uids) {
            (Some(&uid), _) => uid,
            (None, UidSource::Shared(uid)) => *uid,
            (None, UidSource::Range { first, last }) => (*first..=*last)
                .find(|uid| !self.held.values().any(|held| held == uid))
                .ok_or_else(|| {
                    format!(
                        "every VMM uid of --vmm-uid-range {first}-{last} is in use; stop a VM or widen the range"
                    )
                })?,
        };
        self.held.insert(name.to_string(), uid);
        Ok(VmmIdentity {
            uid,
            gid: users.gid,
        })
    }

    /// Records the uid of a VMM found running (re-adopted after a restart).
    pub fn adopt(&mut self, name: &str, uid: u32) {
        self.held.insert(name.to_string(), uid);
    }

    /// The uid VM `name`'s VMM holds.
    pub fn held(&self, name: &str) -> Option<u32> {
        self.held.get(name).copied()
    }

    /// Forgets VM `name`'s uid (its VMM is gone); the uid it held, if any.
    pub fn release(&mut self, name: &str) -> Option<u32> {
        self.held.remove(name)
    }

    /// Whether another VM's VMM runs as `uid` (a shared uid): then files and nodes
    /// are handed back only by what this VM used, never by uid.
    pub fn shared_with_others(&self, name: &str, uid: u32) -> bool {
        self.held.iter().any(|(n, &u)| n != name && u == uid)
    }
}

/// The real uid of process `pid` under `proc_root`.
pub fn process_uid(proc_root: &Path, pid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(proc_root.join(pid.to_string()).join("status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(first: u32, last: u32) -> VmmUsers {
        VmmUsers {
            uids: UidSource::Range { first, last },
            gid: 36,
        }
    }

    #[test]
    fn each_vm_gets_the_lowest_free_uid_and_keeps_it() {
        let users = range(100_000, 100_002);
        let mut pool = UidPool::default();
        assert_eq!(
            pool.acquire(&users, "a").unwrap(),
            VmmIdentity {
                uid: 100_000,
                gid: 36
            }
        );
        assert_eq!(pool.acquire(&users, "b").unwrap().uid, 100_001);
        assert_eq!(
            pool.acquire(&users, "a").unwrap().uid,
            100_000,
            "a keeps its uid"
        );
        pool.adopt("c", 100_002);
        let full = pool.acquire(&users, "d").unwrap_err();
        assert!(full.contains("100000-100002"), "{full}");
        assert_eq!(pool.release("a"), Some(100_000));
        assert_eq!(pool.acquire(&users, "d").unwrap().uid, 100_000);
        assert!(!pool.shared_with_others("d", 100_000));
    }

    #[test]
    fn a_shared_uid_goes_to_every_vm() {
        let users = VmmUsers {
            uids: UidSource::Shared(990),
            gid: 36,
        };
        let mut pool = UidPool::default();
        assert_eq!(pool.acquire(&users, "a").unwrap().uid, 990);
        assert_eq!(pool.acquire(&users, "b").unwrap().uid, 990);
        assert!(pool.shared_with_others("a", 990));
        pool.release("b");
        assert!(!pool.shared_with_others("a", 990));
    }

    #[test]
    fn ranges_parse_and_never_include_root() {
        assert_eq!(parse_uid_range("100000-100999"), Ok((100_000, 100_999)));
        assert_eq!(parse_uid_range("7-7"), Ok((7, 7)));
        for bad in ["0-10", "10-5", "10", "a-b", "-5"] {
            assert!(parse_uid_range(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_process_uid_is_its_real_uid() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("42")).unwrap();
        std::fs::write(
            dir.path().join("42/status"),
            "Name:\tform-vmm\nUid:\t100003\t100003\t100003\t100003\nGid:\t36\t36\t36\t36\n",
        )
        .unwrap();
        assert_eq!(process_uid(dir.path(), 42), Some(100_003));
        assert_eq!(process_uid(dir.path(), 43), None);
    }
}
