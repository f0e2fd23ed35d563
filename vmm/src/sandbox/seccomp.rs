//! The seccomp filters, one per kind of thread, built in code with rust-vmm's
//! `seccompiler`. Every filter's default action kills the whole process (or, with
//! `--seccomp log`, lets the call through and has the kernel log it).
//!
//! Filters stack: a thread runs under its own filter and under those of the thread
//! that created it. Three consequences shape the lists below:
//!
//! - The main thread's filter is the widest: it creates VMs at any time (vm.create,
//!   vm.boot after a shutdown, reboots, hotplug), so it opens /dev/kvm, VFIO nodes,
//!   taps, disk images and sysfs files, and creates threads.
//! - A virtio device's I/O thread is started by the vCPU thread whose write set
//!   DRIVER_OK, so the vCPU filter also holds every call a device thread makes
//!   (`device_io`); the device thread's own filter then narrows it to its device.
//! - A new thread's start-up code (glibc's and Rust's: robust list, rseq, signal
//!   stack, thread name) runs under its creator's filter, before it installs its own.

use super::ThreadKind;
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen as Len, SeccompCmpOp as Op, SeccompCondition,
    SeccompFilter, SeccompRule, TargetArch,
};
use std::collections::BTreeMap;

/// What a filter does with a system call it does not list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SeccompMode {
    /// No filters at all.
    Off,
    /// Kill the process (SIGSYS) on a call the thread's filter does not allow.
    Kill,
    /// Allow the call and have the kernel log it (SECCOMP_RET_LOG): for finding what a
    /// filter misses without killing the VM.
    Log,
}

#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    #[error("cannot build the seccomp filter of the {kind} thread: {source}")]
    Build {
        kind: ThreadKind,
        source: seccompiler::BackendError,
    },
    #[error("cannot install the seccomp filter of the {kind} thread: {source}")]
    Install {
        kind: ThreadKind,
        source: seccompiler::Error,
    },
}

/// The credentials a privilege drop switches to: every filter lets exactly these
/// through, because glibc runs setgroups/setresgid/setresuid on every thread of the
/// process (its "setxid" broadcast), not only on the one that asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SetxidTarget {
    pub uid: u32,
    pub gid: u32,
}

/// `_IOC` without direction and size: what the masked comparisons below match on.
const fn ioc(kind: u32, nr: u32) -> u64 {
    ((kind << 8) | nr) as u64
}

const KVMIO: u32 = 0xae;
const VFIO_TYPE: u32 = 0x3b; // ';'
const TUN_TYPE: u32 = 0x54; // 'T', shared with the terminal ioctls

// KVM ioctls (linux/kvm.h), by number.
// include/uapi/linux/vfio.h: VFIO_BASE (100) + 13 and + 14.
const NR_VFIO_IOMMU_MAP_DMA: u32 = 113;
const NR_VFIO_IOMMU_UNMAP_DMA: u32 = 114;
const NR_KVM_RUN: u32 = 0x80;
const NR_KVM_SET_USER_MEMORY_REGION: u32 = 0x46;
const NR_KVM_IRQ_LINE: u32 = 0x61;
const NR_KVM_IRQ_LINE_STATUS: u32 = 0x67;
const NR_KVM_SET_GSI_ROUTING: u32 = 0x6a;
const NR_KVM_IRQFD: u32 = 0x76;
const NR_KVM_IOEVENTFD: u32 = 0x79;
const NR_KVM_SIGNAL_MSI: u32 = 0xa5;
const NR_KVM_SET_DEVICE_ATTR: u32 = 0xe1;
const NR_KVM_GET_DEVICE_ATTR: u32 = 0xe2;
const NR_KVM_HAS_DEVICE_ATTR: u32 = 0xe3;

