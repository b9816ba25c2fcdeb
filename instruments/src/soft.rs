//! A software NVMe controller: **a test instrument, not a device**.
//!
//! It serves the same SQ/CQ/doorbell layout that homi maps from a real controller,
//! from a host thread, over a namespace kept in memory, so the queue-pair engine can be
//! tested and benchmarked on machines with no NVMe device and no homi module (host
//! unit tests, GPU machines). It implements the NVM command set subset the engine
//! uses: Read, Write, Compare, Write Zeroes, Flush and Dataset Management.
//!
//! "DMA addresses" are host virtual addresses: buffers come from
//! [`SoftController::alloc`]. Faults can be injected ([`Fault`]): media errors,
//! lost completions (timeouts) and controller resets. In null mode commands complete
//! at once without touching data, which isolates the engine's own cost.
//!
//! With [`SoftConfig::shadow_doorbells`] it behaves like a controller after Doorbell
//! Buffer Config: it reads SQ tails and CQ heads from shadow slots, looks at a queue
//! only after an MMIO doorbell write or while it is still working through it, and
//! publishes the SQ event index when it has caught up, so the host's event index
//! logic is exercised against a controller that really sleeps.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::thread::JoinHandle;

use crate::soft_memory::{HostMemory, Memory};
use homi::{
    DmaBuffer, Doorbell, Error, HostPages, Opcode, QueueBacking, QueuePair, RawQueue, Result, Sqe, Status, PAGE,
};

/// PRP entries in one list page.
const LIST_ENTRIES: usize = PAGE / 8;

/// Shape of a software controller.
#[derive(Clone, Copy, Debug)]
pub struct SoftConfig {
    /// Namespace 1's size in 512-byte blocks.
    pub blocks: u64,
    /// Complete every command at once without moving data.
    pub null: bool,
    /// Largest queue depth (MQES + 1).
    pub max_queue_entries: u32,
    /// Largest transfer in bytes.
    pub max_transfer: usize,
    /// Serve queues through shadow doorbells with event index (see the module docs).
    pub shadow_doorbells: bool,
}

impl Default for SoftConfig {
    fn default() -> Self {
        Self {
            blocks: 16384,
            null: false,
            max_queue_entries: 4096,
            max_transfer: (LIST_ENTRIES + 1) * PAGE,
            shadow_doorbells: false,
        }
    }
}

/// A fault to inject into the next commands the controller executes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Complete the next `count` commands with `status` (e.g. a media error).
    Status {
        /// The status to complete with.
        status: Status,
        /// How many commands.
        count: u32,
    },
    /// Swallow the next `count` commands: no completion ever comes.
    Drop {
        /// How many commands.
        count: u32,
    },
    /// Complete the next `count` commands (successfully, without executing them) under
    /// command identifier `cid` instead of their own: a controller bug, for the host's
    /// handling of a completion it cannot match.
    Cid {
        /// The command identifier the completions carry.
        cid: u16,
        /// How many commands.
        count: u32,
    },
}

const BLOCK: usize = 512;

/// One queue served by the software controller.
pub(crate) struct Queue {
    pub(crate) qid: u16,
    pub(crate) depth: u32,
    /// The rings' addresses, as the controller's [`Memory`] reaches them.
    pub(crate) sq: u64,
    pub(crate) cq: u64,
    /// What holds the rings.
    pub(crate) _rings: Box<dyn std::any::Any + Send + Sync>,
    /// Doorbells, one u32 each at [`Slot`] offsets of one page.
    pub(crate) db: HostPages,
    live: AtomicBool,
    generation: AtomicU64,
    ctrl: Arc<Inner>,
}

/// What a [`QueuePair`] of this controller holds: its queue, kept alive.
struct Backing(Arc<Queue>);

impl QueueBacking for Backing {
    fn check(&self, generation: u64) -> Result<()> {
        let now = self.0.ctrl.generation.load(Ordering::Acquire);
        if now != generation {
            return Err(Error::Reset { old: generation, new: now });
        }
        Ok(())
    }

    fn rearm(&self) -> Result<u64> {
        self.0.rearm()
    }

    fn alloc(&self, size: usize) -> Result<DmaBuffer> {
        Ok(DmaBuffer::host(size))
    }
}

