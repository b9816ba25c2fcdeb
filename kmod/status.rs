// SPDX-License-Identifier: GPL-2.0

//! Pages that belong to one open file rather than to an object: the status page
//! ([`HomiStatus`]) that user space reads without a syscall, and the sink page that
//! revoked mappings of the file fault in.
//!
//! C header: [`include/linux/gfp.h`](srctree/include/linux/gfp.h)

use core::ffi::c_void;
use core::ptr::NonNull;
use core::sync::atomic::{
    AtomicU32,
    AtomicU64,
    Ordering, //
};

use kernel::prelude::*;

use crate::glue;
use crate::uapi::*;

/// One zeroed kernel page, freed on drop.
///
/// # Invariants
///
/// `addr` is a page from `homi_page_alloc`, owned by `self`. User mappings of it are
/// all gone before it is dropped: they belong to VMAs of the file that owns it, and
/// the file outlives its VMAs.
pub(crate) struct KernelPage {
    addr: NonNull<c_void>,
}

// SAFETY: plain memory; shared access goes through atomics or the owner's lock.
unsafe impl Send for KernelPage {}
// SAFETY: as for `Send`.
unsafe impl Sync for KernelPage {}

impl KernelPage {
    pub(crate) fn new() -> Result<Self> {
        // SAFETY: allocating a page has no preconditions.
        let addr = NonNull::new(unsafe { glue::homi_page_alloc() }).ok_or(ENOMEM)?;
        // INVARIANT: a fresh zeroed page, owned from here on.
        Ok(Self { addr })
    }

    /// The page's kernel address, for the fault handler.
    pub(crate) fn addr(&self) -> *mut c_void {
        self.addr.as_ptr()
    }
}

impl Drop for KernelPage {
    fn drop(&mut self) {
        // SAFETY: allocated in `new`, freed once (type invariant).
        unsafe { glue::homi_page_free(self.addr.as_ptr()) };
    }
}

/// The file's map status page ([`HomiMapStatus`]), mapped read-only at
/// [`HOMI_MAP_STATUS_OFFSET`]. homi writes a map's state before the file system
/// operation that broke its lease may go on.
pub(crate) struct MapStatusPage {
    page: KernelPage,
}

impl MapStatusPage {
    pub(crate) fn new() -> Result<Self> {
        Ok(Self {
            page: KernelPage::new()?,
        })
    }

    pub(crate) fn addr(&self) -> *mut c_void {
        self.page.addr()
    }

    /// Sets the state of the map in slot `slot` (below [`HOMI_MAP_SLOTS`]). Safe in
    /// atomic context: the lease's break callback calls it under a spinlock.
    pub(crate) fn set(&self, slot: u32, state: u32) {
        let slot = slot as usize;
        if slot < HOMI_MAP_SLOTS {
            // SAFETY: a 4-aligned slot inside the live page; user space cannot write it,
            // so atomic access from here is sound.
            let p = unsafe { self.page.addr().cast::<u32>().add(slot) };
            // SAFETY: as above.
            unsafe { AtomicU32::from_ptr(p) }.store(state, Ordering::Release);
        }
    }
}

/// The file's status page, mapped read-only at [`HOMI_STATUS_OFFSET`]. homi writes it
/// before it revokes anything, so a reader learns why a mapping went dead.
pub(crate) struct StatusPage {
    page: KernelPage,
}

impl StatusPage {
    const GENERATION: usize = 0;
    const CTRL_STATE: usize = 8;
    const QUEUE_STATE: usize = 16;

    pub(crate) fn new() -> Result<Self> {
        Ok(Self {
            page: KernelPage::new()?,
        })
    }

    pub(crate) fn addr(&self) -> *mut c_void {
        self.page.addr()
    }

    fn slot(&self, at: usize) -> *mut u8 {
        // SAFETY: callers pass offsets inside the page, which is live.
        unsafe { self.page.addr().cast::<u8>().add(at) }
    }

    pub(crate) fn set_generation(&self, gen: u64) {
        // SAFETY: an 8-aligned slot inside the live page; user space cannot write it,
        // so atomic access from here is sound.
        unsafe { AtomicU64::from_ptr(self.slot(Self::GENERATION).cast()) }
            .store(gen, Ordering::Release);
    }

    fn set_u32(&self, at: usize, val: u32) {
        // SAFETY: a 4-aligned slot inside the live page, as for `set_generation`.
        unsafe { AtomicU32::from_ptr(self.slot(at).cast()) }.store(val, Ordering::Release);
    }

    /// Sets the state of the queue in status slot `slot` (below [`HOMI_STATUS_SLOTS`]).
    pub(crate) fn set_queue_state(&self, slot: u32, state: u32) {
        let slot = slot as usize;
        if slot < HOMI_STATUS_SLOTS {
            self.set_u32(Self::QUEUE_STATE + 4 * slot, state);
        }
    }

    /// Sets `ctrl_state`; once it says `HOMI_CTRL_GONE` (the file's controller was
    /// unbound) it stays so.
    pub(crate) fn set_ctrl_state(&self, state: u32) {
        // SAFETY: a 4-aligned slot inside the live page, as for `set_generation`.
        let slot = unsafe { AtomicU32::from_ptr(self.slot(Self::CTRL_STATE).cast()) };
        let _ = slot.fetch_update(Ordering::Release, Ordering::Relaxed, |old| {
            (old != HOMI_CTRL_GONE).then_some(state)
        });
    }
}
