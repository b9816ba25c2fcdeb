//! Queue pairs: create, submit, ring, poll, and what to do after a reset.

use std::ffi::c_int;
use std::os::fd::AsRawFd;

use homi::uapi::{HOMI_CTRL_NOT_LIVE, HOMI_QUEUE_DEAD};
use homi::{Command, Controller, QueuePair};

use crate::buf::HomiBuf;
use crate::ctrl::{HomiCtrl, Namespaces};
use crate::error::{guard, guard_or, Failure, HomiErr};
use crate::{handle, handle_mut, put};

/// A reserved NVMe I/O queue pair. Opaque; every homi_qpair_* call, getters included,
/// and every homi_submit_*, homi_ring and homi_poll on it must come from the thread
/// that owns it: one thread at a time (it may move between threads between calls).
#[derive(Debug)]
pub struct HomiQpair {
    qp: QueuePair,
    /// The controller, for its state; `None` for a queue of the software controller
    /// (unit tests).
    ctrl: Option<Controller>,
    /// The namespaces the submit functions check against, read when the queue was
    /// created and again after the controller generation moves.
    ns: Namespaces,
    max_transfer: u32,
    /// The attachment it was made through (see [`HomiBuf::owner`]).
    owner: i32,
}

/// One completion, as homi_poll() returns it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HomiCpl {
    /// The token given at submission.
    pub token: u64,
    /// Command-specific dword 0 of the completion.
    pub dw0: u32,
    /// 0 for success, else the NVMe status without its flags: Status Code Type << 8 |
    /// Status Code (0x0080: LBA out of range, 0x0281: unrecovered read error, ...).
    pub status: u16,
    /// The command identifier the command had on the queue.
    pub cid: u16,
}

/// One Dataset Management range, in the NVMe layout: what homi_submit_dsm() reads from
/// its buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct HomiDsmRange {
    /// Context attributes (0: none).
    pub cattr: u32,
    /// Length in logical blocks.
    pub nlb: u32,
    /// Starting LBA.
    pub slba: u64,
}

const _: () = assert!(std::mem::size_of::<HomiDsmRange>() == 16 && std::mem::size_of::<HomiCpl>() == 16);

/// The most logical blocks one command moves.
const MAX_BLOCKS: u32 = 65536;
/// The most ranges one Dataset Management command carries.
const MAX_DSM_RANGES: u32 = 256;

impl HomiQpair {
    /// A queue of the software controller (unit tests).
    #[cfg(test)]
    pub(crate) fn soft(qp: QueuePair, ns: Namespaces, max_transfer: u32) -> Self {
        Self { qp, ctrl: None, ns, max_transfer, owner: -1 }
    }

    /// The namespace table, read again from INFO when the controller generation moved
    /// since it was read: a reset (and the rearm it needs) may come with a reformat, a
    /// new LBA size or new namespaces. One load from the status page per call; the
    /// ioctl only after a generation change. A namespace reformatted without a reset
    /// is seen by queues created after it, and by older ones after their next reset.
    fn namespaces(&mut self) -> Result<&Namespaces, Failure> {
        if let Some(c) = &self.ctrl {
            let generation = c.generation();
            if generation != self.ns.generation {
                let info = c.info()?;
                self.ns = Namespaces::from_info(&info, generation);
            }
        }
        Ok(&self.ns)
    }

    /// Checks a data command's arguments and pushes it.
    #[allow(clippy::too_many_arguments)]
    fn push_io(
        &mut self,
        cmd: fn(u32, u64, u32) -> Command,
        nsid: u32,
        slba: u64,
        nblocks: u32,
        b: &HomiBuf,
        buf_off: usize,
        len: usize,
        token: u64,
    ) -> Result<c_int, Failure> {
        if !(1..=MAX_BLOCKS).contains(&nblocks) {
            return Err(Failure::invalid(format!("nblocks {nblocks} outside 1..=65536")));
        }
        let shift = self.namespaces()?.data_shift(nsid)?;
        // `data_shift` bounds the shift to 16, so this cannot overflow; checked anyway.
        let want = u64::from(nblocks).checked_shl(shift).filter(|w| w >> shift == u64::from(nblocks));
        if want != Some(len as u64) {
            return Err(Failure::invalid(format!(
                "len {len} is not nblocks {nblocks} times the LBA size {} of nsid {nsid}",
                1u64 << shift
            )));
        }
        self.check_range(b, buf_off, len)?;
        self.qp.push_io(cmd(nsid, slba, nblocks), &b.buf, buf_off, len, token)?;
        Ok(0)
    }

