// SPDX-License-Identifier: GPL-2.0

//! The lease behind one file map, and what happens when it breaks.
//!
//! - **Taking.** On XFS, a layout lease (`FL_LAYOUT`) on the mapped file, owned by the
//!   map's [`Lease`]. The lease list keeps a raw pointer to it, so the map holds the
//!   lease until [`Lease::release`] removed it. On ext4, which breaks no layout leases,
//!   writes to the inode are denied instead, as for a running executable: no open for
//!   writing and no truncate succeeds (`ETXTBSY`) until the release.
//! - **Breaking.** The file system's operation calls `lm_break` under the inode's
//!   lease lock, then waits. [`broken`] marks the map [`HOMI_MAP_REVOKED`] in the
//!   holder's map status page and starts the fence's clock; nothing there sleeps.
//! - **Acknowledging.** UNMAP_FILE (or close) releases the lease: the operation goes
//!   on.
//! - **Fencing.** If the holder has not acknowledged after `map_revoke_ms`, the fence
//!   work destroys every queue pair of the holder's file (deleting a queue ends its
//!   commands), marks the map [`HOMI_MAP_FENCED`], and only then releases the lease.
//!
//! C header: [`include/linux/filelock.h`](srctree/include/linux/filelock.h)

use core::ffi::c_void;
use core::ptr::NonNull;
use core::sync::atomic::{
    AtomicBool,
    AtomicU32,
    Ordering, //
};

use kernel::{
    fs::File,
    prelude::*,
    sync::{
        aref::ARef,
        new_mutex,
        Arc,
        ArcBorrow,
        Mutex, //
    },
    time::msecs_to_jiffies,
    workqueue::{
        self,
        impl_has_delayed_work,
        new_delayed_work,
        DelayedWork,
        WorkItem, //
    },
};

use crate::file::FileState;
use crate::glue::NvmeCtrl;
use crate::uapi::*;

/// `struct homi_file_info` of `homi_file_glue.h`.
#[repr(C)]
pub(crate) struct FileInfo {
    pub(crate) why: *const kernel::ffi::c_char,
    pub(crate) bdev: [u8; 32],
    pub(crate) fs: [u8; 16],
    pub(crate) start: u64,
    pub(crate) size: u64,
    pub(crate) nsid: u32,
    pub(crate) lba_shift: u32,
    pub(crate) block_size: u32,
    pub(crate) kind: u32,
}

/// [`FileInfo::kind`]: a layout lease and the export `map_blocks` (XFS).
pub(crate) const FS_LAYOUT: u32 = 1;

// `enum homi_file_kind`.
pub(crate) const FILE_HOLE: u32 = 0;
pub(crate) const FILE_MAPPED: u32 = 1;
pub(crate) const FILE_UNWRITTEN: u32 = 2;
pub(crate) const FILE_DELALLOC: u32 = 3;

/// `struct homi_file_extent`.
#[repr(C)]
#[derive(Default)]
pub(crate) struct RawExtent {
    pub(crate) offset: u64,
    pub(crate) length: u64,
    pub(crate) addr: u64,
    pub(crate) kind: u32,
    pub(crate) shared: u32,
}

// Kernel structs are passed as `c_void` pointers, as in `glue.rs`.
extern "C" {
    fn homi_file_glue_init(broken: unsafe extern "C" fn(owner: *mut c_void));
    fn homi_lease_take(filp: *mut c_void, owner: *mut c_void) -> i32;
    fn homi_lease_drop(filp: *mut c_void, owner: *mut c_void) -> i32;
    fn homi_write_deny(filp: *mut c_void) -> i32;
    fn homi_write_allow(filp: *mut c_void);
    fn homi_file_next_data(filp: *mut c_void, pos: u64) -> i64;
    fn homi_file_describe(ctrl: *mut NvmeCtrl, filp: *mut c_void, info: *mut FileInfo) -> i32;
    fn homi_file_map_blocks(filp: *mut c_void, offset: u64, len: u64, ext: *mut RawExtent) -> i32;
    fn homi_file_bmap(filp: *mut c_void, block: u64, phys: *mut u64) -> i32;
    fn homi_file_flush(filp: *mut c_void, start: u64, end: u64) -> i32;
    fn homi_file_invalidate(filp: *mut c_void, start: u64, end: u64) -> i32;
}

/// Registers [`broken`] with the glue. Called once at module load, before any file
/// can exist.
pub(crate) fn init() {
    // SAFETY: `broken` is valid for as long as the module is loaded, and no lease of
    // this module outlives its files, which hold module references.
    unsafe { homi_file_glue_init(broken) };
}

fn file_ptr(file: &File) -> *mut c_void {
    file.as_ptr().cast()
}