impl Queue {
    /// Recreates the queue after an injected reset; returns the new generation.
    fn rearm(&self) -> Result<u64> {
        if self.live.load(Ordering::Acquire) {
            return Err(Error::Invalid("rearm needs a queue that a reset destroyed"));
        }
        let _serving = self.ctrl.serving.lock().unwrap_or_else(|e| e.into_inner());
        self.ctrl.mem.zero(self.sq, self.depth as usize * 64);
        self.ctrl.mem.zero(self.cq, self.depth as usize * 16);
        self.db.zero();
        let g = self.ctrl.generation.load(Ordering::Acquire);
        self.generation.store(g, Ordering::Release);
        self.set_live(true);
        Ok(g)
    }

    /// Marks the queue live or destroyed, in the flag the worker reads and in the
    /// state word a GPU engine reads.
    fn set_live(&self, live: bool) {
        let state = if live { homi::uapi::HOMI_QUEUE_LIVE } else { homi::uapi::HOMI_QUEUE_DEAD };
        self.doorbell(Slot::State).store(state, Ordering::Release);
        self.live.store(live, Ordering::Release);
    }

    pub(crate) fn doorbell(&self, which: Slot) -> &AtomicU32 {
        // SAFETY: a 4-aligned slot at the start of the doorbell page, alive with `self`.
        unsafe { AtomicU32::from_ptr(self.db.ptr().add(4 * which as usize).cast()) }
    }

    /// The host's view of the doorbells.
    pub(crate) fn host_doorbells(&self, shadow: bool) -> (Doorbell, Doorbell) {
        let at = |s: Slot| self.doorbell(s).as_ptr().cast::<u8>();
        if shadow {
            (
                Doorbell::shadowed(at(Slot::SqTail), at(Slot::SqShadow), at(Slot::SqEventIdx)),
                Doorbell::shadowed(at(Slot::CqHead), at(Slot::CqShadow), at(Slot::CqEventIdx)),
            )
        } else {
            (Doorbell::mmio(at(Slot::SqTail)), Doorbell::mmio(at(Slot::CqHead)))
        }
    }
}

/// The doorbell page's slots.
#[derive(Clone, Copy)]
pub(crate) enum Slot {
    /// The MMIO doorbells.
    SqTail,
    CqHead,
    /// Shadow doorbells and event indexes.
    SqShadow,
    CqShadow,
    SqEventIdx,
    CqEventIdx,
    /// `HOMI_QUEUE_LIVE` or `HOMI_QUEUE_DEAD`, as a status page slot reads.
    State,
}

/// What the worker leaves in an MMIO SQ doorbell once it has taken the write, so the
/// next write is seen even if it carries the same value (no tail is ever this large).
const NOT_RUNG: u32 = u32::MAX;

/// State shared by the controller handle, its worker thread and its queues.
pub(crate) struct Inner {
    cfg: SoftConfig,
    /// How rings, PRP lists and data are reached.
    pub(crate) mem: Box<dyn Memory>,
    generation: AtomicU64,
    stop: AtomicBool,
    /// Every queue created; the worker serves those still alive.
    queues: Mutex<Vec<Weak<Queue>>>,
    queues_changed: AtomicBool,
    /// Held by the worker while it serves a round; rearm takes it to reset a queue.
    serving: Mutex<()>,
    faults: Mutex<VecDeque<Fault>>,
    has_faults: AtomicBool,
    commands: AtomicU64,
}

/// A software NVMe controller with one namespace (nsid 1) of 512-byte blocks.
/// A test instrument: see the module documentation.
pub struct SoftController {
    pub(crate) inner: Arc<Inner>,
    mode: Mode,
}

/// Who executes commands.
enum Mode {
    /// A worker thread polls every queue.
    Thread(Option<JoinHandle<()>>),
    /// The owner calls [`SoftController::serve`] (benchmarks: no second thread).
    Inline(Mutex<Worker>),
}

impl std::fmt::Debug for SoftController {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SoftController").field("cfg", &self.inner.cfg).finish()
    }
}

impl SoftController {
    /// Starts a controller and its worker thread.
    pub fn new(cfg: SoftConfig) -> Self {
        Self::with_memory(cfg, Box::new(HostMemory))
    }

    /// Starts a controller that reaches memory through `mem`, and its worker thread.
    pub(crate) fn with_memory(cfg: SoftConfig, mem: Box<dyn Memory>) -> Self {
        let (inner, worker) = Self::parts(cfg, mem);
        let worker = std::thread::Builder::new()
            .name("homi-softctrl".into())
            .spawn(move || worker.run())
            .expect("spawn the software controller thread");
        Self { inner, mode: Mode::Thread(Some(worker)) }
    }