// The terminal and tun ioctls the VMM makes ('T' numbers).
const NR_TCGETS: u32 = 0x01;
const NR_TCSETS: u32 = 0x02;
const NR_TCSETSW: u32 = 0x03;
const NR_TIOCGWINSZ: u32 = 0x13;
const NR_FIONBIO: u32 = 0x21;
const NR_FIONREAD: u32 = 0x1b;
const NR_TUNSETIFF: u32 = 202;
const NR_TUNSETPERSIST: u32 = 203;
const NR_TUNGETFEATURES: u32 = 207;
const NR_TUNSETOFFLOAD: u32 = 208;
const NR_TUNGETIFF: u32 = 210;
const NR_TUNGETVNETHDRSZ: u32 = 215;
const NR_TUNSETVNETHDRSZ: u32 = 216;

// Socket ioctls for bringing a tap up.
const NR_SIOCGIFFLAGS: u64 = 0x8913;
const NR_SIOCSIFFLAGS: u64 = 0x8914;
const NR_SIOCGIFMTU: u64 = 0x8921;
const NR_SIOCGIFINDEX: u64 = 0x8933;

// Block devices as disks: sizes and sector sizes ('\x12' numbers).
const BLK_TYPE: u32 = 0x12;
const NR_BLKSSZGET: u32 = 104;
const NR_BLKGETSIZE64: u32 = 114;
const NR_BLKPBSZGET: u32 = 123;
const NR_BLKDISCARD: u32 = 119;
const NR_BLKZEROOUT: u32 = 127;

fn cond(arg: u8, op: Op, value: u64) -> SeccompCondition {
    // Only fails for an argument index above 5.
    SeccompCondition::new(arg, Len::Qword, op, value).unwrap_or_else(|_| unreachable!())
}

fn cond32(arg: u8, op: Op, value: u64) -> SeccompCondition {
    SeccompCondition::new(arg, Len::Dword, op, value).unwrap_or_else(|_| unreachable!())
}

fn rule(conditions: Vec<SeccompCondition>) -> SeccompRule {
    // Only fails for an empty list, which no caller passes.
    SeccompRule::new(conditions).unwrap_or_else(|_| unreachable!())
}

/// An ioctl whose request has type `kind` and number `nr`, whatever its direction
/// and size bits.
fn ioctl_nr(kind: u32, nr: u32) -> SeccompRule {
    rule(vec![cond32(1, Op::MaskedEq(0xffff), ioc(kind, nr))])
}

/// Any ioctl of type `kind`.
fn ioctl_type(kind: u32) -> SeccompRule {
    rule(vec![cond32(1, Op::MaskedEq(0xff00), ioc(kind, 0))])
}

fn ioctl_exact(request: u64) -> SeccompRule {
    rule(vec![cond32(1, Op::Eq, request)])
}

/// A filter's allow list: per system call, either always or when one of its rules
/// matches.
#[derive(Default)]
struct Allow(BTreeMap<i64, Option<Vec<SeccompRule>>>);

impl Allow {
    fn always(&mut self, calls: &[libc::c_long]) -> &mut Self {
        for &call in calls {
            self.0.insert(call, None);
        }
        self
    }

    fn when(&mut self, call: libc::c_long, rules: Vec<SeccompRule>) -> &mut Self {
        // None: already allowed whatever its arguments.
        if let Some(existing) = self.0.entry(call).or_insert_with(|| Some(Vec::new())) {
            existing.extend(rules);
        }
        self
    }

    fn into_rules(self) -> BTreeMap<i64, Vec<SeccompRule>> {
        self.0
            .into_iter()
            .map(|(call, rules)| (call, rules.unwrap_or_default()))
            .collect()
    }
}

