//! The queue-pair engine: one reserved SQ/CQ pair, driven by polling.
//!
//! Ownership of ring slots:
//! - SQ slots from the controller's last reported head up to our `sq_tail` belong to
//!   the controller once the tail doorbell covers them; the rest are ours to fill.
//! - The CQ entry at `cq_head` is ours once its phase tag equals `phase`; we hand it
//!   back by moving the head doorbell past it.
//!
//! Invariants: `sq_tail < depth`, `cq_head < depth`, and at most `depth - 1` commands
//! are in flight, so neither ring can overflow.
//!
//! Thread model: a `QueuePair` is `Send` but not `Sync`; drive each from one thread.
//! The hot path (`push`, `ring`, `poll`) allocates nothing.

use std::marker::PhantomData;
use std::os::fd::{AsFd, AsRawFd};
use std::sync::atomic::{compiler_fence, AtomicU16, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use homi_uapi::{HomiId, HomiQpair, HOMI_QPAIR_SHADOW, HOMI_QUEUE_DEAD};

use crate::buffer::DmaBuffer;
use crate::command::{Command, Sqe, Status};
use crate::controller::Shared;
use crate::doorbell::{Doorbell, DoorbellStats};
use crate::mapping::Mapping;
use crate::placement::RingMem;
use crate::prp::{self, Prps, PAGE};
use crate::{sys, Error, Result};

/// One completion, as returned by [`QueuePair::poll`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Completion {
    /// The caller's token given to [`QueuePair::push`].
    pub token: u64,
    /// The command's status.
    pub status: Status,
    /// Command-specific dword 0.
    pub result: u32,
    /// The command identifier the command had (from [`QueuePair::push`]).
    pub cid: u16,
}

impl Completion {
    /// `Ok` for success, else the status as a typed error.
    pub fn ok(&self) -> Result<()> {
        if self.status.is_success() {
            Ok(())
        } else {
            Err(Error::Nvme(self.status))
        }
    }
}

/// Orders prior stores to DMA memory before a following doorbell (MMIO) store.
#[inline(always)]
fn io_wmb() {
    // x86 keeps stores in order, write-back before uncached included: only the compiler
    // must not reorder.
    #[cfg(target_arch = "x86_64")]
    compiler_fence(Ordering::Release);
    #[cfg(target_arch = "aarch64")]
    // SAFETY: a barrier instruction; no memory is accessed.
    unsafe {
        std::arch::asm!("dmb oshst", options(nostack, preserves_flags))
    };
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    std::sync::atomic::fence(Ordering::SeqCst);
}

/// Orders a load of a completion's phase tag before loads of the rest of it.
#[inline(always)]
fn dma_rmb() {
    #[cfg(target_arch = "x86_64")]
    compiler_fence(Ordering::Acquire);
    #[cfg(target_arch = "aarch64")]
    // SAFETY: a barrier instruction; no memory is accessed.
    unsafe {
        std::arch::asm!("dmb oshld", options(nostack, preserves_flags))
    };
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    std::sync::atomic::fence(Ordering::SeqCst);
}

/// What answers for a queue pair that homi.ko did not make: another controller that
/// serves the same ring layout (the software controller of `homi-instruments`, say).
/// The engine calls it only off the hot path, or once per batch of completions.
pub trait QueueBacking: Send {
    /// Fails with [`Error::Reset`] or [`Error::Gone`] once the queue no longer exists
    /// on its controller (destroyed since `generation`).
    fn check(&self, generation: u64) -> Result<()>;
    /// Recreates the queue on its controller after a reset: same rings (zeroed), same
    /// doorbells. Returns the new generation.
    fn rearm(&self) -> Result<u64>;
    /// `size` bytes of memory this controller can reach, for PRP list pages.
    fn alloc(&self, size: usize) -> Result<DmaBuffer>;
}