    /// A controller without a thread: commands run only when the owner calls
    /// [`serve`](Self::serve). For measuring the engine on one thread.
    pub fn new_inline(cfg: SoftConfig) -> Self {
        let (inner, worker) = Self::parts(cfg, Box::new(HostMemory));
        Self { inner, mode: Mode::Inline(Mutex::new(worker)) }
    }

    /// Executes what the queues hold, on the caller's thread (inline controllers only;
    /// returns 0 for threaded ones). Returns how many commands ran.
    pub fn serve(&self) -> usize {
        match &self.mode {
            Mode::Inline(w) => w.lock().unwrap_or_else(|e| e.into_inner()).round(),
            Mode::Thread(_) => 0,
        }
    }

    fn parts(cfg: SoftConfig, mem: Box<dyn Memory>) -> (Arc<Inner>, Worker) {
        let inner = Arc::new(Inner {
            cfg,
            mem,
            generation: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            queues: Mutex::new(Vec::new()),
            queues_changed: AtomicBool::new(false),
            serving: Mutex::new(()),
            faults: Mutex::new(VecDeque::new()),
            has_faults: AtomicBool::new(false),
            commands: AtomicU64::new(0),
        });
        let media = if cfg.null { Vec::new() } else { vec![0u8; cfg.blocks as usize * BLOCK] };
        let worker = Worker { inner: inner.clone(), media, served: Vec::new() };
        (inner, worker)
    }

    /// Creates a queue pair of `depth` entries.
    pub fn create_qpair(&self, depth: u32) -> Result<QueuePair> {
        let (sq, cq) = (HostPages::new(depth as usize * 64), HostPages::new(depth as usize * 16));
        let (sqp, cqp) = (sq.ptr(), cq.ptr());
        let q = self.create_queue(depth, (sqp as u64, cqp as u64), Box::new((sq, cq)))?;
        let (sq_db, cq_db) = q.host_doorbells(self.inner.cfg.shadow_doorbells);
        let raw = RawQueue {
            qid: q.qid,
            depth,
            generation: q.generation.load(Ordering::Acquire),
            sq: sqp,
            cq: cqp,
            sq_db,
            cq_db,
            max_transfer: self.inner.cfg.max_transfer,
        };
        // SAFETY: the rings and doorbell page are zeroed host pages that `q` owns and
        // the queue pair keeps alive through `Backing`; only this controller's worker
        // touches them besides the queue pair.
        Ok(unsafe { QueuePair::from_raw(raw, Box::new(Backing(q))) })
    }

    /// Creates a queue of `depth` entries on zeroed rings at `rings` (SQ, CQ: addresses
    /// for the controller's [`Memory`], held by `keep`) and starts serving it.
    pub(crate) fn create_queue(
        &self,
        depth: u32,
        rings: (u64, u64),
        keep: Box<dyn std::any::Any + Send + Sync>,
    ) -> Result<Arc<Queue>> {
        if depth < 2 || depth > self.inner.cfg.max_queue_entries {
            return Err(Error::Invalid("queue depth outside 2..=max_queue_entries"));
        }
        if depth > homi::MAX_QUEUE_DEPTH {
            return Err(Error::Invalid("queue depth above 65535, the engine's limit"));
        }
        let mut queues = self.inner.queues.lock().unwrap_or_else(|e| e.into_inner());
        queues.retain(|w| w.strong_count() > 0);
        let qid =
            (1..).find(|id| !queues.iter().any(|w| w.upgrade().is_some_and(|q| q.qid == *id))).expect("a free qid");
        let generation = self.inner.generation.load(Ordering::Acquire);
        let q = Arc::new(Queue {
            qid,
            depth,
            sq: rings.0,
            cq: rings.1,
            _rings: keep,
            db: HostPages::new(PAGE),
            live: AtomicBool::new(true),
            generation: AtomicU64::new(generation),
            ctrl: self.inner.clone(),
        });
        q.set_live(true);
        queues.push(Arc::downgrade(&q));
        self.inner.queues_changed.store(true, Ordering::Release);
        Ok(q)
    }

    /// Allocates `size` bytes the controller can reach.
    pub fn alloc(&self, size: usize) -> DmaBuffer {
        DmaBuffer::host(size)
    }

