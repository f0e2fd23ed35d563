//! Guest RAM mapped for device DMA while the guest starts, instead of before it.
//!
//! Pinning and IOMMU-mapping all of a VM's RAM is linear in RAM (seconds per GiB
//! on some hosts), and a passed-through device needs it only once it may master the
//! bus: a PCI function makes no memory request until its command register's Bus
//! Master Enable is set, and the device was reset (or left by vfio-pci) with it
//! clear. So a worker maps RAM in chunks, low addresses first, while the vCPUs run,
//! and [`DmaGate`] holds the guest's first Bus Master Enable write (and any hotplug)
//! until every chunk is mapped. docs/platform.md has the whole argument.
//!
//! A failed chunk unmaps every chunk before it (nothing stays pinned) and fails the
//! gate: the held write is dropped, and whoever registered with
//! [`DmaGate::on_failure`] stops the VM with the reason.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

/// Why guest RAM could not be mapped for DMA.
#[derive(Debug, thiserror::Error)]
pub enum DmaMapError {
    #[error("{0}")]
    Memlock(String),
    #[error("mapping guest RAM {iova:#x}+{size:#x} for device DMA: {source}")]
    DmaMap {
        iova: u64,
        size: u64,
        #[source]
        source: std::io::Error,
    },
    #[error("guest memory region at {0:#x} has no host mapping")]
    HostAddress(u64),
    #[error("mapping guest RAM for device DMA was stopped: the VM is going away")]
    MapCancelled,
    #[error("{0}")]
    Background(String),
    #[error("cannot start the thread mapping guest RAM for device DMA: {0}")]
    Worker(#[source] std::io::Error),
}

/// The message for a DMA map refused with `errno` after pinning `mapped` of the
/// `needed` bytes, with the process's locked-memory limit `limit` (`None`:
/// unlimited or unknown).
pub fn dma_map_failure(errno: i32, needed: u64, limit: Option<u64>) -> Option<String> {
    if errno != libc::ENOMEM && errno != libc::EPERM {
        return None;
    }
    let limit = match limit {
        Some(l) => format!("{l} bytes"),
        None => "unlimited".to_string(),
    };
    Some(format!(
        "pinning guest RAM for device DMA was refused ({}): the VM needs {needed} bytes \
         ({} MiB) locked but RLIMIT_MEMLOCK is {limit}; raise it to at least {needed} \
         (ulimit -l {}, LimitMEMLOCK= in the service unit, or grant CAP_IPC_LOCK)",
        std::io::Error::from_raw_os_error(errno),
        needed >> 20,
        needed.div_ceil(1024),
    ))
}

pub fn memlock_limit() -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) };
    (rc == 0 && lim.rlim_cur != libc::RLIM_INFINITY).then_some(lim.rlim_cur)
}

/// The IOMMU map and unmap calls, so the mapping logic runs in tests.
pub trait IommuDma {
    /// # Safety
    /// `host..host + size` stays mapped until unmapped here; the device may read
    /// and write it at any time.
    unsafe fn map(&self, iova: u64, size: u64, host: *mut u8) -> std::io::Result<()>;
    fn unmap(&self, iova: u64, size: u64) -> std::io::Result<()>;
}

/// One range of guest RAM to map: IOVA (= guest physical address), size, host
/// address.
#[derive(Debug, Clone, Copy)]
pub struct DmaRegion {
    pub iova: u64,
    pub size: u64,
    pub host: *mut u8,
}

/// Maps every region, or none: on a failure the ones already mapped are unmapped
/// again. A refusal for lack of lockable memory names the bytes needed and
/// `memlock_limit`.
///
/// # Safety
/// Each region satisfies [`IommuDma::map`]'s contract.
pub unsafe fn map_regions(
    dma: &dyn IommuDma,
    regions: &[DmaRegion],
    memlock_limit: Option<u64>,
) -> Result<(), DmaMapError> {
    let never = std::sync::atomic::AtomicBool::new(false);
    // SAFETY: passed on from the caller.
    unsafe { map_pieces(dma, regions, memlock_limit, &never) }
}

/// Bytes mapped per call: small enough that a teardown waits little for the call
/// in flight, large enough that the calls' own cost is lost in the pinning.
pub const CHUNK_BYTES: u64 = 256 << 20;

