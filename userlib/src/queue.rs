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

use std::marker::PhantomData;
use std::os::fd::{AsFd, AsRawFd};
use std::sync::atomic::{compiler_fence, AtomicU16, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use homi_uapi::{HomiId, HomiQpair, HOMI_QUEUE_DEAD};

use crate::command::{Command, Sqe, Status};
use crate::controller::Shared;
use crate::mapping::Mapping;
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

/// A reserved NVMe I/O queue pair.
pub struct QueuePair {
    qid: u16,
    depth: u32,
    sq: Mapping,
    cq: Mapping,
    db: Mapping,
    sq_db_offset: usize,
    cq_db_offset: usize,
    sq_tail: u32,
    cq_head: u32,
    phase: bool,
    generation: u64,
    /// Tail written since the last doorbell.
    unrung: bool,
    /// Free command identifiers (a stack).
    free_cids: Vec<u16>,
    /// The caller's token for each command identifier.
    tokens: Vec<u64>,
    /// Whether each command identifier is in flight.
    busy: Vec<bool>,
    shared: Arc<Shared>,
    /// Not `Sync`: the engine's local state has one owner.
    _not_sync: PhantomData<std::cell::Cell<()>>,
}

impl std::fmt::Debug for QueuePair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueuePair")
            .field("qid", &self.qid)
            .field("depth", &self.depth)
            .field("in_flight", &self.in_flight())
            .finish()
    }
}

impl QueuePair {
    pub(crate) fn map(shared: Arc<Shared>, q: HomiQpair) -> Result<Self> {
        let qid = q.qid as u16;
        let maps = (|| {
            let fd = shared.fd().as_fd();
            let sq = Mapping::new(fd, q.sq_offset, q.sq_size as usize, true, "SQ ring")?;
            let cq = Mapping::new(fd, q.cq_offset, q.cq_size as usize, true, "CQ ring")?;
            let db = Mapping::new(fd, q.doorbell_offset, 4096, true, "doorbells")?;
            Ok::<_, Error>((sq, cq, db))
        })();
        let (sq, cq, db) = match maps {
            Ok(m) => m,
            Err(e) => {
                destroy(&shared, qid);
                return Err(e);
            }
        };
        let stride = shared.doorbell_stride;
        Ok(Self {
            qid,
            depth: q.depth,
            sq,
            cq,
            db,
            sq_db_offset: q.sq_doorbell as usize,
            cq_db_offset: q.sq_doorbell as usize + stride,
            sq_tail: 0,
            cq_head: 0,
            phase: true,
            generation: q.generation,
            unrung: false,
            free_cids: (0..q.depth as u16).rev().collect(),
            tokens: vec![0; q.depth as usize],
            busy: vec![false; q.depth as usize],
            shared,
            _not_sync: PhantomData,
        })
    }

    /// The queue ID.
    pub fn qid(&self) -> u16 {
        self.qid
    }

    /// Entries per ring.
    pub fn depth(&self) -> u32 {
        self.depth
    }

    /// Commands submitted and not yet completed.
    pub fn in_flight(&self) -> u32 {
        self.depth - self.free_cids.len() as u32
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
        if self.free_slots() == 0 {
            return Err(Error::QueueFull);
        }
        let cid = self
            .free_cids
            .pop()
            .expect("free_slots > 0 implies a free cid");
        self.tokens[usize::from(cid)] = token;
        self.busy[usize::from(cid)] = true;
        let sqe = cmd.to_sqe(cid);
        // SAFETY: `sq_tail < depth` (invariant), so the slot is inside the SQ mapping;
        // it is ours to fill (module docs). Volatile: the device reads it.
        unsafe {
            std::ptr::write_volatile(self.sq.ptr().cast::<Sqe>().add(self.sq_tail as usize), sqe)
        };
        self.sq_tail += 1;
        if self.sq_tail == self.depth {
            self.sq_tail = 0;
        }
        self.unrung = true;
        Ok(cid)
    }

    /// Publishes every pushed command to the controller with one doorbell write.
    #[inline]
    pub fn ring(&mut self) {
        if !self.unrung {
            return;
        }
        io_wmb();
        // SAFETY: the SQ tail doorbell lies inside the mapped doorbell page (module
        // reply); MMIO needs a volatile 32-bit store.
        unsafe {
            std::ptr::write_volatile(
                self.db.ptr().add(self.sq_db_offset).cast::<u32>(),
                self.sq_tail,
            )
        };
        self.unrung = false;
    }