/// What every thread needs: memory, locks, signals, time, logging, exiting.
fn common(a: &mut Allow, setxid: Option<SetxidTarget>) {
    use libc::*;
    a.always(&[
        SYS_futex,
        SYS_exit,
        SYS_exit_group,
        SYS_rt_sigreturn,
        SYS_rt_sigprocmask,
        SYS_sigaltstack,
        SYS_munmap,
        SYS_madvise,
        SYS_brk,
        SYS_sched_yield,
        SYS_sched_getaffinity,
        SYS_getpid,
        SYS_gettid,
        SYS_clock_gettime,
        SYS_clock_nanosleep,
        SYS_nanosleep,
        SYS_gettimeofday,
        SYS_restart_syscall,
        SYS_rseq,
        SYS_set_robust_list,
        SYS_close,
        // Logging (stderr or the log file) and eventfd signalling.
        SYS_write,
        SYS_getrandom,
    ]);
    // No executable mappings after start: the loader is done by then.
    for call in [SYS_mmap, SYS_mprotect] {
        a.when(
            call,
            vec![rule(vec![cond(2, Op::MaskedEq(PROT_EXEC as u64), 0)])],
        );
    }
    // Signals only to this process's own threads (vCPU kicks, abort).
    a.when(
        SYS_tgkill,
        vec![rule(vec![cond(0, Op::Eq, u64::from(std::process::id()))])],
    );
    a.when(
        SYS_prctl,
        vec![
            rule(vec![cond(0, Op::Eq, PR_SET_NAME as u64)]),
            rule(vec![cond(0, Op::Eq, PR_GET_NAME as u64)]),
        ],
    );
    let fcntl_cmds = [F_GETFD, F_SETFD, F_GETFL, F_SETFL, F_DUPFD_CLOEXEC];
    a.when(
        SYS_fcntl,
        fcntl_cmds
            .iter()
            .map(|&c| rule(vec![cond(1, Op::Eq, c as u64)]))
            .collect(),
    );
    if let Some(SetxidTarget { uid, gid }) = setxid {
        let (uid, gid) = (u64::from(uid), u64::from(gid));
        a.when(SYS_setgroups, vec![rule(vec![cond(0, Op::Eq, 0)])]);
        a.when(
            SYS_setresgid,
            vec![rule(vec![
                cond32(0, Op::Eq, gid),
                cond32(1, Op::Eq, gid),
                cond32(2, Op::Eq, gid),
            ])],
        );
        a.when(
            SYS_setresuid,
            vec![rule(vec![
                cond32(0, Op::Eq, uid),
                cond32(1, Op::Eq, uid),
                cond32(2, Op::Eq, uid),
            ])],
        );
    }
}

/// What a thread that starts threads needs for them, before they install their own
/// filter.
fn spawns_threads(a: &mut Allow) {
    use libc::*;
    // clone3's flags are behind a pointer, out of the filter's reach; clone (glibc's
    // fallback) must at least make a thread, not a process.
    a.always(&[SYS_clone3]);
    a.when(
        SYS_clone,
        vec![rule(vec![cond(
            0,
            Op::MaskedEq(CLONE_THREAD as u64),
            CLONE_THREAD as u64,
        )])],
    );
    // The new thread installing its own filter (which only narrows what it may do).
    a.when(
        SYS_prctl,
        vec![rule(vec![cond(0, Op::Eq, PR_SET_NO_NEW_PRIVS as u64)])],
    );
    a.when(
        SYS_seccomp,
        vec![rule(vec![cond(
            0,
            Op::Eq,
            u64::from(SECCOMP_SET_MODE_FILTER),
        )])],
    );
}

/// An I/O thread's loop: epoll on its eventfds, read the kicks, write interrupts.
fn device_loop(a: &mut Allow) {
    use libc::*;
    a.always(&[SYS_epoll_wait, SYS_epoll_pwait, SYS_epoll_ctl, SYS_read]);
}

fn block_io(a: &mut Allow) {
    use libc::*;
    a.always(&[
        SYS_pread64,
        SYS_pwrite64,
        SYS_preadv,
        SYS_pwritev,
        SYS_preadv2,
        SYS_pwritev2,
        SYS_lseek,
        SYS_fsync,
        SYS_fdatasync,
        SYS_fallocate,
        SYS_ftruncate,
        SYS_fstat,
        SYS_newfstatat,
        SYS_statx,
    ]);
    a.when(
        SYS_ioctl,
        [
            NR_BLKSSZGET,
            NR_BLKGETSIZE64,
            NR_BLKPBSZGET,
            NR_BLKDISCARD,
            NR_BLKZEROOUT,
        ]
        .iter()
        .map(|&nr| ioctl_nr(BLK_TYPE, nr))
        .collect(),
    );
}