/// What the file is, where it lives, and whether homi can keep its map true.
pub(crate) fn describe(ctrl: NonNull<NvmeCtrl>, file: &File) -> (FileInfo, Result) {
    // SAFETY: all-zero is a valid `FileInfo` (a null `why`, empty names).
    let mut info: FileInfo = unsafe { core::mem::zeroed() };
    // SAFETY: `ctrl` is held by the caller's controller entry and `file` by a
    // reference; the glue fills `info` and reads nothing else of it.
    let err = unsafe { homi_file_describe(ctrl.as_ptr(), file_ptr(file), &mut info) };
    (info, kernel::error::to_result(err))
}

/// One extent of a layout-leased file at `offset`, at most `len` bytes.
pub(crate) fn map_blocks(file: &File, offset: u64, len: u64) -> Result<RawExtent> {
    let mut ext = RawExtent::default();
    // SAFETY: `describe` found the export operations' `map_blocks` on this file's super
    // block, which lives as long as the file; the call takes its own locks.
    kernel::error::to_result(unsafe {
        homi_file_map_blocks(file_ptr(file), offset, len, &mut ext)
    })?;
    Ok(ext)
}

/// The block on the file system's device holding file block `block`; 0 for a hole
/// or an unwritten block.
pub(crate) fn bmap(file: &File, block: u64) -> Result<u64> {
    let mut phys = 0;
    // SAFETY: `describe` found `bmap` in the file's address space operations; `file`
    // is referenced.
    kernel::error::to_result(unsafe { homi_file_bmap(file_ptr(file), block, &mut phys) })?;
    Ok(phys)
}

/// The first byte of data at or after `pos` (SEEK_DATA), or the file's size.
pub(crate) fn next_data(file: &File, pos: u64) -> Result<u64> {
    // SAFETY: `file` is referenced.
    let at = unsafe { homi_file_next_data(file_ptr(file), pos) };
    u64::try_from(at).map_err(|_| Error::from_errno(at as i32))
}

/// Drops `start..end` from the page cache (clean pages only; the rest stay).
pub(crate) fn invalidate(file: &File, start: u64, end: u64) -> Result {
    // SAFETY: `file` is referenced; `start < end`.
    kernel::error::to_result(unsafe { homi_file_invalidate(file_ptr(file), start, end) })
}

/// Writes back the dirty pages of `start..end` and waits.
pub(crate) fn flush(file: &File, start: u64, end: u64) -> Result {
    // SAFETY: `file` is referenced; `start < end`.
    kernel::error::to_result(unsafe { homi_file_flush(file_ptr(file), start, end) })
}

/// How long, in ms, a holder has to acknowledge a revoked map.
pub(crate) fn revoke_ms() -> u32 {
    // 7.3's `value()` returns a copy, 7.2's a reference (`Kbuild` detects which).
    #[cfg(homi_param_by_value)]
    let ms: u32 = crate::module_parameters::map_revoke_ms.value();
    #[cfg(not(homi_param_by_value))]
    let ms: u32 = *crate::module_parameters::map_revoke_ms.value();
    ms.clamp(10, 60_000)
}

fn revoke_jiffies() -> usize {
    msecs_to_jiffies(revoke_ms()) as usize
}

/// The kernel side of one file map.
///
/// # Invariants
///
/// While `held` is true, `file` holds the file, and its inode's lease list holds a
/// lease whose owner is this object (or writes to the inode are denied once); both are
/// undone, and `held` cleared, only by [`Lease::release`].
#[pin_data(PinnedDrop)]
pub(crate) struct Lease {
    #[pin]
    work: DelayedWork<Lease>,
    /// The file that holds the map, whose queues a fence destroys. A closed file has
    /// released every lease, so the fence then finds nothing to do.
    pub(crate) holder: Arc<FileState>,
    /// The mapped file, until the release: a pending fence must not keep it open (the
    /// file system could not be unmounted).
    #[pin]
    file: Mutex<Option<ARef<File>>>,
    pub(crate) id: u32,
    pub(crate) map_slot: u32,
    /// The byte range mapped; for a writable map, what release drops from the cache.
    pub(crate) start: u64,
    pub(crate) end: u64,
    pub(crate) write: bool,
    /// A layout lease (XFS); else writes to the inode are denied (ext4).
    layout: bool,
    /// `HOMI_MAP_LIVE`, `_REVOKED` or `_FENCED`.
    pub(crate) state: AtomicU32,
    held: AtomicBool,
}

impl_has_delayed_work! {
    impl HasDelayedWork<Self> for Lease { self.work }
}

impl WorkItem for Lease {
    type Pointer = Arc<Lease>;

    fn run(this: Arc<Lease>) {
        if this.holder.fence_map(&this) {
            // Queues that may still exist: try again after another bound.
            let _ = workqueue::system_long().enqueue_delayed(this, revoke_jiffies());
        }
    }
}