    /// Queues a fault for the next commands.
    pub fn inject(&self, fault: Fault) {
        self.inner.faults.lock().unwrap_or_else(|e| e.into_inner()).push_back(fault);
        self.inner.has_faults.store(true, Ordering::Release);
    }

    /// Resets the controller: every queue is destroyed (in-flight commands are lost)
    /// and the generation moves on, as after `reset_controller` on a real one.
    pub fn reset(&self) {
        let _serving = self.inner.serving.lock().unwrap_or_else(|e| e.into_inner());
        for q in self.inner.queues.lock().unwrap_or_else(|e| e.into_inner()).iter().filter_map(Weak::upgrade) {
            q.set_live(false);
        }
        self.inner.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// The shape it was made with.
    pub fn config(&self) -> SoftConfig {
        self.inner.cfg
    }

    /// The controller generation.
    pub fn generation(&self) -> u64 {
        self.inner.generation.load(Ordering::Acquire)
    }

    /// Commands executed so far.
    pub fn commands(&self) -> u64 {
        self.inner.commands.load(Ordering::Relaxed)
    }
}

impl Drop for SoftController {
    fn drop(&mut self) {
        self.inner.stop.store(true, Ordering::Release);
        if let Mode::Thread(w) = &mut self.mode {
            if let Some(w) = w.take() {
                let _ = w.join();
            }
        }
    }
}

/// Controller-side state of one queue, owned by the worker.
struct Served {
    q: Arc<Queue>,
    sq_head: u32,
    cq_tail: u32,
    phase: bool,
    generation: u64,
    /// Shadow doorbells: woken by an MMIO write and not yet caught up.
    active: bool,
}

impl Served {
    fn new(q: Arc<Queue>, generation: u64) -> Self {
        Self { q, sq_head: 0, cq_tail: 0, phase: true, generation, active: false }
    }
}

struct Worker {
    inner: Arc<Inner>,
    media: Vec<u8>,
    served: Vec<Served>,
}

impl Worker {
    fn run(mut self) {
        let mut idle = 0u32;
        while !self.inner.stop.load(Ordering::Acquire) {
            if self.round() > 0 {
                idle = 0;
            } else {
                idle += 1;
                if idle > 4096 {
                    std::thread::sleep(std::time::Duration::from_micros(50));
                } else {
                    std::hint::spin_loop();
                }
            }
        }
    }

    /// Serves every queue once; returns how many commands ran.
    fn round(&mut self) -> usize {
        let inner = self.inner.clone();
        let _serving = inner.serving.lock().unwrap_or_else(|e| e.into_inner());
        let mut served = std::mem::take(&mut self.served);
        self.refresh(&mut served);
        let did = served.iter_mut().map(|s| self.serve(s)).sum();
        self.served = served;
        did
    }

    /// Picks up new queues, drops those whose queue pair is gone, and restarts
    /// rearmed ones.
    fn refresh(&mut self, served: &mut Vec<Served>) {
        // The worker's reference is the last one once the QueuePair is dropped.
        served.retain(|s| Arc::strong_count(&s.q) > 1);
        if self.inner.queues_changed.swap(false, Ordering::AcqRel) {
            let queues = self.inner.queues.lock().unwrap_or_else(|e| e.into_inner());
            for q in queues.iter().filter_map(Weak::upgrade) {
                if !served.iter().any(|s| Arc::ptr_eq(&s.q, &q)) {
                    let generation = q.generation.load(Ordering::Acquire);
                    served.push(Served::new(q, generation));
                }
            }
        }
        for s in served.iter_mut() {
            let g = s.q.generation.load(Ordering::Acquire);
            if g != s.generation {
                // Rearmed: start over on zeroed rings.
                *s = Served::new(s.q.clone(), g);
            }
        }
    }

