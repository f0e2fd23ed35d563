//! no_new_privs, and giving up root: supplementary groups, gid, uid and every
//! capability, once the first VM has opened what needs root.

use std::io;

/// The user and group to run as after the first VM is built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Credentials {
    pub uid: u32,
    pub gid: u32,
}

/// Resolves `--user NAME` (or a number) to its uid and primary gid.
pub fn lookup_user(name: &str) -> Result<Credentials, String> {
    if let Ok(uid) = name.parse::<u32>() {
        return Ok(Credentials { uid, gid: uid });
    }
    let passwd = std::fs::read_to_string("/etc/passwd")
        .map_err(|e| format!("--user {name}: cannot read /etc/passwd: {e}"))?;
    passwd
        .lines()
        .find_map(|line| {
            let mut fields = line.split(':');
            if fields.next()? != name {
                return None;
            }
            let _password = fields.next()?;
            let uid = fields.next()?.parse().ok()?;
            let gid = fields.next()?.parse().ok()?;
            Some(Credentials { uid, gid })
        })
        .ok_or_else(|| format!("--user {name}: no such user in /etc/passwd"))
}

/// Sets PR_SET_NO_NEW_PRIVS: no execve can give this process more privileges
/// (set-user-ID files, file capabilities), and seccomp filters may be installed
/// without CAP_SYS_ADMIN.
pub fn set_no_new_privs() -> io::Result<()> {
    // SAFETY: prctl with integer arguments only.
    let rc = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

fn capget() -> io::Result<[CapData; 2]> {
    let mut header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: header and data are the structures capget(2) reads and fills.
    let rc = unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(data)
}

fn capset_empty() -> io::Result<()> {
    let mut header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let data = [CapData::default(); 2];
    // SAFETY: as capget; capset only reads.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Whether this thread has any capability left (effective or permitted).
pub fn has_capabilities() -> io::Result<bool> {
    Ok(capget()?
        .iter()
        .any(|d| d.effective != 0 || d.permitted != 0 || d.inheritable != 0))
}

#[derive(Debug, thiserror::Error)]
pub enum DropError {
    #[error("cannot drop privileges to uid {uid} gid {gid}: {step}: {source}")]
    Failed {
        uid: u32,
        gid: u32,
        step: &'static str,
        source: io::Error,
    },
    #[error("privileges were not dropped: {0}")]
    StillPrivileged(String),
}

/// Becomes `to`: no supplementary groups, gid and uid (real, effective and saved)
/// set, and no capabilities. glibc applies setgroups/setresgid/setresuid to every
/// thread of the process; capabilities go with the uid (none survive a change from
/// root to another uid without PR_SET_KEEPCAPS), and capset clears what remains of
/// this thread's sets.
/// Guest RAM is pinned for passed-through devices after the drop too (the mapping
/// that runs while the guest starts, hotplug, a reboot), and without CAP_IPC_LOCK
/// the kernel counts each pin against RLIMIT_MEMLOCK: lifted while root may (to
/// unlimited with CAP_SYS_RESOURCE, else to the hard limit). What is pinned stays
/// bounded by guest RAM.
fn lift_memlock_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit reads the struct we own.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &limit) } == 0 {
        return;
    }
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) } != 0 {
        return;
    }
    limit.rlim_cur = limit.rlim_max;
    // SAFETY: as above; raising the soft limit to the hard one needs no privilege.
    unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &limit) };
    if limit.rlim_max != libc::RLIM_INFINITY {
        log::warn!(
            "sandbox: RLIMIT_MEMLOCK stays {} bytes after giving up root (no CAP_SYS_RESOURCE to lift it): guest RAM pinned for passed-through devices after that (the mapping while the guest starts, hotplug) counts against it; raise it (LimitMEMLOCK=infinity) or use --memory dma_map=upfront",
            limit.rlim_max
        );
    }
}

pub fn drop_to(to: Credentials) -> Result<(), DropError> {
    let fail = |step| {
        let source = io::Error::last_os_error();
        DropError::Failed {
            uid: to.uid,
            gid: to.gid,
            step,
            source,
        }
    };
    lift_memlock_limit();
    // The bounding set only matters to execve, which no filter allows; drop it
    // anyway while CAP_SETPCAP is still held (errors mean "no such capability").
    for cap in 0..64 {
        // SAFETY: integer arguments only.
        unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) };
    }
    // SAFETY: an empty list; glibc broadcasts it to every thread.
    if unsafe { libc::setgroups(0, std::ptr::null()) } != 0 {
        return Err(fail("setgroups([])"));
    }
    // SAFETY: integer arguments only.
    if unsafe { libc::setresgid(to.gid, to.gid, to.gid) } != 0 {
        return Err(fail("setresgid"));
    }
    // SAFETY: integer arguments only.
    if unsafe { libc::setresuid(to.uid, to.uid, to.uid) } != 0 {
        return Err(fail("setresuid"));
    }
    capset_empty().map_err(|source| DropError::Failed {
        uid: to.uid,
        gid: to.gid,
        step: "capset",
        source,
    })?;
    let (mut ruid, mut euid, mut suid) = (0, 0, 0);
    // SAFETY: getresuid writes the three ids.
    unsafe { libc::getresuid(&mut ruid, &mut euid, &mut suid) };
    if [ruid, euid, suid] != [to.uid; 3] {
        return Err(DropError::StillPrivileged(format!(
            "uids are {ruid}/{euid}/{suid}, not {}",
            to.uid
        )));
    }
    match has_capabilities() {
        Ok(false) => {}
        Ok(true) => {
            return Err(DropError::StillPrivileged(
                "capabilities remain after capset".into(),
            ))
        }
        Err(e) => return Err(DropError::StillPrivileged(format!("capget: {e}"))),
    }
    log::info!("running as uid {} gid {}, no capabilities", to.uid, to.gid);
    Ok(())
}