type FailureHook = Box<dyn FnOnce(String) + Send>;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Outcome {
    Mapped,
    Failed(String),
    /// The VM is going away; nobody needs the mapping any more.
    Abandoned,
}

#[derive(Default)]
struct GateState {
    outcome: Option<Outcome>,
    on_failure: Option<FailureHook>,
}

/// Whether guest RAM is mapped for DMA yet, for those that must wait until it is.
#[derive(Default)]
pub struct DmaGate {
    state: Mutex<GateState>,
    changed: Condvar,
}

impl DmaGate {
    /// A gate for RAM already mapped.
    pub fn open() -> Arc<DmaGate> {
        let gate = DmaGate::default();
        gate.lock().outcome = Some(Outcome::Mapped);
        Arc::new(gate)
    }

    /// A gate for RAM being mapped.
    pub fn closed() -> Arc<DmaGate> {
        Arc::new(DmaGate::default())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn is_open(&self) -> bool {
        self.lock().outcome == Some(Outcome::Mapped)
    }

    /// Blocks until the mapping has ended: `Ok` once all of RAM is mapped, else why
    /// it never will be.
    pub fn wait(&self) -> Result<(), String> {
        let mut state = self.lock();
        loop {
            match &state.outcome {
                Some(Outcome::Mapped) => return Ok(()),
                Some(Outcome::Failed(why)) => return Err(why.clone()),
                Some(Outcome::Abandoned) => return Err("the VM is stopping".to_string()),
                None => {
                    state = self.changed.wait(state).unwrap_or_else(|e| e.into_inner());
                }
            }
        }
    }

    /// [`DmaGate::wait`], but giving up (`Err`) as soon as `give_up` is set; it is
    /// looked at every `poll`.
    pub fn wait_unless(
        &self,
        give_up: &AtomicBool,
        poll: std::time::Duration,
    ) -> Result<(), String> {
        let mut state = self.lock();
        loop {
            match &state.outcome {
                Some(Outcome::Mapped) => return Ok(()),
                Some(Outcome::Failed(why)) => return Err(why.clone()),
                Some(Outcome::Abandoned) => return Err("the VM is stopping".to_string()),
                None if give_up.load(Ordering::SeqCst) => {
                    return Err("the device is being removed".to_string())
                }
                None => {
                    state = self
                        .changed
                        .wait_timeout(state, poll)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
            }
        }
    }

    /// `hook` runs once if the mapping fails (at once if it already has); an
    /// abandoned mapping is no failure.
    pub fn on_failure(&self, hook: impl FnOnce(String) + Send + 'static) {
        let mut state = self.lock();
        if let Some(Outcome::Failed(why)) = &state.outcome {
            let why = why.clone();
            drop(state);
            hook(why);
        } else if state.outcome.is_none() {
            state.on_failure = Some(Box::new(hook));
        }
    }

    /// Records how the mapping ended, unless it already has (abandoned first).
    fn finish(&self, outcome: Outcome) {
        let mut state = self.lock();
        if state.outcome.is_some() {
            return;
        }
        let hook = match &outcome {
            Outcome::Failed(_) => state.on_failure.take(),
            _ => None,
        };
        state.outcome = Some(outcome.clone());
        state.on_failure = None;
        drop(state);
        self.changed.notify_all();
        if let (Some(hook), Outcome::Failed(why)) = (hook, outcome) {
            hook(why);
        }
    }

    /// Releases every waiter with an error: the VM is stopping.
    pub fn abandon(&self) {
        self.finish(Outcome::Abandoned);
    }
}

/// `regions` cut into pieces of at most `chunk` bytes, lowest IOVA first.
pub fn chunks(regions: &[DmaRegion], chunk: u64) -> Vec<DmaRegion> {
    let mut sorted = regions.to_vec();
    sorted.sort_by_key(|r| r.iova);
    let mut out = Vec::new();
    for r in sorted {
        let mut done = 0;
        while done < r.size {
            let size = (r.size - done).min(chunk.max(1));
            out.push(DmaRegion {
                iova: r.iova + done,
                size,
                // Inside the region: `done < r.size`.
                host: r.host.wrapping_add(done as usize),
            });
            done += size;
        }
    }
    out
}

/// Maps `pieces` in order, stopping when `cancel` is set. On a failure or a
/// cancel, what was mapped is unmapped again.
///
/// # Safety
/// Each piece satisfies [`IommuDma::map`]'s contract.
pub unsafe fn map_pieces(
    dma: &dyn IommuDma,
    pieces: &[DmaRegion],
    memlock_limit: Option<u64>,
    cancel: &AtomicBool,
) -> Result<(), DmaMapError> {
    let needed: u64 = pieces.iter().map(|r| r.size).sum();
    for (i, r) in pieces.iter().enumerate() {
        let result = if cancel.load(Ordering::SeqCst) {
            Err(DmaMapError::MapCancelled)
        } else {
            // SAFETY: passed on from the caller.
            unsafe { dma.map(r.iova, r.size, r.host) }.map_err(|source| {
                match source
                    .raw_os_error()
                    .and_then(|errno| dma_map_failure(errno, needed, memlock_limit))
                {
                    Some(msg) => DmaMapError::Memlock(msg),
                    None => DmaMapError::DmaMap {
                        iova: r.iova,
                        size: r.size,
                        source,
                    },
                }
            })
        };
        if let Err(e) = result {
            for done in pieces.iter().take(i) {
                if let Err(e) = dma.unmap(done.iova, done.size) {
                    log::warn!("vfio: unmapping {:#x}+{:#x}: {e}", done.iova, done.size);
                }
            }
            return Err(e);
        }
    }
    Ok(())
}

/// Regions whose host memory the worker keeps alive (see [`BackgroundMap::start`]).
struct Pieces(Vec<DmaRegion>);

// SAFETY: the host pointers are only handed to the IOMMU, whose contract the caller
// of `BackgroundMap::start` upholds for as long as the worker runs.
unsafe impl Send for Pieces {}

/// The worker mapping guest RAM, and the gate it opens.
pub struct BackgroundMap {
    gate: Arc<DmaGate>,
    cancel: Arc<AtomicBool>,
    worker: Option<JoinHandle<()>>,
}

impl BackgroundMap {
    /// Starts mapping `regions` in pieces of `chunk` bytes on a thread named
    /// `vfio-dma`, which first runs `thread_start` (the sandbox's filter). `keep`
    /// is dropped when the worker ends: what keeps the regions' memory mapped.
    ///
    /// # Safety
    /// Each region satisfies [`IommuDma::map`]'s contract while `keep` lives.
    pub unsafe fn start(
        dma: Arc<dyn IommuDma + Send + Sync>,
        regions: &[DmaRegion],
        chunk: u64,
        memlock_limit: Option<u64>,
        keep: Box<dyn Send>,
        thread_start: fn(),
    ) -> std::io::Result<BackgroundMap> {
        let gate = DmaGate::closed();
        let cancel = Arc::new(AtomicBool::new(false));
        let pieces = Pieces(chunks(regions, chunk));
        let worker = {
            let gate = gate.clone();
            let cancel = cancel.clone();
            std::thread::Builder::new()
                .name("vfio-dma".to_string())
                .spawn(move || {
                    thread_start();
                    let pieces = pieces;
                    let bytes: u64 = pieces.0.iter().map(|p| p.size).sum();
                    let started = std::time::Instant::now();
                    // SAFETY: the caller's contract, with `keep` alive until the
                    // end of this closure.
                    let result = unsafe { map_pieces(&*dma, &pieces.0, memlock_limit, &cancel) };
                    drop(keep);
                    match result {
                        Ok(()) => {
                            log::info!(
                                "vfio: guest RAM ({} MiB) mapped for DMA in {} ms, while the guest ran",
                                bytes >> 20,
                                started.elapsed().as_millis()
                            );
                            gate.finish(Outcome::Mapped);
                        }
                        Err(DmaMapError::MapCancelled) => gate.abandon(),
                        Err(e) => {
                            let why = format!(
                                "guest RAM could not be mapped for the passed-through devices' DMA: {e}; nothing stays pinned"
                            );
                            log::error!("vfio: {why}");
                            gate.finish(Outcome::Failed(why));
                        }
                    }
                })?
        };
        Ok(BackgroundMap {
            gate,
            cancel,
            worker: Some(worker),
        })
    }

    pub fn gate(&self) -> Arc<DmaGate> {
        self.gate.clone()
    }

    /// Stops mapping after the piece in flight and releases the gate's waiters.
    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::SeqCst);
        self.gate.abandon();
    }
}