/// `lm_break`, under the inode's lease lock: marks the map revoked and starts the
/// fence's clock. Once per map: later breaks find it revoked already.
///
/// # Safety
///
/// `owner` is the owner of a lease taken by [`Lease::take`] and not yet released.
unsafe extern "C" fn broken(owner: *mut c_void) {
    // SAFETY: the map keeps its `Lease` alive (its `Arc`) until after `release`
    // removed the lease, and the lease list calls this only while it holds the lease.
    let lease = unsafe { ArcBorrow::<Lease>::from_raw(owner.cast()) };
    if lease
        .state
        .compare_exchange(
            HOMI_MAP_LIVE,
            HOMI_MAP_REVOKED,
            Ordering::AcqRel,
            Ordering::Relaxed,
        )
        .is_err()
    {
        return;
    }
    lease
        .holder
        .map_status
        .set(lease.map_slot, HOMI_MAP_REVOKED);
    let arc: Arc<Lease> = lease.into();
    // Enqueued once: the state left `LIVE` only now.
    let _ = workqueue::system_long().enqueue_delayed(arc, revoke_jiffies());
}

impl Lease {
    pub(crate) fn new(
        holder: Arc<FileState>,
        file: ARef<File>,
        id: u32,
        map_slot: u32,
        range: (u64, u64),
        write: bool,
        layout: bool,
    ) -> Result<Arc<Self>> {
        Arc::pin_init(
            pin_init!(Self {
                work <- new_delayed_work!("homi::Lease::work"),
                holder,
                file <- new_mutex!(Some(file)),
                id,
                map_slot,
                start: range.0,
                end: range.1,
                write,
                layout,
                state: AtomicU32::new(HOMI_MAP_LIVE),
                held: AtomicBool::new(false),
            }),
            GFP_KERNEL,
        )
    }

    /// Takes the layout lease, or denies writes.
    pub(crate) fn take(self: &Arc<Self>) -> Result {
        let owner = Arc::as_ptr(self).cast_mut().cast();
        let guard = self.file.lock();
        let file = guard
            .as_ref()
            .map_or(core::ptr::null_mut(), |f| file_ptr(f));
        if file.is_null() {
            return Err(EINVAL);
        }
        let err = if self.layout {
            // SAFETY: `file` is referenced by `self`, which outlives the lease (type
            // invariant, kept by `release`).
            unsafe { homi_lease_take(file, owner) }
        } else {
            // SAFETY: `file` is referenced; `release` undoes this once.
            unsafe { homi_write_deny(file) }
        };
        kernel::error::to_result(err)?;
        // INVARIANT: the lease is on the list with this owner (or writes are denied).
        self.held.store(true, Ordering::Release);
        Ok(())
    }

    /// Lets the lease go, once: a writable map's range leaves the page cache first, so
    /// that the kernel reads what was written through homi. The caller knows that no
    /// command of the holder on the map is in flight (acknowledged, fenced, or every
    /// queue of the file deleted).
    pub(crate) fn release(&self) {
        if !self.held.swap(false, Ordering::AcqRel) {
            return;
        }
        // Taken once: `held` was true, and `take` set it only with the file present.
        let Some(file) = self.file.lock().take() else {
            return;
        };
        if self.write && self.end > self.start {
            if let Err(err) = invalidate(&file, self.start, self.end) {
                pr_warn!(
                    "unmap_file: map {}: the page cache kept part of the range ({:?})\n",
                    self.id,
                    err
                );
            }
        }
        if !self.layout {
            // SAFETY: `take` denied writes through this file, once (`held` was true).
            unsafe { homi_write_allow(file_ptr(&file)) };
            return;
        }
        let owner = core::ptr::from_ref(self).cast_mut().cast();
        // SAFETY: the lease was taken with this owner on this file and not removed yet
        // (`held` was true); after this call the lease list no longer names `self`.
        let err = unsafe { homi_lease_drop(file_ptr(&file), owner) };
        if err != 0 {
            pr_err!(
                "map {}: the layout lease was not found ({})\n",
                self.id,
                err
            );
        }
    }

    /// Whether the lease has not broken.
    pub(crate) fn is_live(&self) -> bool {
        self.state.load(Ordering::Acquire) == HOMI_MAP_LIVE
    }
}

/// A lease still held when its owner goes would leave the lease list pointing at freed
/// memory: never expected, but released rather than left.
#[pinned_drop]
impl PinnedDrop for Lease {
    fn drop(self: Pin<&mut Self>) {
        if self.held.load(Ordering::Acquire) {
            pr_err!("map {}: lease dropped while held; releasing it\n", self.id);
            self.release();
        }
    }
}

/// The name in a fixed C string field, for log lines.
pub(crate) fn c_name(field: &[u8]) -> &str {
    let n = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    core::str::from_utf8(&field[..n]).unwrap_or("?")
}

/// The reason a glue refusal gave.
pub(crate) fn why(info: &FileInfo) -> &CStr {
    if info.why.is_null() {
        return c"refused";
    }
    // SAFETY: the glue sets `why` to a static NUL-terminated string.
    unsafe { CStr::from_char_ptr(info.why) }
}