    fn check_range(&self, b: &HomiBuf, buf_off: usize, len: usize) -> Result<(), Failure> {
        if b.owner != self.owner {
            return Err(Failure::invalid("the buffer was made through another controller handle than the queue"));
        }
        if len == 0 || len > self.max_transfer as usize {
            return Err(Failure::invalid(format!("len {len} outside 1..={} (max transfer)", self.max_transfer)));
        }
        if buf_off.checked_add(len).is_none_or(|end| end > b.buf.len()) {
            return Err(Failure::invalid(format!(
                "buf_off {buf_off} + len {len} beyond the buffer's {} bytes",
                b.buf.len()
            )));
        }
        if buf_off % 4 != 0 {
            return Err(Failure::invalid(format!("buf_off {buf_off} is not a multiple of 4")));
        }
        Ok(())
    }

    /// Fails if the queue no longer exists on its controller or the controller is not
    /// live.
    fn check(&self) -> Result<(), Failure> {
        self.qp.check()?;
        if self.qp.queue_state() == Some(HOMI_QUEUE_DEAD) {
            return Err(Failure::new(HomiErr::HOMI_E_RESET, "a controller reset destroyed the queue"));
        }
        if self.ctrl.as_ref().is_some_and(|c| c.state() == HOMI_CTRL_NOT_LIVE) {
            return Err(Failure::new(HomiErr::HOMI_E_NOT_LIVE, "the controller is not live (resetting?)"));
        }
        Ok(())
    }
}

/// Reserves a spare qid of the controller and creates a queue pair of `depth` entries
/// (2..=max_queue_entries of homi_ctrl_info(), and at most 65535; at most depth - 1
/// commands are in flight at once). Stores it in `*out` (NULL on failure).
/// HOMI_E_NO_SPARE_QUEUES when every qid is taken, HOMI_E_SHADOW_DOORBELLS on a
/// controller whose shadow doorbells a stock kernel keeps private. The thread that
/// creates the queue owns it; it may hand it to another between calls. Also reads the
/// namespace table the submit functions check against (an ioctl).
///
/// # Safety
///
/// `c` must be NULL or a live controller handle; `out` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn homi_qpair_create(c: *const HomiCtrl, depth: u32, out: *mut *mut HomiQpair) -> c_int {
    guard("homi_qpair_create", || {
        // SAFETY: NULL or writable (caller).
        unsafe { put(out, "out", std::ptr::null_mut())? };
        // SAFETY: NULL or a live handle (caller).
        let c = unsafe { handle(c, "c")? };
        if depth < 2 || depth > c.max_depth {
            return Err(Failure::invalid(format!("depth {depth} outside 2..={}", c.max_depth)));
        }
        let qp = c.ctrl.create_qpair(depth)?;
        // The namespaces as they are now (a reformat since homi_ctrl_open() shows here).
        // Where INFO fails, the first submission reads it instead.
        let generation = c.ctrl.generation();
        let ns = match c.ctrl.info() {
            Ok(info) => Namespaces::from_info(&info, generation),
            Err(_) => Namespaces::stale(),
        };
        let q = HomiQpair {
            qp,
            ctrl: Some(c.ctrl.clone()),
            ns,
            max_transfer: c.max_transfer,
            owner: c.ctrl.homi_fd().as_raw_fd(),
        };
        // SAFETY: checked writable above.
        unsafe { put(out, "out", Box::into_raw(Box::new(q)))? };
        Ok(0)
    })
}

/// Deletes the queue pair from the controller and releases its qid. Commands still in
/// flight are abandoned: the controller aborts them with the queue, their completions
/// are never returned, and the buffers they held are released. NULL is ignored.
///
/// # Safety
///
/// `q` must be NULL or a live queue pair, not used afterwards.
#[no_mangle]
pub unsafe extern "C" fn homi_qpair_destroy(q: *mut HomiQpair) {
    guard_or("homi_qpair_destroy", (), || {
        if !q.is_null() {
            // SAFETY: a queue pair from `homi_qpair_create`, released once (caller).
            drop(unsafe { Box::from_raw(q) });
        }
    })
}

/// The queue ID; 0 for NULL. Like every homi_qpair_* call, from the owning thread only.
///
/// # Safety
///
/// `q` must be NULL or a live queue pair, used by no other thread during the call (the
/// owning thread's).
#[no_mangle]
pub unsafe extern "C" fn homi_qpair_qid(q: *const HomiQpair) -> u16 {
    // SAFETY: NULL or a live queue pair (caller).
    guard_or("homi_qpair_qid", 0, || unsafe { q.as_ref() }.map_or(0, |q| q.qp.qid()))
}