impl Drop for BackgroundMap {
    fn drop(&mut self) {
        self.cancel();
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}

/// Guest RAM as regions to map, IOVA = guest physical address.
fn dma_regions(memory: &GuestMemoryMmap) -> Result<Vec<DmaRegion>, DmaMapError> {
    memory
        .iter()
        .map(|region| {
            let iova = region.start_addr().0;
            let host = region
                .get_host_address(vm_memory::MemoryRegionAddress(0))
                .map_err(|_| DmaMapError::HostAddress(iova))?;
            Ok(DmaRegion {
                iova,
                size: region.len(),
                host,
            })
        })
        .collect()
}

/// Guest RAM's DMA mapping in one container: mapped once, at once or in the
/// background, with the gate saying whether it is yet.
pub struct GuestRamDma {
    dma: Arc<dyn IommuDma + Send + Sync>,
    gate: Mutex<Option<Arc<DmaGate>>>,
    background: Mutex<Option<BackgroundMap>>,
    mapped: Mutex<Vec<(u64, u64)>>,
}

impl GuestRamDma {
    pub fn new(dma: Arc<dyn IommuDma + Send + Sync>) -> GuestRamDma {
        GuestRamDma {
            dma,
            gate: Mutex::new(None),
            background: Mutex::new(None),
            mapped: Mutex::new(Vec::new()),
        }
    }