fn net_io(a: &mut Allow) {
    use libc::*;
    a.always(&[SYS_readv, SYS_writev]);
}

fn console_io(a: &mut Allow) {
    use libc::*;
    a.always(&[SYS_poll, SYS_ppoll]);
    a.when(
        SYS_ioctl,
        [NR_TCGETS, NR_TIOCGWINSZ, NR_FIONREAD]
            .iter()
            .map(|&nr| ioctl_nr(TUN_TYPE, nr))
            .collect(),
    );
}

/// Everything any device thread does: the vCPU filter holds it because device
/// threads start on vCPU threads.
fn device_io(a: &mut Allow) {
    device_loop(a);
    block_io(a);
    net_io(a);
    console_io(a);
}

fn vcpu(a: &mut Allow) {
    use libc::*;
    spawns_threads(a);
    device_io(a);
    a.always(&[
        // Device activation: a device's I/O thread gets an epoll and a stop eventfd;
        // MSI-X vectors get eventfds registered as irqfds.
        SYS_eventfd2,
        SYS_epoll_create1,
        SYS_poll,
        SYS_ppoll,
        // VFIO config space and BAR regions that are not mapped.
        SYS_pread64,
        SYS_pwrite64,
        SYS_mremap,
    ]);
    let mut ioctls: Vec<SeccompRule> = [
        NR_KVM_RUN,
        NR_KVM_SET_USER_MEMORY_REGION,
        NR_KVM_IRQ_LINE,
        NR_KVM_IRQ_LINE_STATUS,
        NR_KVM_SET_GSI_ROUTING,
        NR_KVM_IRQFD,
        NR_KVM_IOEVENTFD,
        NR_KVM_SIGNAL_MSI,
        NR_KVM_SET_DEVICE_ATTR,
        NR_KVM_GET_DEVICE_ATTR,
        NR_KVM_HAS_DEVICE_ATTR,
    ]
    .iter()
    .map(|&nr| ioctl_nr(KVMIO, nr))
    .collect();
    // A passed-through device's interrupts (VFIO_DEVICE_SET_IRQS), resets, region
    // queries and DMA mappings of moved BARs: every VFIO ioctl.
    ioctls.push(ioctl_type(VFIO_TYPE));
    // virtio-net activates on the guest's DRIVER_OK write, on this thread: the
    // offloads the driver acked go to the tap (TUNSETOFFLOAD), with the header
    // size they need.
    ioctls.extend(
        [NR_TUNSETOFFLOAD, NR_TUNGETVNETHDRSZ, NR_TUNSETVNETHDRSZ]
            .iter()
            .map(|&nr| ioctl_nr(TUN_TYPE, nr)),
    );
    a.when(SYS_ioctl, ioctls);
}

/// Mapping guest RAM into the VFIO container, nothing else.
fn vfio_dma(a: &mut Allow) {
    a.when(
        libc::SYS_ioctl,
        vec![
            ioctl_nr(VFIO_TYPE, NR_VFIO_IOMMU_MAP_DMA),
            ioctl_nr(VFIO_TYPE, NR_VFIO_IOMMU_UNMAP_DMA),
        ],
    );
}