/// Entries per ring; 0 for NULL. From the owning thread only.
///
/// # Safety
///
/// `q` must be NULL or a live queue pair, used by no other thread during the call (the
/// owning thread's).
#[no_mangle]
pub unsafe extern "C" fn homi_qpair_depth(q: *const HomiQpair) -> u32 {
    // SAFETY: NULL or a live queue pair (caller).
    guard_or("homi_qpair_depth", 0, || unsafe { q.as_ref() }.map_or(0, |q| q.qp.depth()))
}

/// Commands that can be submitted before HOMI_E_QUEUE_FULL (depth - 1 - in flight);
/// 0 for NULL. From the owning thread only: it reads state that submit and poll change.
///
/// # Safety
///
/// `q` must be NULL or a live queue pair, used by no other thread during the call (the
/// owning thread's).
#[no_mangle]
pub unsafe extern "C" fn homi_qpair_free_slots(q: *const HomiQpair) -> u32 {
    // SAFETY: NULL or a live queue pair (caller).
    guard_or("homi_qpair_free_slots", 0, || unsafe { q.as_ref() }.map_or(0, |q| q.qp.free_slots()))
}

/// Commands submitted (pushed) and not yet returned by homi_poll(); 0 for NULL. From
/// the owning thread only: it reads state that submit and poll change.
///
/// # Safety
///
/// `q` must be NULL or a live queue pair, used by no other thread during the call (the
/// owning thread's).
#[no_mangle]
pub unsafe extern "C" fn homi_qpair_in_flight(q: *const HomiQpair) -> u32 {
    // SAFETY: NULL or a live queue pair (caller).
    guard_or("homi_qpair_in_flight", 0, || unsafe { q.as_ref() }.map_or(0, |q| q.qp.in_flight()))
}

/// The largest `len` in bytes one read or write may move on this queue: the
/// controller's limit (MDTS), at most 2 MiB. 0 for NULL. From the owning thread only.
///
/// # Safety
///
/// `q` must be NULL or a live queue pair, used by no other thread during the call (the
/// owning thread's).
#[no_mangle]
pub unsafe extern "C" fn homi_qpair_max_transfer(q: *const HomiQpair) -> u32 {
    // SAFETY: NULL or a live queue pair (caller).
    guard_or("homi_qpair_max_transfer", 0, || unsafe { q.as_ref() }.map_or(0, |q| q.max_transfer))
}

/// Whether the queue still exists, from a shared status page without a syscall: 0 when
/// live, HOMI_E_RESET when a controller reset destroyed it (in-flight commands are
/// lost: homi_qpair_rearm() it or destroy it), HOMI_E_GONE when the controller left
/// its driver, HOMI_E_NOT_LIVE while the controller is resetting. From the owning
/// thread only.
///
/// # Safety
///
/// `q` must be NULL or a live queue pair, used by no other thread during the call (the
/// owning thread's).
#[no_mangle]
pub unsafe extern "C" fn homi_qpair_check(q: *const HomiQpair) -> c_int {
    guard("homi_qpair_check", || {
        // SAFETY: NULL or a live queue pair (caller).
        unsafe { handle(q, "q")? }.check()?;
        Ok(0)
    })
}

/// Recreates the queue after a reset destroyed it: same qid and depth, empty rings,
/// and every command that was in flight forgotten (the buffers they held are
/// released). HOMI_E_NOT_LIVE while the controller is still resetting: try again;
/// HOMI_E_INVALID if the queue was not destroyed. The next submission reads the
/// namespace table again (the reset may have come with a reformat).
///
/// # Safety
///
/// `q` must be NULL or a live queue pair that no other thread uses.
#[no_mangle]
pub unsafe extern "C" fn homi_qpair_rearm(q: *mut HomiQpair) -> c_int {
    guard("homi_qpair_rearm", || {
        // SAFETY: NULL or a live, unshared queue pair (caller).
        unsafe { handle_mut(q, "q")? }.qp.rearm()?;
        Ok(0)
    })
}

/// Writes a Read of `nblocks` blocks at `slba` of namespace `nsid` into the submission
/// queue, into `len` bytes at `buf_off` of `b`. `len` must be `nblocks` times the
/// namespace's LBA size, at most homi_qpair_max_transfer(), inside the buffer;
/// `buf_off` a multiple of 4. HOMI_E_INVALID for a namespace whose LBA size the library
/// cannot check (one beyond the 16 homi_ns_info() knows) and for a namespace with
/// metadata (meta_size != 0: not supported). The command is not yet visible to the
/// controller: homi_ring() publishes it. `token` comes back in its completion. The
/// queue keeps `b` alive until it completes (the handle is `const`: the call does not
/// change it, though the controller writes the bytes). HOMI_E_QUEUE_FULL when no slot
/// is free.
///
/// # Safety
///
/// `q` must be NULL or a live queue pair no other thread uses; `b` NULL or a live
/// buffer made through the same controller handle.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn homi_submit_read(
    q: *mut HomiQpair,
    nsid: u32,
    slba: u64,
    nblocks: u32,
    b: *const HomiBuf,
    buf_off: usize,
    len: usize,
    token: u64,
) -> c_int {
    guard("homi_submit_read", || {
        // SAFETY: NULL or live; the queue unshared (caller).
        let (q, b) = unsafe { (handle_mut(q, "q")?, handle(b, "b")?) };
        q.push_io(Command::read, nsid, slba, nblocks, b, buf_off, len, token)
    })
}