    /// Maps all of guest RAM before returning; a mapping already under way is
    /// waited for. Returns the gate, open.
    pub fn map_now(&self, memory: &GuestMemoryMmap) -> Result<Arc<DmaGate>, DmaMapError> {
        let mut gate = self.gate.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(gate) = gate.as_ref() {
            gate.wait().map_err(DmaMapError::Background)?;
            return Ok(gate.clone());
        }
        let regions = dma_regions(memory)?;
        // SAFETY: guest RAM stays mapped for the VM's lifetime, which outlives the
        // container; the device only reaches it through the IOMMU.
        unsafe { map_regions(&*self.dma, &regions, memlock_limit())? };
        self.record(&regions);
        Ok(gate.insert(DmaGate::open()).clone())
    }

    /// Starts mapping guest RAM on a worker and returns the gate that opens once
    /// it is all mapped; `thread_start` runs first on the worker. A mapping
    /// already started is not started again.
    pub fn map_in_background(
        &self,
        memory: &GuestMemoryMmap,
        thread_start: fn(),
    ) -> Result<Arc<DmaGate>, DmaMapError> {
        let mut gate = self.gate.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(gate) = gate.as_ref() {
            return Ok(gate.clone());
        }
        let regions = dma_regions(memory)?;
        // SAFETY: the worker keeps a clone of `memory` (and so its mappings) until
        // it ends; the device only reaches it through the IOMMU.
        let map = unsafe {
            BackgroundMap::start(
                self.dma.clone(),
                &regions,
                CHUNK_BYTES,
                memlock_limit(),
                Box::new(memory.clone()),
                thread_start,
            )
        }
        .map_err(DmaMapError::Worker)?;
        self.record(&regions);
        let started = map.gate();
        *self.background.lock().unwrap_or_else(|e| e.into_inner()) = Some(map);
        Ok(gate.insert(started).clone())
    }

    /// Stops a background mapping (the VM is stopping); its gate's waiters are
    /// released at once.
    pub fn cancel(&self) {
        if let Some(map) = self
            .background
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            map.cancel();
        }
    }