fn main_thread(a: &mut Allow) {
    use libc::*;
    spawns_threads(a);
    device_io(a);
    a.always(&[
        // Opening what VMs are built from, at any time: /dev/kvm, /dev/vfio/*,
        // /dev/net/tun, images, kernels, sysfs and /proc files.
        SYS_openat,
        SYS_open,
        SYS_read,
        SYS_readv,
        SYS_pread64,
        SYS_pwrite64,
        SYS_lseek,
        SYS_fstat,
        SYS_newfstatat,
        SYS_statx,
        SYS_access,
        SYS_faccessat,
        SYS_faccessat2,
        SYS_readlink,
        SYS_readlinkat,
        SYS_getdents64,
        SYS_getcwd,
        SYS_flock,
        SYS_ftruncate,
        SYS_fallocate,
        SYS_fsync,
        SYS_fdatasync,
        SYS_dup,
        SYS_dup3,
        // Guest RAM: memfd (shared=on), NUMA binding, huge pages.
        SYS_memfd_create,
        SYS_mbind,
        SYS_mremap,
        SYS_mlock,
        SYS_munlock,
        // The control loop and its signals.
        SYS_poll,
        SYS_ppoll,
        SYS_eventfd2,
        SYS_epoll_create1,
        SYS_signalfd4,
        SYS_rt_sigaction,
        SYS_getrlimit,
        SYS_uname,
        SYS_sched_setaffinity,
        SYS_getuid,
        SYS_geteuid,
        SYS_getgid,
        SYS_getegid,
        // Landlock, applied once the first VM is built (it only ever narrows).
        SYS_landlock_create_ruleset,
        SYS_landlock_add_rule,
        SYS_landlock_restrict_self,
        // The API socket is removed at exit.
        SYS_unlink,
        SYS_unlinkat,
        // Stop the API server's connections.
        SYS_shutdown,
    ]);
    // A tap's flags are set through an AF_INET datagram socket; stopping the API
    // server connects to its own unix socket once to wake its accept thread.
    a.when(
        SYS_socket,
        vec![
            rule(vec![cond(0, Op::Eq, AF_INET as u64)]),
            rule(vec![cond(0, Op::Eq, AF_UNIX as u64)]),
        ],
    );
    a.always(&[SYS_connect]);
    // Signals to this process only: a VMM that stays root must not be able to
    // signal the host's processes. Resource limits of this process only (glibc's
    // getrlimit/setrlimit pass pid 0).
    a.when(
        SYS_kill,
        vec![rule(vec![cond(0, Op::Eq, u64::from(std::process::id()))])],
    );
    a.when(SYS_prlimit64, vec![rule(vec![cond(0, Op::Eq, 0)])]);
    let mut ioctls = vec![ioctl_type(KVMIO), ioctl_type(VFIO_TYPE)];
    ioctls.extend(
        [
            NR_TUNSETIFF,
            NR_TUNSETPERSIST,
            NR_TUNGETFEATURES,
            NR_TUNSETOFFLOAD,
            NR_TUNGETIFF,
            NR_TUNGETVNETHDRSZ,
            NR_TUNSETVNETHDRSZ,
            NR_TCGETS,
            NR_TCSETS,
            NR_TCSETSW,
            NR_TIOCGWINSZ,
            NR_FIONBIO,
            NR_FIONREAD,
        ]
        .iter()
        .map(|&nr| ioctl_nr(TUN_TYPE, nr)),
    );
    ioctls.extend(
        [
            NR_SIOCGIFFLAGS,
            NR_SIOCSIFFLAGS,
            NR_SIOCGIFMTU,
            NR_SIOCGIFINDEX,
        ]
        .iter()
        .map(|&r| ioctl_exact(r)),
    );
    a.when(SYS_ioctl, ioctls);
}

/// The API thread and the HTTP library's threads, which it starts (the accept
/// thread and a pool of connection threads) and which run under its filter.
fn api(a: &mut Allow) {
    use libc::*;
    spawns_threads(a);
    a.always(&[
        SYS_accept4,
        SYS_accept,
        SYS_read,
        SYS_recvfrom,
        SYS_recvmsg,
        SYS_readv,
        SYS_writev,
        SYS_sendto,
        SYS_sendmsg,
        SYS_shutdown,
        SYS_getsockname,
        SYS_getpeername,
        SYS_getsockopt,
        SYS_poll,
        SYS_ppoll,
    ]);
    a.when(SYS_ioctl, vec![ioctl_nr(TUN_TYPE, NR_FIONBIO)]);
    // Dropping the server (when this thread holds the last reference) wakes the
    // accept thread by connecting to the socket.
    a.when(
        SYS_socket,
        vec![rule(vec![cond(0, Op::Eq, AF_UNIX as u64)])],
    );
    a.always(&[SYS_connect]);
}