/// The addresses of a queue pair's rings and doorbells, for [`QueuePair::from_raw`].
#[derive(Clone, Copy, Debug)]
pub struct RawQueue {
    /// Queue ID.
    pub qid: u16,
    /// Entries per ring.
    pub depth: u32,
    /// The controller generation the queue lives in.
    pub generation: u64,
    /// The SQ ring: `depth` 64-byte entries.
    pub sq: *mut u8,
    /// The CQ ring: `depth` 16-byte entries.
    pub cq: *mut u8,
    /// The SQ tail doorbell.
    pub sq_db: Doorbell,
    /// The CQ head doorbell.
    pub cq_db: Doorbell,
    /// Largest transfer in bytes.
    pub max_transfer: usize,
}

/// Where the rings live.
enum Backing {
    /// Mapped from `/dev/homi`: a real controller.
    Kernel { _sq: RingMem, _cq: RingMem, db: Doorbells, shared: Arc<Shared>, slot: u32 },
    /// Another controller, which keeps the rings alive.
    Other(Box<dyn QueueBacking>),
}

impl Backing {
    fn check(&self, generation: u64) -> Result<()> {
        match self {
            Backing::Kernel { shared, .. } => shared.check(generation),
            Backing::Other(b) => b.check(generation),
        }
    }
}

/// A reserved NVMe I/O queue pair.
pub struct QueuePair {
    qid: u16,
    depth: u32,
    sq: *mut Sqe,
    cq: *mut u8,
    sq_db: Doorbell,
    cq_db: Doorbell,
    db_stats: DoorbellStats,
    sq_tail: u32,
    cq_head: u32,
    phase: bool,
    generation: u64,
    /// Tail written since the last doorbell.
    unrung: bool,
    /// Free command identifiers (a stack).
    free_cids: Vec<u16>,
    /// Per command identifier: what the engine remembers while it is in flight.
    slots: Box<[Slot]>,
    /// PRP list pages, one per command that needs one; allocated on first use.
    prp_pool: Option<DmaBuffer>,
    prp_free: Vec<u16>,
    max_transfer: usize,
    backing: Backing,
    /// Not `Sync`: the engine's local state has one owner.
    _not_sync: PhantomData<std::cell::Cell<()>>,
}

// SAFETY: the raw ring pointers point into memory owned by `backing`, which moves with
// the queue pair; nothing else in this process uses them.
unsafe impl Send for QueuePair {}

impl std::fmt::Debug for QueuePair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueuePair")
            .field("qid", &self.qid)
            .field("depth", &self.depth)
            .field("in_flight", &self.in_flight())
            .finish()
    }
}

/// What the engine keeps for one command identifier.
struct Slot {
    /// The caller's token.
    token: u64,
    /// The PRP list page the command uses, or `NO_PRP`.
    prp: u16,
    busy: bool,
    /// The buffer kept alive until the command completes (`push_io`).
    held: Option<Arc<DmaBuffer>>,
}

/// The deepest queue the engine drives: command identifiers are 16 bits and one slot
/// always stays free, so 65535 entries give cids 0..=65534 (0xFFFF is never used). NVMe
/// allows 65536 (CAP.MQES 0xFFFF); such a controller's queues are limited to this.
pub const MAX_QUEUE_DEPTH: u32 = 65535;

/// Commands that may hold a PRP list page at once.
const PRP_POOL_PAGES: u32 = 256;
const NO_PRP: u16 = u16::MAX;

impl QueuePair {
    fn new(raw: RawQueue, backing: Backing) -> Self {
        let depth = raw.depth;
        assert!((2..=MAX_QUEUE_DEPTH).contains(&depth), "queue depth {depth} outside 2..={MAX_QUEUE_DEPTH}");
        Self {
            qid: raw.qid,
            depth,
            sq: raw.sq.cast(),
            cq: raw.cq,
            sq_db: raw.sq_db,
            cq_db: raw.cq_db,
            db_stats: DoorbellStats::default(),
            sq_tail: 0,
            cq_head: 0,
            phase: true,
            generation: raw.generation,
            unrung: false,
            free_cids: (0..depth as u16).rev().collect(),
            slots: (0..depth).map(|_| Slot { token: 0, prp: NO_PRP, busy: false, held: None }).collect(),
            prp_pool: None,
            prp_free: Vec::new(),
            max_transfer: raw.max_transfer,
            backing,
            _not_sync: PhantomData,
        }
    }