    /// Executes what one queue's SQ holds, as far as its CQ has room; returns how many.
    fn serve(&mut self, s: &mut Served) -> usize {
        let q = s.q.clone();
        if !q.live.load(Ordering::Acquire) {
            return 0;
        }
        let shadow = self.inner.cfg.shadow_doorbells;
        let mut tail = if shadow {
            // A sleeping controller looks at the queue only when an MMIO write woke it.
            let rung = q.doorbell(Slot::SqTail).swap(NOT_RUNG, Ordering::AcqRel) != NOT_RUNG;
            if !rung && !s.active {
                return 0;
            }
            s.active = true;
            q.doorbell(Slot::SqShadow).load(Ordering::Acquire)
        } else {
            q.doorbell(Slot::SqTail).load(Ordering::Acquire)
        };
        let head_slot = if shadow { Slot::CqShadow } else { Slot::CqHead };
        let mut n = 0;
        loop {
            while s.sq_head != tail && tail < q.depth {
                let head = q.doorbell(head_slot).load(Ordering::Acquire);
                if (s.cq_tail + 1) % q.depth == head {
                    return n; // CQ full: the host must reap first; stay awake.
                }
                self.serve_one(s);
                n += 1;
            }
            if !shadow {
                return n;
            }
            // Caught up: ask to be told of anything past `tail`, then look once more,
            // since the host may have moved the tail before it saw the event index.
            q.doorbell(Slot::SqEventIdx).store(tail, Ordering::Release);
            std::sync::atomic::fence(Ordering::SeqCst);
            let again = q.doorbell(Slot::SqShadow).load(Ordering::Acquire);
            if again == tail {
                s.active = false;
                return n;
            }
            tail = again;
        }
    }

    /// Executes the SQ entry at the head.
    fn serve_one(&mut self, s: &mut Served) {
        let mut raw = [0u8; 64];
        // `sq_head < depth`, so the entry is inside the SQ ring.
        self.inner.mem.read(s.q.sq + 64 * u64::from(s.sq_head), &mut raw);
        let sqe = Sqe(std::array::from_fn(|i| u32::from_le_bytes(raw[4 * i..4 * i + 4].try_into().expect("4 bytes"))));
        s.sq_head = (s.sq_head + 1) % s.q.depth;
        self.inner.commands.fetch_add(1, Ordering::Relaxed);
        let cid = (sqe.0[0] >> 16) as u16;
        let status = match self.take_fault() {
            Some(Fault::Drop { .. }) => return,
            Some(Fault::Status { status, .. }) => status,
            Some(Fault::Cid { cid: bogus, .. }) => {
                self.complete(s, bogus, Status::SUCCESS);
                return;
            }
            None => self.execute(&sqe),
        };
        self.complete(s, cid, status);
    }

    fn take_fault(&self) -> Option<Fault> {
        if !self.inner.has_faults.load(Ordering::Acquire) {
            return None;
        }
        let mut faults = self.inner.faults.lock().unwrap_or_else(|e| e.into_inner());
        let f = faults.front_mut()?;
        let taken = *f;
        let left = match f {
            Fault::Status { count, .. } | Fault::Drop { count } | Fault::Cid { count, .. } => {
                *count -= 1;
                *count
            }
        };
        if left == 0 {
            faults.pop_front();
        }
        if faults.is_empty() {
            self.inner.has_faults.store(false, Ordering::Release);
        }
        Some(taken)
    }

    fn complete(&self, s: &mut Served, cid: u16, status: Status) {
        let q = &s.q;
        // `cq_tail < depth`, so the entry is inside the CQ ring; the host does not read
        // it until the phase tag (in the last dword) flips.
        let dw3 = u32::from(cid) | u32::from((status.0 << 1) | u16::from(s.phase)) << 16;
        self.inner.mem.post_cqe(q.cq + 16 * u64::from(s.cq_tail), [0, 0, s.sq_head | u32::from(q.qid) << 16, dw3]);
        s.cq_tail += 1;
        if s.cq_tail == q.depth {
            s.cq_tail = 0;
            s.phase = !s.phase;
        }
    }