fn serial_stdin(a: &mut Allow) {
    use libc::*;
    a.always(&[SYS_read]);
}

/// The calls a thread other than main may make but that never succeed there: they
/// fail with EACCES instead of killing the process. Libraries open files lazily,
/// from whichever thread first needs them (the lab saw an openat from a virtio-blk
/// thread in one run and from virtio-rng in the next); refusing the open keeps
/// these threads from reaching any file, and what asked copes with the error.
const REFUSED_OPENS: [libc::c_long; 2] = [libc::SYS_open, libc::SYS_openat];

/// The calls `kind`'s threads may make but see refused (EACCES): see
/// [`REFUSED_OPENS`].
pub fn refused_calls(kind: ThreadKind) -> &'static [libc::c_long] {
    match kind {
        ThreadKind::Main => &[],
        _ => &REFUSED_OPENS,
    }
}

/// The allow list of `kind`'s filter.
fn allow_list(kind: ThreadKind, setxid: Option<SetxidTarget>) -> BTreeMap<i64, Vec<SeccompRule>> {
    let mut a = Allow::default();
    common(&mut a, setxid);
    // Passed by this filter, refused by the one `build_refusals` makes.
    a.always(refused_calls(kind));
    match kind {
        ThreadKind::Main => {
            main_thread(&mut a);
            if setxid.is_some() {
                // The privilege drop itself, on the main thread.
                a.always(&[libc::SYS_capget, libc::SYS_capset, libc::SYS_getresuid]);
                a.when(
                    libc::SYS_prctl,
                    vec![rule(vec![cond(0, Op::Eq, libc::PR_CAPBSET_DROP as u64)])],
                );
                // Lifting RLIMIT_MEMLOCK of this process before the drop.
                a.when(
                    libc::SYS_prlimit64,
                    vec![rule(vec![
                        cond(0, Op::Eq, 0),
                        cond(1, Op::Eq, libc::RLIMIT_MEMLOCK as u64),
                    ])],
                );
            }
        }
        ThreadKind::Api => api(&mut a),
        ThreadKind::Vcpu => vcpu(&mut a),
        ThreadKind::VirtioBlock => {
            device_loop(&mut a);
            block_io(&mut a);
        }
        ThreadKind::VirtioNet => {
            device_loop(&mut a);
            net_io(&mut a);
        }
        ThreadKind::VirtioRng => device_loop(&mut a),
        ThreadKind::VirtioConsole => {
            device_loop(&mut a);
            console_io(&mut a);
        }
        ThreadKind::VirtioOther => device_io(&mut a),
        ThreadKind::SerialStdin => serial_stdin(&mut a),
        ThreadKind::VfioDma => vfio_dma(&mut a),
    }
    a.into_rules()
}

/// The system call numbers `kind` may make (some only with certain arguments), for
/// documentation and tests.
pub fn allowed_calls(kind: ThreadKind, setxid: Option<SetxidTarget>) -> Vec<i64> {
    allow_list(kind, setxid).into_keys().collect()
}

/// Compiles `kind`'s filter.
pub fn build(
    kind: ThreadKind,
    mode: SeccompMode,
    setxid: Option<SetxidTarget>,
) -> Result<BpfProgram, FilterError> {
    let mismatch = match mode {
        SeccompMode::Log => SeccompAction::Log,
        SeccompMode::Kill | SeccompMode::Off => SeccompAction::KillProcess,
    };
    let filter = SeccompFilter::new(
        allow_list(kind, setxid),
        mismatch,
        SeccompAction::Allow,
        TargetArch::x86_64,
    )
    .map_err(|source| FilterError::Build { kind, source })?;
    filter
        .try_into()
        .map_err(|source| FilterError::Build { kind, source })
}