/// As homi_submit_read(), for a Write from the buffer.
///
/// # Safety
///
/// As for homi_submit_read().
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn homi_submit_write(
    q: *mut HomiQpair,
    nsid: u32,
    slba: u64,
    nblocks: u32,
    b: *const HomiBuf,
    buf_off: usize,
    len: usize,
    token: u64,
) -> c_int {
    guard("homi_submit_write", || {
        // SAFETY: NULL or live; the queue unshared (caller).
        let (q, b) = unsafe { (handle_mut(q, "q")?, handle(b, "b")?) };
        q.push_io(Command::write, nsid, slba, nblocks, b, buf_off, len, token)
    })
}

/// Writes a Flush of namespace `nsid` (0xffffffff: every namespace, where the
/// controller allows it) into the submission queue.
///
/// # Safety
///
/// `q` must be NULL or a live queue pair no other thread uses.
#[no_mangle]
pub unsafe extern "C" fn homi_submit_flush(q: *mut HomiQpair, nsid: u32, token: u64) -> c_int {
    guard("homi_submit_flush", || {
        // SAFETY: NULL or a live, unshared queue pair (caller).
        let q = unsafe { handle_mut(q, "q")? };
        if nsid != u32::MAX {
            q.namespaces()?.check_nsid(nsid)?;
        }
        // SAFETY: a flush names no memory.
        unsafe { q.qp.push(&Command::flush(nsid), token)? };
        Ok(0)
    })
}

/// Writes a Write Zeroes of `nblocks` (1..=65536) blocks at `slba` into the submission
/// queue; it moves no data.
///
/// # Safety
///
/// `q` must be NULL or a live queue pair no other thread uses.
#[no_mangle]
pub unsafe extern "C" fn homi_submit_write_zeroes(
    q: *mut HomiQpair,
    nsid: u32,
    slba: u64,
    nblocks: u32,
    token: u64,
) -> c_int {
    guard("homi_submit_write_zeroes", || {
        // SAFETY: NULL or a live, unshared queue pair (caller).
        let q = unsafe { handle_mut(q, "q")? };
        if !(1..=MAX_BLOCKS).contains(&nblocks) {
            return Err(Failure::invalid(format!("nblocks {nblocks} outside 1..=65536")));
        }
        q.namespaces()?.check_nsid(nsid)?;
        // SAFETY: Write Zeroes names no memory.
        unsafe { q.qp.push(&Command::write_zeroes(nsid, slba, nblocks), token)? };
        Ok(0)
    })
}

/// Writes a Dataset Management (deallocate) command into the submission queue: its
/// `nr_ranges` (1..=256) struct homi_dsm_range entries are read from `ranges` at
/// `buf_off`, where the caller wrote them. The queue keeps `ranges` alive until the
/// command completes.
///
/// # Safety
///
/// `q` must be NULL or a live queue pair no other thread uses; `ranges` NULL or a live
/// buffer made through the same controller handle.
#[no_mangle]
pub unsafe extern "C" fn homi_submit_dsm(
    q: *mut HomiQpair,
    nsid: u32,
    ranges: *const HomiBuf,
    buf_off: usize,
    nr_ranges: u32,
    token: u64,
) -> c_int {
    guard("homi_submit_dsm", || {
        // SAFETY: NULL or live; the queue unshared (caller).
        let (q, b) = unsafe { (handle_mut(q, "q")?, handle(ranges, "ranges")?) };
        if !(1..=MAX_DSM_RANGES).contains(&nr_ranges) {
            return Err(Failure::invalid(format!("nr_ranges {nr_ranges} outside 1..=256")));
        }
        q.namespaces()?.check_nsid(nsid)?;
        let len = nr_ranges as usize * std::mem::size_of::<HomiDsmRange>();
        q.check_range(b, buf_off, len)?;
        q.qp.push_io(Command::deallocate(nsid, nr_ranges), &b.buf, buf_off, len, token)?;
        Ok(0)
    })
}