    /// Guest RAM mapped or being mapped, `(iova, size)`.
    pub fn mapped(&self) -> Vec<(u64, u64)> {
        self.mapped
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn record(&self, regions: &[DmaRegion]) {
        *self.mapped.lock().unwrap_or_else(|e| e.into_inner()) =
            regions.iter().map(|r| (r.iova, r.size)).collect();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vfio::fake::FakeIommu;
    use std::time::Duration;

    const MIB: u64 = 1 << 20;

    fn region(iova: u64, size: u64) -> DmaRegion {
        DmaRegion {
            iova,
            size,
            host: std::ptr::null_mut::<u8>().wrapping_add(iova as usize),
        }
    }

    fn no_sandbox() {}

    /// `mib` MiB of RAM at 0 mapped in the background into `iommu`, 1 MiB a piece.
    fn start(iommu: &Arc<FakeIommu>, mib: u64) -> BackgroundMap {
        // SAFETY: the fake never touches the host addresses.
        unsafe {
            BackgroundMap::start(
                iommu.clone(),
                &[region(0, mib * MIB)],
                MIB,
                None,
                Box::new(()),
                no_sandbox,
            )
        }
        .unwrap()
    }

    #[test]
    fn chunks_cover_each_region_in_order_of_address() {
        let pieces = chunks(
            &[region(4096 * MIB, 300 * MIB), region(0, 600 * MIB)],
            256 * MIB,
        );
        let got: Vec<(u64, u64)> = pieces.iter().map(|p| (p.iova, p.size)).collect();
        assert_eq!(
            got,
            vec![
                (0, 256 * MIB),
                (256 * MIB, 256 * MIB),
                (512 * MIB, 88 * MIB),
                (4096 * MIB, 256 * MIB),
                (4352 * MIB, 44 * MIB),
            ]
        );
        assert_eq!(pieces[1].host as usize, 256 * MIB as usize);
    }

    #[test]
    fn the_gate_opens_only_once_every_piece_is_mapped() {
        let iommu = Arc::new(FakeIommu::default());
        iommu.set_map_delay(Duration::from_millis(30));
        let map = start(&iommu, 4);
        let gate = map.gate();
        assert!(!gate.is_open(), "four 30 ms maps cannot be done yet");
        gate.wait().unwrap();
        assert!(gate.is_open());
        assert_eq!(iommu.snapshot().len(), 4);
    }

    #[test]
    fn a_failed_piece_unmaps_the_others_and_tells_the_hook() {
        let iommu = Arc::new(FakeIommu::default());
        iommu.refuse_from(2 * MIB);
        let (tx, rx) = std::sync::mpsc::channel();
        let map = start(&iommu, 4);
        map.gate().on_failure(move |why| tx.send(why).unwrap());
        let err = map.gate().wait().unwrap_err();
        assert!(err.contains("nothing stays pinned"), "{err}");
        let told = rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(told, err);
        drop(map);
        assert_eq!(
            iommu.snapshot(),
            vec![],
            "the pieces before it were unmapped"
        );
        assert_eq!(iommu.unmaps(), 2);
    }

    #[test]
    fn dropping_the_map_stops_it_and_leaves_nothing_mapped() {
        let iommu = Arc::new(FakeIommu::default());
        iommu.set_map_delay(Duration::from_millis(20));
        let map = start(&iommu, 64);
        let gate = map.gate();
        let hooked = Arc::new(AtomicBool::new(false));
        let flag = hooked.clone();
        gate.on_failure(move |_| flag.store(true, Ordering::SeqCst));
        std::thread::sleep(Duration::from_millis(50));
        drop(map);
        assert_eq!(gate.wait().unwrap_err(), "the VM is stopping");
        assert!(!hooked.load(Ordering::SeqCst), "a stop is no failure");
        assert_eq!(iommu.snapshot(), vec![]);
    }

    #[test]
    fn a_waiter_gives_up_when_told_and_the_gate_stays_closed() {
        let gate = DmaGate::closed();
        let give_up = Arc::new(AtomicBool::new(false));
        let waiter = {
            let (gate, give_up) = (gate.clone(), give_up.clone());
            std::thread::spawn(move || gate.wait_unless(&give_up, Duration::from_millis(5)))
        };
        std::thread::sleep(Duration::from_millis(30));
        give_up.store(true, Ordering::SeqCst);
        assert_eq!(
            waiter.join().unwrap().unwrap_err(),
            "the device is being removed"
        );
        assert!(!gate.is_open());
        gate.finish(Outcome::Mapped);
        assert_eq!(gate.wait_unless(&give_up, Duration::from_millis(5)), Ok(()));
    }

    #[test]
    fn a_hook_registered_after_the_failure_runs_at_once() {
        let gate = DmaGate::closed();
        gate.finish(Outcome::Failed("no".to_string()));
        let (tx, rx) = std::sync::mpsc::channel();
        gate.on_failure(move |why| tx.send(why).unwrap());
        assert_eq!(rx.try_recv().unwrap(), "no");
        let open = DmaGate::open();
        open.on_failure(|_| panic!("an open gate never fails"));
        open.abandon();
        assert!(open.is_open(), "a mapped gate stays open");
    }
}