    /// Drives a queue pair that another controller serves (see [`QueueBacking`]).
    ///
    /// # Safety
    ///
    /// The rings and doorbells `raw` names must be live, zeroed at first, laid out as
    /// NVMe prescribes for `raw.depth` entries, and used by nothing else in this
    /// process, for as long as `backing` lives; `backing` keeps them alive.
    ///
    /// # Panics
    ///
    /// If `raw.depth` is outside 2..=[`MAX_QUEUE_DEPTH`].
    pub unsafe fn from_raw(raw: RawQueue, backing: Box<dyn QueueBacking>) -> Self {
        Self::new(raw, Backing::Other(backing))
    }

    pub(crate) fn map(shared: Arc<Shared>, q: HomiQpair, placed: [Option<(Arc<DmaBuffer>, u64)>; 2]) -> Result<Self> {
        let qid = q.qid as u16;
        if !(2..=MAX_QUEUE_DEPTH).contains(&q.depth) {
            destroy(&shared, qid);
            return Err(Error::Invalid("the module made a queue deeper than the engine drives (65535)"));
        }
        let [sq_at, cq_at] = placed;
        let maps = (|| {
            let fd = shared.fd().as_fd();
            let ring = |at: Option<(Arc<DmaBuffer>, u64)>, offset, size, what| match at {
                Some((b, off)) => Ok(RingMem::Placed(b, off)),
                None => Mapping::new(fd, offset, size, true, what).map(RingMem::Mapped),
            };
            let sq = ring(sq_at, q.sq_offset, q.sq_size as usize, "SQ ring")?;
            let cq = ring(cq_at, q.cq_offset, q.cq_size as usize, "CQ ring")?;
            let db = Doorbells::map(&shared, &q)?;
            Ok::<_, Error>((sq, cq, db))
        })();
        let (sq, cq, db) = match maps {
            Ok(m) => m,
            Err(e) => {
                destroy(&shared, qid);
                return Err(e);
            }
        };
        let (sq_db, cq_db) = db.doorbells(&shared, &q);
        let (sqp, cqp) = match (sq.ptr(), cq.ptr()) {
            (Ok(s), Ok(c)) => (s, c),
            (Err(e), _) | (_, Err(e)) => {
                destroy(&shared, qid);
                return Err(e);
            }
        };
        let raw = RawQueue {
            qid,
            depth: q.depth,
            generation: q.generation,
            sq: sqp,
            cq: cqp,
            sq_db,
            cq_db,
            max_transfer: shared.max_transfer,
        };
        Ok(Self::new(raw, Backing::Kernel { _sq: sq, _cq: cq, db, shared, slot: q.status_slot }))
    }

    /// The queue ID.
    pub fn qid(&self) -> u16 {
        self.qid
    }

    /// `HOMI_QUEUE_*` of this queue, from the status page without a syscall; `None`
    /// for a queue that homi.ko did not make.
    pub fn queue_state(&self) -> Option<u32> {
        match &self.backing {
            Backing::Kernel { shared, slot, .. } => Some(shared.queue_state(*slot)),
            Backing::Other(_) => None,
        }
    }

    /// Whether the queue's doorbells go through the controller's shadow doorbell
    /// buffer (see [`need_event`](crate::need_event)).
    pub fn shadow_doorbells(&self) -> bool {
        self.sq_db.is_shadowed()
    }