/// Publishes every command written since the last ring with one doorbell write. NULL
/// is ignored.
///
/// # Safety
///
/// `q` must be NULL or a live queue pair no other thread uses.
#[no_mangle]
pub unsafe extern "C" fn homi_ring(q: *mut HomiQpair) {
    guard_or("homi_ring", (), || {
        // SAFETY: NULL or a live, unshared queue pair (caller).
        if let Some(q) = unsafe { q.as_mut() } {
            q.qp.ring();
        }
    })
}

/// Reaps up to `max` completions into `cpls` and hands their entries back to the
/// controller with one doorbell write; completions beyond `max` stay in the
/// completion queue for the next call. Returns how many were reaped (0: none ready).
/// Returns HOMI_E_RESET (or HOMI_E_GONE) once the queue no longer exists: its
/// in-flight commands are lost, their completions will never come; call
/// homi_qpair_rearm() or homi_qpair_destroy(). Returns HOMI_E_INVALID when the next
/// completion names a command that is not in flight (a controller bug): completions
/// before it are returned first (a count), the error on the following call, and every
/// call after (the queue cannot go on: destroy it). `cpls` may be NULL when `max` is 0.
///
/// # Safety
///
/// `q` must be NULL or a live queue pair no other thread uses; `cpls` NULL or valid
/// for writing `max` entries.
#[no_mangle]
pub unsafe extern "C" fn homi_poll(q: *mut HomiQpair, cpls: *mut HomiCpl, max: u32) -> c_int {
    guard("homi_poll", || {
        // SAFETY: NULL or a live, unshared queue pair (caller).
        let q = unsafe { handle_mut(q, "q")? };
        let max = max.min(i32::MAX as u32) as usize;
        if max == 0 {
            return Ok(0);
        }
        if cpls.is_null() {
            return Err(Failure::null("cpls"));
        }
        let mut i = 0;
        let n = q.qp.poll_at_most(max, |c| {
            debug_assert!(i < max);
            let cpl = HomiCpl { token: c.token, dw0: c.result, status: c.status.code_only().0, cid: c.cid };
            // SAFETY: `i < max` (poll_at_most's bound) and `cpls` has room for `max`
            // entries (caller).
            unsafe { cpls.add(i).write(cpl) };
            i += 1;
        })?;
        if n == 0 && q.qp.in_flight() > 0 {
            // A destroyed queue's ring reads empty: say so instead of leaving the caller
            // to wait for completions that cannot come. Two loads from the status page.
            q.qp.check()?;
        }
        Ok(n as c_int)
    })
}

#[cfg(test)]
mod tests {
    use std::ffi::CStr;
    use std::sync::Arc;

    use homi::DmaBuffer;
    use homi_instruments::{SoftConfig, SoftController};

    use super::*;
    use crate::error::homi_last_error;

    const OK: c_int = 0;
    const INVALID: c_int = HomiErr::HOMI_E_INVALID as c_int;
    const NULL: c_int = HomiErr::HOMI_E_NULL_ARG as c_int;

    struct Rig {
        ctrl: SoftController,
        q: *mut HomiQpair,
    }

    impl Rig {
        fn new(depth: u32) -> Self {
            Self::with(depth, Namespaces::of(&[(1, 9, 0)]))
        }

        fn with(depth: u32, ns: Namespaces) -> Self {
            let ctrl = SoftController::new_inline(SoftConfig::default());
            let qp = ctrl.create_qpair(depth).unwrap();
            let q = HomiQpair::soft(qp, ns, 512 * 1024);
            Self { ctrl, q: Box::into_raw(Box::new(q)) }
        }

        fn buf(&self, size: usize) -> *mut HomiBuf {
            Box::into_raw(Box::new(HomiBuf { buf: Arc::new(DmaBuffer::host(size)), owner: -1 }))
        }

        /// Rings, lets the controller run, and polls everything.
        fn complete(&self) -> Vec<HomiCpl> {
            // SAFETY: the rig's live queue, used by this thread only.
            unsafe { homi_ring(self.q) };
            self.ctrl.serve();
            let mut out = vec![HomiCpl::default(); 64];
            // SAFETY: as above; `out` has room for 64.
            let n = unsafe { homi_poll(self.q, out.as_mut_ptr(), 64) };
            assert!(n >= 0, "poll: {n}");
            out.truncate(n as usize);
            out
        }
    }

    impl Drop for Rig {
        fn drop(&mut self) {
            // SAFETY: the rig's queue, released once.
            unsafe { homi_qpair_destroy(self.q) };
        }
    }