/// The second filter of `kind`'s threads: [`refused_calls`] fail with EACCES, all
/// else passes on to the allow list. `None` when the thread refuses nothing.
pub fn build_refusals(kind: ThreadKind) -> Result<Option<BpfProgram>, FilterError> {
    let refused = refused_calls(kind);
    if refused.is_empty() {
        return Ok(None);
    }
    let rules = refused.iter().map(|&call| (call, Vec::new())).collect();
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EACCES as u32),
        TargetArch::x86_64,
    )
    .map_err(|source| FilterError::Build { kind, source })?;
    filter
        .try_into()
        .map(Some)
        .map_err(|source| FilterError::Build { kind, source })
}

/// Installs `program` on the calling thread.
pub fn install(kind: ThreadKind, program: &BpfProgram) -> Result<(), FilterError> {
    seccompiler::apply_filter(program).map_err(|source| FilterError::Install { kind, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_compiles_in_both_modes() {
        for kind in ThreadKind::ALL {
            for mode in [SeccompMode::Kill, SeccompMode::Log] {
                let setxid = Some(SetxidTarget {
                    uid: 1000,
                    gid: 1000,
                });
                assert!(!build(kind, mode, None).unwrap().is_empty());
                assert!(!build(kind, mode, setxid).unwrap().is_empty());
            }
        }
    }

    #[test]
    fn narrow_threads_cannot_open_files_or_make_sockets() {
        for kind in ThreadKind::ALL {
            let calls = allowed_calls(kind, None);
            // Passed by the allow list everywhere; refused by a second filter on
            // every thread but main.
            assert!(calls.contains(&libc::SYS_openat), "{kind}");
            let refused = refused_calls(kind).contains(&libc::SYS_openat);
            assert_eq!(refused, kind != ThreadKind::Main, "{kind}");
            assert_eq!(
                build_refusals(kind).unwrap().is_some(),
                kind != ThreadKind::Main
            );
            let sockets = matches!(kind, ThreadKind::Main | ThreadKind::Api);
            assert_eq!(calls.contains(&libc::SYS_socket), sockets, "{kind}");
            for never in [
                libc::SYS_execve,
                libc::SYS_ptrace,
                libc::SYS_fork,
                libc::SYS_mount,
            ] {
                assert!(!calls.contains(&never), "{kind} allows {never}");
            }
            assert!(!calls.contains(&libc::SYS_setresuid), "{kind}");
        }
        let with_drop = allowed_calls(ThreadKind::VirtioRng, Some(SetxidTarget { uid: 1, gid: 1 }));
        assert!(with_drop.contains(&libc::SYS_setresuid));
    }

    #[test]
    fn device_threads_need_nothing_their_creators_refuse() {
        // Device threads run under the vCPU's and the main thread's filters too.
        let vcpu = allowed_calls(ThreadKind::Vcpu, None);
        let main = allowed_calls(ThreadKind::Main, None);
        for kind in ThreadKind::ALL.iter().filter(|k| k.is_device()) {
            for call in allowed_calls(*kind, None) {
                assert!(vcpu.contains(&call), "{kind} needs {call}, vcpu refuses it");
                assert!(main.contains(&call), "{kind} needs {call}, main refuses it");
            }
        }
        for call in vcpu {
            assert!(main.contains(&call), "vcpu needs {call}, main refuses it");
        }
    }

    #[test]
    fn the_dma_worker_may_map_guest_ram_and_little_else() {
        let mut base = Allow::default();
        common(&mut base, None);
        base.always(refused_calls(ThreadKind::VfioDma));
        let base: Vec<i64> = base.into_rules().into_keys().collect();
        let dma = allowed_calls(ThreadKind::VfioDma, None);
        let extra: Vec<i64> = dma.iter().copied().filter(|c| !base.contains(c)).collect();
        assert_eq!(extra, vec![libc::SYS_ioctl]);
        // It starts under the main thread's filter.
        let main = allowed_calls(ThreadKind::Main, None);
        assert!(dma.iter().all(|call| main.contains(call)));
    }
}