    /// Reaps every available completion, calling `f` for each, then hands the CQ
    /// entries back with one doorbell write. Returns how many were reaped.
    ///
    /// Fails with [`Error::Reset`] or [`Error::Gone`] when the queue no longer exists
    /// on the controller; its in-flight commands are then lost.
    #[inline]
    pub fn poll(&mut self, mut f: impl FnMut(Completion)) -> Result<usize> {
        let mut n = 0;
        loop {
            // SAFETY: `cq_head < depth` (invariant), so the 16-byte entry is inside the
            // CQ mapping. The status halfword is read atomically: the device writes it.
            let cqe = unsafe { self.cq.ptr().add(16 * self.cq_head as usize) };
            // SAFETY: as above; bytes 14..16 of the entry, 2-aligned.
            let st = unsafe { AtomicU16::from_ptr(cqe.add(14).cast()) }.load(Ordering::Relaxed);
            if (st & 1 == 1) != self.phase {
                break;
            }
            dma_rmb();
            if n == 0 {
                // A revoked ring reads as the dummy page: trust no entry until the
                // status page says this queue still lives (see `HomiStatus`).
                self.shared.check(self.generation)?;
            }
            // SAFETY: inside the entry, as above; the device finished writing it.
            let (dw0, cid) = unsafe {
                (
                    std::ptr::read_volatile(cqe.cast::<u32>()),
                    std::ptr::read_volatile(cqe.add(12).cast::<u16>()),
                )
            };
            let i = usize::from(cid);
            if !self.busy.get(i).copied().unwrap_or(false) {
                return Err(Error::Invalid(
                    "completion for a command identifier not in flight",
                ));
            }
            self.busy[i] = false;
            let token = self.tokens[i];
            self.free_cids.push(cid);
            self.cq_head += 1;
            if self.cq_head == self.depth {
                self.cq_head = 0;
                self.phase = !self.phase;
            }
            n += 1;
            f(Completion {
                token,
                status: Status(st >> 1),
                result: dw0,
            });
        }
        if n > 0 {
            // SAFETY: the CQ head doorbell lies inside the mapped doorbell page.
            unsafe {
                std::ptr::write_volatile(
                    self.db.ptr().add(self.cq_db_offset).cast::<u32>(),
                    self.cq_head,
                )
            };
        }
        Ok(n)
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
                self.shared.check(self.generation)?;
                tracing::warn!(qid = self.qid, cid, "command timed out");
                return Err(Error::Timeout(timeout));
            }
            std::hint::spin_loop();
        }
    }
}

impl QueuePair {
    /// Recreates the queue on the controller after a reset destroyed it: same qid, same
    /// rings (zeroed by the module), a fresh doorbell mapping, and every command that
    /// was in flight forgotten.
    pub fn rearm(&mut self) -> Result<()> {
        if self.shared.queue_state(self.qid) != HOMI_QUEUE_DEAD {
            return Err(Error::Invalid("rearm needs a queue that a reset destroyed"));
        }
        let mut q = HomiQpair {
            qid: u32::from(self.qid),
            ..Default::default()
        };
        // SAFETY: the fd is open and `q` is a valid, writable `HomiQpair`.
        unsafe { sys::homi_rearm_qpair(self.shared.fd().as_raw_fd(), &mut q) }.map_err(
            |e| match e {
                nix::Error::EAGAIN => Error::NotLive,
                nix::Error::ENODEV => Error::Gone,
                source => Error::Ioctl {
                    op: "HOMI_IOCTL_REARM_QPAIR",
                    source,
                },
            },
        )?;
        self.db = Mapping::new(
            self.shared.fd().as_fd(),
            q.doorbell_offset,
            4096,
            true,
            "doorbells",
        )?;
        self.sq_tail = 0;
        self.cq_head = 0;
        self.phase = true;
        self.unrung = false;
        self.generation = q.generation;
        self.free_cids = (0..self.depth as u16).rev().collect();
        self.busy.fill(false);
        tracing::debug!(qid = self.qid, generation = q.generation, "rearmed");
        Ok(())
    }
}

fn destroy(shared: &Shared, qid: u16) {
    let req = HomiId {
        id: u32::from(qid),
        flags: 0,
    };
    // SAFETY: the fd is open and `req` is a valid `HomiId`.
    if let Err(e) = unsafe { sys::homi_destroy_qpair(shared.fd().as_raw_fd(), &req) } {
        tracing::warn!(qid, error = %e, "HOMI_IOCTL_DESTROY_QPAIR failed");
    }
}

impl Drop for QueuePair {
    fn drop(&mut self) {
        destroy(&self.shared, self.qid);
    }
}