    fn bytes(b: *mut HomiBuf) -> &'static mut [u8] {
        // SAFETY: a live host buffer the test owns; no command uses it while the slice
        // is in use.
        unsafe { std::slice::from_raw_parts_mut(homi_buf_ptr_of(b), (*b).buf.len()) }
    }

    fn homi_buf_ptr_of(b: *mut HomiBuf) -> *mut u8 {
        // SAFETY: a live buffer.
        unsafe { crate::buf::homi_buf_ptr(b) }.cast()
    }

    fn last() -> String {
        // SAFETY: the library's NUL-terminated message.
        unsafe { CStr::from_ptr(homi_last_error()) }.to_string_lossy().into_owned()
    }

    #[test]
    fn write_read_back_through_a_prp_list() {
        let r = Rig::new(16);
        let (out, back) = (r.buf(65536), r.buf(65536));
        for (i, x) in bytes(out).iter_mut().enumerate() {
            *x = (i * 7 + i / 4096) as u8;
        }
        // SAFETY: live objects of this thread.
        unsafe {
            assert_eq!(homi_submit_write(r.q, 1, 100, 128, out, 0, 65536, 7), OK);
            // Freed while in flight: the queue keeps it.
            crate::buf::homi_buf_free(out);
        }
        let c = r.complete();
        assert_eq!((c.len(), c[0].token, c[0].status, c[0].dw0), (1, 7, 0, 0));
        assert!(u32::from(c[0].cid) < 16);
        // SAFETY: as above.
        assert_eq!(unsafe { homi_submit_read(r.q, 1, 100, 128, back, 0, 65536, 8) }, OK);
        let c = r.complete();
        assert_eq!((c.len(), c[0].token, c[0].status), (1, 8, 0));
        assert!(bytes(back).iter().enumerate().all(|(i, &x)| x == (i * 7 + i / 4096) as u8));
        // SAFETY: released once.
        unsafe { crate::buf::homi_buf_free(back) };
    }

    #[test]
    fn polling_fewer_than_ready_loses_nothing() {
        let r = Rig::new(32);
        for t in 0..9 {
            // SAFETY: the rig's queue.
            assert_eq!(unsafe { homi_submit_flush(r.q, 1, 1000 + t) }, OK);
        }
        // SAFETY: as above.
        unsafe { homi_ring(r.q) };
        r.ctrl.serve();
        let mut got = Vec::new();
        let mut cpls = [HomiCpl::default(); 4];
        loop {
            // SAFETY: room for 4; the 5th entry would be out of bounds.
            let n = unsafe { homi_poll(r.q, cpls.as_mut_ptr(), 4) };
            assert!((0..=4).contains(&n), "{n}");
            if n == 0 {
                break;
            }
            got.extend(cpls[..n as usize].iter().map(|c| c.token));
        }
        assert_eq!(got, (1000..1009).collect::<Vec<_>>());
        // SAFETY: as above.
        assert_eq!(unsafe { homi_qpair_in_flight(r.q) }, 0);
    }

    /// A refused call: what it is, the code it must return, and the call.
    type Case<'a> = (&'a str, c_int, Box<dyn Fn() -> c_int + 'a>);

    #[test]
    fn bad_arguments_are_refused_before_the_queue() {
        let r = Rig::new(4);
        let b = r.buf(8192);
        // Larger than the transfer refused for its size: only the max-transfer check
        // can refuse it.
        let big = r.buf(2 << 20);
        let null_q = std::ptr::null_mut();
        // SAFETY: every case passes live objects of this thread or NULL.
        let cases: Vec<Case> = unsafe {
            vec![
                ("NULL queue", NULL, Box::new(move || homi_submit_read(null_q, 1, 0, 1, b, 0, 512, 0))),
                ("NULL buffer", NULL, Box::new(|| homi_submit_write(r.q, 1, 0, 1, std::ptr::null_mut(), 0, 512, 0))),
                ("len != nblocks * 512", INVALID, Box::new(|| homi_submit_read(r.q, 1, 0, 1, b, 0, 4096, 0))),
                ("beyond the buffer", INVALID, Box::new(|| homi_submit_read(r.q, 1, 0, 8, b, 8192 - 2048, 4096, 0))),
                ("offset overflows", INVALID, Box::new(|| homi_submit_read(r.q, 1, 0, 8, b, usize::MAX - 10, 4096, 0))),
                ("unaligned offset", INVALID, Box::new(|| homi_submit_read(r.q, 1, 0, 1, b, 2, 512, 0))),
                ("nblocks 0", INVALID, Box::new(|| homi_submit_read(r.q, 1, 0, 0, b, 0, 0, 0))),
                ("nblocks 65537", INVALID, Box::new(|| homi_submit_write_zeroes(r.q, 1, 0, 65537, 0))),
                ("over max transfer", INVALID, Box::new(|| homi_submit_read(r.q, 1, 0, 2048, big, 0, 1 << 20, 0))),
                ("no such nsid", INVALID, Box::new(|| homi_submit_read(r.q, 2, 0, 1, b, 0, 512, 0))),
                ("no such nsid (flush)", INVALID, Box::new(|| homi_submit_flush(r.q, 5, 0))),
                ("0 ranges", INVALID, Box::new(|| homi_submit_dsm(r.q, 1, b, 0, 0, 0))),
                ("257 ranges", INVALID, Box::new(|| homi_submit_dsm(r.q, 1, b, 0, 257, 0))),
                ("ranges beyond the buffer", INVALID, Box::new(|| homi_submit_dsm(r.q, 1, b, 8192 - 16, 2, 0))),
                ("NULL ranges", NULL, Box::new(|| homi_submit_dsm(r.q, 1, std::ptr::null_mut(), 0, 1, 0))),
                ("NULL cpls", NULL, Box::new(|| homi_poll(r.q, std::ptr::null_mut(), 1))),
                ("NULL poll queue", NULL, Box::new(move || homi_poll(null_q, std::ptr::null_mut(), 0))),
                ("NULL check", NULL, Box::new(|| homi_qpair_check(std::ptr::null()))),
                ("NULL rearm", NULL, Box::new(|| homi_qpair_rearm(std::ptr::null_mut()))),
            ]
        };
        for (what, want, f) in cases {
            assert_eq!(f(), want, "{what}: {}", last());
            assert!(last().starts_with("homi_"), "{what}: message {:?}", last());
        }
        // SAFETY: the rig's queue.
        unsafe {
            assert_eq!(homi_qpair_in_flight(r.q), 0, "nothing refused reached the queue");
            assert_eq!(homi_poll(r.q, std::ptr::null_mut(), 0), 0);
            // A buffer of another controller handle.
            let other = Box::into_raw(Box::new(HomiBuf { buf: Arc::new(DmaBuffer::host(4096)), owner: 3 }));
            assert_eq!(homi_submit_write(r.q, 1, 0, 1, other, 0, 512, 0), INVALID);
            assert!(last().contains("another controller handle"), "{}", last());
            crate::buf::homi_buf_free(other);
            assert_eq!(homi_submit_read(r.q, 1, 0, 2048, big, 0, 1 << 20, 0), INVALID);
            assert!(last().contains("max transfer"), "{}", last());
            assert_eq!(homi_submit_read(r.q, 1, 0, 1024, big, 0, 512 * 1024, 0), OK, "the largest transfer fits");
            crate::buf::homi_buf_free(b);
            crate::buf::homi_buf_free(big);
        }
    }

    #[test]
    fn namespaces_whose_lengths_cannot_be_checked_refuse_reads_and_writes() {
        // nsid 2 has 8 bytes of metadata per block, nsid 3 an absurd LBA shift, and the
        // controller has more namespaces than listed (nsid 40 is one of them).
        let r = Rig::with(8, Namespaces::of(&[(1, 9, 0), (2, 9, 8), (3, 64, 0)]).incomplete());
        let b = r.buf(8192);
        // SAFETY: the rig's queue and a live buffer.
        unsafe {
            assert_eq!(homi_submit_write(r.q, 2, 0, 1, b, 0, 512, 0), INVALID);
            assert!(last().contains("metadata"), "{}", last());
            assert_eq!(homi_submit_read(r.q, 2, 0, 1, b, 0, 512, 0), INVALID);
            assert_eq!(homi_submit_read(r.q, 3, 0, 1, b, 0, 512, 0), INVALID);
            assert!(last().contains("LBA shift 64"), "{}", last());
            assert_eq!(homi_submit_read(r.q, 40, 0, 1, b, 0, 512, 0), INVALID);
            assert!(last().contains("cannot be checked"), "{}", last());
            assert_eq!(homi_submit_write(r.q, 40, 0, 1, b, 0, 512, 0), INVALID);
            assert_eq!(homi_qpair_in_flight(r.q), 0, "nothing refused reached the queue");
            // Commands that move no blocks of data by LBA size still go.
            assert_eq!(homi_submit_flush(r.q, 2, 1), OK);
            assert_eq!(homi_submit_write_zeroes(r.q, 40, 0, 1, 2), OK);
            crate::buf::homi_buf_free(b);
        }
    }

    #[test]
    fn an_unknown_cid_comes_after_the_completions_before_it() {
        let r = Rig::new(16);
        // SAFETY: the rig's queue.
        unsafe {
            assert_eq!(homi_submit_flush(r.q, 1, 1), OK);
            assert_eq!(homi_submit_flush(r.q, 1, 2), OK);
            homi_ring(r.q);
        }
        r.ctrl.serve();
        r.ctrl.inject(homi_instruments::Fault::Cid { cid: 12, count: 1 });
        // SAFETY: as above.
        unsafe {
            assert_eq!(homi_submit_flush(r.q, 1, 3), OK);
            homi_ring(r.q);
        }
        r.ctrl.serve();
        let mut c = [HomiCpl::default(); 8];
        // SAFETY: the rig's queue; room for 8.
        unsafe {
            assert_eq!(homi_poll(r.q, c.as_mut_ptr(), 8), 2, "{}", last());
            assert_eq!((c[0].token, c[1].token), (1, 2));
            for _ in 0..2 {
                assert_eq!(homi_poll(r.q, c.as_mut_ptr(), 8), INVALID);
                assert!(last().contains("not in flight"), "{}", last());
            }
            assert_eq!(homi_qpair_in_flight(r.q), 1);
        }
    }

    #[test]
    fn a_full_queue_says_so_and_recovers() {
        let r = Rig::new(4);
        // SAFETY: the rig's queue.
        unsafe {
            assert_eq!(homi_qpair_free_slots(r.q), 3);
            for t in 0..3 {
                assert_eq!(homi_submit_write_zeroes(r.q, 1, t, 1, t), OK);
            }
            assert_eq!(homi_submit_flush(r.q, 1, 9), HomiErr::HOMI_E_QUEUE_FULL as c_int);
        }
        assert_eq!(r.complete().len(), 3);
        // SAFETY: as above.
        assert_eq!(unsafe { homi_submit_flush(r.q, 1, 9) }, OK);
        assert_eq!(r.complete().len(), 1);
    }

    #[test]
    fn zeroes_and_deallocate_complete() {
        let r = Rig::new(8);
        let b = r.buf(4096);
        bytes(b).fill(0xa5);
        let ranges = r.buf(4096);
        let range = HomiDsmRange { cattr: 0, nlb: 8, slba: 16 };
        // SAFETY: a live host buffer of 4096 bytes; the range fits at offset 0.
        unsafe { homi_buf_ptr_of(ranges).cast::<HomiDsmRange>().write(range) };
        // SAFETY: the rig's queue and live buffers.
        unsafe {
            assert_eq!(homi_submit_write(r.q, 1, 16, 8, b, 0, 4096, 1), OK);
            assert_eq!(r.complete().len(), 1);
            assert_eq!(homi_submit_write_zeroes(r.q, 1, 16, 8, 2), OK);
            assert_eq!(homi_submit_dsm(r.q, 1, ranges, 0, 1, 3), OK);
            let c = r.complete();
            assert_eq!(c.iter().map(|c| (c.token, c.status)).collect::<Vec<_>>(), vec![(2, 0), (3, 0)]);
            assert_eq!(homi_submit_read(r.q, 1, 16, 8, b, 0, 4096, 4), OK);
            assert_eq!(r.complete().len(), 1);
            assert!(bytes(b).iter().all(|&x| x == 0));
            crate::buf::homi_buf_free(b);
            crate::buf::homi_buf_free(ranges);
        }
    }

    #[test]
    fn error_statuses_come_back_in_the_completion() {
        let r = Rig::new(8);
        let b = r.buf(4096);
        // SAFETY: the rig's queue and a live buffer; the LBA is beyond the namespace.
        unsafe { assert_eq!(homi_submit_read(r.q, 1, 1 << 40, 8, b, 0, 4096, 5), OK) };
        let c = r.complete();
        assert_eq!((c[0].token, c[0].status), (5, homi::Status::LBA_OUT_OF_RANGE.0));
        // SAFETY: released once.
        unsafe { crate::buf::homi_buf_free(b) };
    }

    #[test]
    fn a_reset_is_reported_by_poll_and_check_and_rearm_recovers() {
        let r = Rig::new(8);
        // SAFETY: the rig's queue.
        unsafe {
            assert_eq!(homi_qpair_check(r.q), OK);
            assert_eq!(homi_submit_flush(r.q, 1, 1), OK);
            homi_ring(r.q);
        }
        r.ctrl.reset();
        let mut c = [HomiCpl::default(); 2];
        // SAFETY: as above; room for 2.
        unsafe {
            assert_eq!(homi_poll(r.q, c.as_mut_ptr(), 2), HomiErr::HOMI_E_RESET as c_int, "{}", last());
            assert_eq!(homi_qpair_check(r.q), HomiErr::HOMI_E_RESET as c_int);
            assert_eq!(homi_qpair_rearm(r.q), OK, "{}", last());
            assert_eq!(homi_qpair_check(r.q), OK);
            assert_eq!(homi_qpair_in_flight(r.q), 0, "the lost command is forgotten");
            assert_eq!(homi_submit_flush(r.q, 1, 2), OK);
        }
        assert_eq!(r.complete().iter().map(|c| c.token).collect::<Vec<_>>(), vec![2]);
    }
}