    /// Doorbell updates so far, and how many of them wrote an MMIO register.
    pub fn doorbell_stats(&self) -> DoorbellStats {
        self.db_stats
    }

    /// Entries per ring.
    pub fn depth(&self) -> u32 {
        self.depth
    }

    /// Commands submitted and not yet completed.
    pub fn in_flight(&self) -> u32 {
        self.depth - self.free_cids.len() as u32
    }

    /// Largest transfer in bytes.
    pub fn max_transfer(&self) -> usize {
        self.max_transfer
    }

    /// Commands that can be pushed before the queue is full.
    pub fn free_slots(&self) -> u32 {
        (self.depth - 1).saturating_sub(self.in_flight())
    }

    /// Writes `cmd` into the next SQ slot, without ringing the doorbell; many pushes can
    /// share one [`ring`](Self::ring). Returns the command identifier used.
    ///
    /// # Safety
    ///
    /// The memory `cmd`'s data pointer names must stay valid, and for reads not be
    /// touched, until the command's completion is returned by [`poll`](Self::poll).
    #[inline]
    pub unsafe fn push(&mut self, cmd: &Command, token: u64) -> Result<u16> {
        let cid = self.take_cid(token)?;
        self.write_sqe(cmd.to_sqe(cid));
        Ok(cid)
    }

    #[inline]
    fn take_cid(&mut self, token: u64) -> Result<u16> {
        // One identifier always stays free: at most `depth - 1` commands in flight.
        if self.free_cids.len() <= 1 {
            return Err(Error::QueueFull);
        }
        let cid = self.free_cids.pop().ok_or(Error::QueueFull)?;
        let slot = &mut self.slots[usize::from(cid)];
        slot.token = token;
        slot.busy = true;
        Ok(cid)
    }

    #[inline(always)]
    fn write_sqe(&mut self, sqe: Sqe) {
        // SAFETY: `sq_tail < depth` (invariant), so the slot is inside the SQ ring; it
        // is ours to fill (module docs). A plain store suffices: the device reads the
        // slot only after `ring`'s barrier and release-ordered doorbell store.
        unsafe { self.sq.add(self.sq_tail as usize).write(sqe) };
        self.sq_tail += 1;
        if self.sq_tail == self.depth {
            self.sq_tail = 0;
        }
        self.unrung = true;
    }

    /// Pushes a data command that moves `len` bytes at `offset` of `buf`, building its
    /// PRP entries (with a PRP list when it spans more than two pages). The queue keeps
    /// `buf` alive until the command completes.
    pub fn push_io(
        &mut self,
        cmd: Command,
        buf: &Arc<DmaBuffer>,
        offset: usize,
        len: usize,
        token: u64,
    ) -> Result<u16> {
        // SAFETY: the queue keeps a reference to `buf` until the command completes.
        unsafe { self.push_span(cmd, buf, offset, len, token, Some(buf.clone())) }
    }

    /// [`push_io`](Self::push_io) for a borrowed buffer, kept alive by `held` if given.
    ///
    /// # Safety
    ///
    /// Without `held`, `buf` must stay alive, and its range untouched, until the
    /// command completes.
    pub(crate) unsafe fn push_span(
        &mut self,
        cmd: Command,
        buf: &DmaBuffer,
        offset: usize,
        len: usize,
        token: u64,
        held: Option<Arc<DmaBuffer>>,
    ) -> Result<u16> {
        if len > self.max_transfer {
            return Err(Error::Invalid("transfer larger than the controller's maximum"));
        }
        let span = prp::span(buf.layout(), buf.len(), offset, len)?;
        let cid = self.take_cid(token)?;
        let prps = match span {
            Prps::Direct(p1, p2) => (p1, p2),
            Prps::List { first, pages } => match self.fill_prp_list(cid, pages) {
                Ok(list) => (first, list),
                Err(e) => {
                    self.release_cid(cid);
                    return Err(e);
                }
            },
        };
        self.slots[usize::from(cid)].held = held;
        self.write_sqe(cmd.with_prps(prps.0, prps.1).to_sqe(cid));
        Ok(cid)
    }