    fn execute(&mut self, sqe: &Sqe) -> Status {
        let d = &sqe.0;
        let Some(op) = opcode(d[0] as u8) else {
            return Status::INVALID_OPCODE;
        };
        if d[1] != 1 {
            return Status::INVALID_NAMESPACE;
        }
        let cfg = self.inner.cfg;
        let (prp1, prp2) = (u64::from(d[6]) | u64::from(d[7]) << 32, u64::from(d[8]) | u64::from(d[9]) << 32);
        match op {
            Opcode::Flush => Status::SUCCESS,
            Opcode::DatasetManagement => {
                let ranges = (d[10] & 0xff) as usize + 1;
                if cfg.null {
                    return Status::SUCCESS;
                }
                let mut buf = vec![0u8; ranges * 16];
                if let Err(s) = self.dma(prp1, prp2, &mut buf, false) {
                    return s;
                }
                for r in buf.chunks(16) {
                    let len = u32::from_le_bytes(r[4..8].try_into().expect("4 bytes")) as u64;
                    let slba = u64::from_le_bytes(r[8..16].try_into().expect("8 bytes"));
                    match self.range(slba, len) {
                        Some(m) => m.fill(0),
                        None => return Status::LBA_OUT_OF_RANGE,
                    }
                }
                Status::SUCCESS
            }
            Opcode::Read | Opcode::Write | Opcode::Compare | Opcode::WriteZeroes => {
                let slba = u64::from(d[10]) | u64::from(d[11]) << 32;
                let blocks = u64::from(d[12] & 0xffff) + 1;
                if slba.checked_add(blocks).is_none_or(|end| end > cfg.blocks) {
                    return Status::LBA_OUT_OF_RANGE;
                }
                if op != Opcode::WriteZeroes && blocks as usize * BLOCK > cfg.max_transfer {
                    return Status::INVALID_FIELD;
                }
                if cfg.null {
                    return Status::SUCCESS;
                }
                let at = slba as usize * BLOCK;
                let len = blocks as usize * BLOCK;
                match op {
                    Opcode::WriteZeroes => {
                        self.media[at..at + len].fill(0);
                        Status::SUCCESS
                    }
                    Opcode::Read => {
                        let mut data = std::mem::take(&mut self.media);
                        let r = self.dma(prp1, prp2, &mut data[at..at + len], true);
                        self.media = data;
                        r.err().unwrap_or(Status::SUCCESS)
                    }
                    Opcode::Write => {
                        let mut data = std::mem::take(&mut self.media);
                        let r = self.dma(prp1, prp2, &mut data[at..at + len], false);
                        self.media = data;
                        r.err().unwrap_or(Status::SUCCESS)
                    }
                    _ => {
                        let mut host = vec![0u8; len];
                        if let Err(s) = self.dma(prp1, prp2, &mut host, false) {
                            return s;
                        }
                        if host == self.media[at..at + len] {
                            Status::SUCCESS
                        } else {
                            Status::COMPARE_FAILURE
                        }
                    }
                }
            }
        }
    }

    fn range(&mut self, slba: u64, blocks: u64) -> Option<&mut [u8]> {
        let end = slba.checked_add(blocks)?;
        if end > self.inner.cfg.blocks {
            return None;
        }
        Some(&mut self.media[slba as usize * BLOCK..end as usize * BLOCK])
    }

    /// Moves `data.len()` bytes between `data` and the host memory the PRPs name:
    /// to the host when `to_host`, from it otherwise.
    fn dma(&self, prp1: u64, prp2: u64, data: &mut [u8], to_host: bool) -> std::result::Result<(), Status> {
        let len = data.len();
        let first_left = PAGE - (prp1 as usize % PAGE);
        let mut segs: Vec<(u64, usize)> = vec![(prp1, len.min(first_left))];
        let mut rest = len.saturating_sub(first_left);
        if rest > 0 {
            if rest <= PAGE {
                segs.push((prp2, rest));
            } else {
                if prp2 % 8 != 0 || prp2 == 0 {
                    return Err(Status::INVALID_FIELD);
                }
                let entries = rest.div_ceil(PAGE);
                if entries > LIST_ENTRIES {
                    return Err(Status::INVALID_FIELD);
                }
                // The host built a list page at `prp2` with an entry for every page.
                let mut list = vec![0u8; 8 * entries];
                self.inner.mem.read(prp2, &mut list);
                for e in list.chunks(8) {
                    segs.push((u64::from_le_bytes(e.try_into().expect("8 bytes")), rest.min(PAGE)));
                    rest -= rest.min(PAGE);
                }
            }
        }
        let mut off = 0;
        for (addr, n) in segs {
            if addr == 0 {
                return Err(Status::DATA_TRANSFER_ERROR);
            }
            if to_host {
                self.inner.mem.write(addr, &data[off..off + n]);
            } else {
                self.inner.mem.read(addr, &mut data[off..off + n]);
            }
            off += n;
        }
        Ok(())
    }
}

fn opcode(op: u8) -> Option<Opcode> {
    Some(match op {
        0x00 => Opcode::Flush,
        0x01 => Opcode::Write,
        0x02 => Opcode::Read,
        0x05 => Opcode::Compare,
        0x08 => Opcode::WriteZeroes,
        0x09 => Opcode::DatasetManagement,
        _ => return None,
    })
}