    /// Writes the page addresses of `pages` into a free PRP list page and returns its
    /// address.
    fn fill_prp_list(&mut self, cid: u16, pages: prp::Pages) -> Result<u64> {
        if self.prp_pool.is_none() {
            let n = PRP_POOL_PAGES.min(self.depth);
            self.prp_pool = Some(self.alloc_prp_pool(n as usize * PAGE)?);
            self.prp_free = (0..n as u16).rev().collect();
        }
        let pool = self.prp_pool.as_ref().expect("allocated above");
        let slot = self.prp_free.pop().ok_or(Error::QueueFull)?;
        let list = pool.as_ptr().wrapping_add(usize::from(slot) * PAGE).cast::<u64>();
        for (i, addr) in pages.enumerate() {
            // SAFETY: `span` bounds a list to one page of entries; the slot's page is
            // inside the pool and no in-flight command uses it.
            unsafe { list.add(i).write_volatile(addr) };
        }
        self.slots[usize::from(cid)].prp = slot;
        Ok(pool.dma_addr() + (usize::from(slot) * PAGE) as u64)
    }

    fn alloc_prp_pool(&self, size: usize) -> Result<DmaBuffer> {
        match &self.backing {
            Backing::Kernel { shared, .. } => DmaBuffer::alloc(shared.clone(), size),
            Backing::Other(b) => b.alloc(size),
        }
    }

    #[inline]
    fn release_cid(&mut self, cid: u16) -> u64 {
        let s = &mut self.slots[usize::from(cid)];
        s.busy = false;
        if s.held.is_some() {
            s.held = None;
        }
        if s.prp != NO_PRP {
            self.prp_free.push(s.prp);
            s.prp = NO_PRP;
        }
        let token = s.token;
        self.free_cids.push(cid);
        token
    }

    /// Publishes every pushed command to the controller with one doorbell write.
    #[inline]
    pub fn ring(&mut self) {
        if !self.unrung {
            return;
        }
        io_wmb();
        let mmio = self.sq_db.ring(self.sq_tail);
        self.count_doorbell(mmio);
        self.unrung = false;
    }

    /// Reaps every available completion, calling `f` for each, then hands the CQ
    /// entries back with one doorbell write. Returns how many were reaped.
    ///
    /// Fails with [`Error::Reset`] or [`Error::Gone`] when the queue no longer exists
    /// on the controller; its in-flight commands are then lost. Fails with
    /// [`Error::Invalid`] when the entry at the head names a command identifier that is
    /// not in flight (a controller bug): the entry stays unconsumed, so every later call
    /// fails the same way. Entries reaped before such an entry are returned (`Ok`, with
    /// the CQ head doorbell rung for them) and the error comes on the next call.
    #[inline]
    pub fn poll(&mut self, f: impl FnMut(Completion)) -> Result<usize> {
        // Inlined with a constant bound, the bound check folds away.
        self.poll_at_most(usize::MAX, f)
    }

    /// As [`poll`](Self::poll), but reaps at most `max` completions; the rest stay in
    /// the completion queue for the next call.
    #[inline(always)]
    pub fn poll_at_most(&mut self, max: usize, mut f: impl FnMut(Completion)) -> Result<usize> {
        let mut n = 0;
        while n < max {
            // SAFETY: `cq_head < depth` (invariant), so the 16-byte entry is inside the
            // CQ ring.
            let cqe = unsafe { self.cq.add(16 * self.cq_head as usize) };
            // SAFETY: bytes 14..16 of the entry, 2-aligned; the device writes them.
            let st = unsafe { AtomicU16::from_ptr(cqe.add(14).cast()) }.load(Ordering::Acquire);
            if (st & 1 == 1) != self.phase {
                break;
            }
            dma_rmb();
            if n == 0 {
                // A revoked ring reads as the dummy page: trust no entry until the
                // status page says this queue still lives (see `HomiStatus`).
                self.backing.check(self.generation)?;
            }
            // SAFETY: inside the entry, as above; the device finished writing it.
            let (dw0, cid) = unsafe {
                (std::ptr::read_volatile(cqe.cast::<u32>()), std::ptr::read_volatile(cqe.add(12).cast::<u16>()))
            };
            if !self.slots.get(usize::from(cid)).is_some_and(|s| s.busy) {
                if n == 0 {
                    return Err(Error::Invalid("completion for a command identifier not in flight"));
                }
                // Hand back what was reaped (its cids are free, its completions given to
                // `f`); the bad entry stays at the head for the next call to report.
                break;
            }
            let token = self.release_cid(cid);
            self.cq_head += 1;
            if self.cq_head == self.depth {
                self.cq_head = 0;
                self.phase = !self.phase;
            }
            n += 1;
            f(Completion { token, status: Status(st >> 1), result: dw0, cid });
        }
        if n > 0 {
            let mmio = self.cq_db.ring(self.cq_head);
            self.count_doorbell(mmio);
        }
        Ok(n)
    }

    #[inline(always)]
    fn count_doorbell(&mut self, mmio: bool) {
        self.db_stats.updates += 1;
        self.db_stats.mmio += u64::from(mmio);
    }

    /// Fails if the queue no longer exists (controller reset or gone).
    pub fn check(&self) -> Result<()> {
        self.backing.check(self.generation)
    }

    /// Submits one command and polls until it completes or `timeout` passes.
    ///
    /// # Safety
    ///
    /// As for [`push`](Self::push); on [`Error::Timeout`] the command may still be in
    /// flight, so its memory must stay valid until the queue is destroyed.
    pub unsafe fn execute(&mut self, cmd: &Command, timeout: Duration) -> Result<Completion> {
        // SAFETY: the caller upholds `push`'s contract.
        let cid = unsafe { self.push(cmd, u64::MAX)? };
        self.wait_for(cid, timeout)
    }

    /// Like [`execute`](Self::execute) for a data command on `buf`, safely: the queue
    /// keeps `buf` alive until the command completes.
    pub fn execute_io(
        &mut self,
        cmd: Command,
        buf: &Arc<DmaBuffer>,
        offset: usize,
        len: usize,
        timeout: Duration,
    ) -> Result<Completion> {
        let cid = self.push_io(cmd, buf, offset, len, u64::MAX)?;
        self.wait_for(cid, timeout)
    }

    fn wait_for(&mut self, cid: u16, timeout: Duration) -> Result<Completion> {
        self.ring();
        let start = Instant::now();
        let mut done = None;
        loop {
            self.poll(|c| {
                if c.token == u64::MAX {
                    done = Some(c);
                }
            })?;
            if let Some(c) = done {
                c.ok()?;
                return Ok(c);
            }
            if start.elapsed() > timeout {
                self.check()?;
                tracing::warn!(qid = self.qid, cid, "command timed out");
                return Err(Error::Timeout(timeout));
            }
            std::hint::spin_loop();
        }
    }

    /// Recreates the queue on the controller after a reset destroyed it: same qid, same
    /// rings (zeroed), a fresh doorbell mapping, and every command that was in flight
    /// forgotten.
    pub fn rearm(&mut self) -> Result<()> {
        match &mut self.backing {
            Backing::Kernel { db, shared, slot, _sq, _cq } => {
                if shared.queue_state(*slot) != HOMI_QUEUE_DEAD {
                    return Err(Error::Invalid("rearm needs a queue that a reset destroyed"));
                }
                let mut q = HomiQpair { qid: u32::from(self.qid), ..Default::default() };
                // SAFETY: the fd is open and `q` is a valid, writable `HomiQpair`.
                unsafe { sys::homi_rearm_qpair(shared.fd().as_raw_fd(), &mut q) }.map_err(|e| match e {
                    nix::Error::EAGAIN => Error::NotLive,
                    nix::Error::ENODEV => Error::Gone,
                    source => Error::Ioctl { op: "HOMI_IOCTL_REARM_QPAIR", source },
                })?;
                // The reset may have turned shadow doorbells on or off.
                let new_db = Doorbells::map(shared, &q)?;
                (self.sq_db, self.cq_db) = new_db.doorbells(shared, &q);
                *db = new_db;
                self.generation = q.generation;
                // The module zeroes only the rings it owns.
                _sq.zero(self.depth as usize * 64);
                _cq.zero(self.depth as usize * 16);
            }
            Backing::Other(b) => self.generation = b.rearm()?,
        }
        self.sq_tail = 0;
        self.cq_head = 0;
        self.phase = true;
        self.unrung = false;
        // `depth <= MAX_QUEUE_DEPTH`, so every index is a cid below 0xFFFF.
        for cid in 0..self.slots.len() as u16 {
            if self.slots[usize::from(cid)].busy {
                self.release_cid(cid);
            }
        }
        tracing::debug!(qid = self.qid, generation = self.generation, "rearmed");
        Ok(())
    }
}

/// A queue's doorbell mappings: the MMIO page and, with shadow doorbells, the shadow
/// doorbell page and the (read-only) event index page.
pub(crate) struct Doorbells {
    mmio: Mapping,
    shadow: Option<(Mapping, Mapping)>,
}

impl Doorbells {
    pub(crate) fn map(shared: &Shared, q: &HomiQpair) -> Result<Self> {
        let fd = shared.fd().as_fd();
        let mmio = Mapping::new(fd, q.doorbell_offset, PAGE, true, "doorbells")?;
        let shadow = if q.flags & HOMI_QPAIR_SHADOW != 0 {
            let sh = Mapping::new(fd, q.shadow_offset, PAGE, true, "shadow doorbells")?;
            let ei = Mapping::new(fd, q.eventidx_offset, PAGE, false, "event indexes")?;
            Some((sh, ei))
        } else {
            None
        };
        Ok(Self { mmio, shadow })
    }

    /// The SQ tail and CQ head doorbells the module's reply `q` describes.
    pub(crate) fn doorbells(&self, shared: &Shared, q: &HomiQpair) -> (Doorbell, Doorbell) {
        let sq_off = q.sq_doorbell as usize;
        let cq_off = sq_off + shared.doorbell_stride;
        // SAFETY: the module places both doorbells inside the doorbell page, and both
        // shadow slots inside each shadow page, at 4-aligned offsets.
        unsafe {
            let (sq, cq) = (self.mmio.ptr().add(sq_off), self.mmio.ptr().add(cq_off));
            match &self.shadow {
                None => (Doorbell::mmio(sq), Doorbell::mmio(cq)),
                Some((sh, ei)) => {
                    let (s, c) = (q.shadow_sq as usize, q.shadow_cq as usize);
                    (
                        Doorbell::shadowed(sq, sh.ptr().add(s), ei.ptr().add(s)),
                        Doorbell::shadowed(cq, sh.ptr().add(c), ei.ptr().add(c)),
                    )
                }
            }
        }
    }
}

pub(crate) fn destroy(shared: &Shared, qid: u16) {
    let req = HomiId { id: u32::from(qid), flags: 0 };
    // SAFETY: the fd is open and `req` is a valid `HomiId`.
    if let Err(e) = unsafe { sys::homi_destroy_qpair(shared.fd().as_raw_fd(), &req) } {
        tracing::warn!(qid, error = %e, "HOMI_IOCTL_DESTROY_QPAIR failed");
    }
}

impl Drop for QueuePair {
    fn drop(&mut self) {
        if let Backing::Kernel { shared, .. } = &self.backing {
            destroy(shared, self.qid);
        }
    }
}
