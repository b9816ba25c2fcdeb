// SPDX-License-Identifier: GPL-2.0

//! User mappings of `/dev/homi`: their offsets, their set-up, the fault handler that
//! fills them, and their revocation.
//!
//! - **Offsets.** Every mappable object gets page offsets from one module-wide counter,
//!   never reused. All files of the misc device share one `address_space`, so unique
//!   offsets let `unmap_mapping_range` revoke exactly one object's mappings, in every
//!   process that has them.
//! - **No page at mmap time.** `mmap` only checks that the object exists and that the
//!   VMA fits it. Pages are inserted by the fault handler, which looks the object up
//!   under the file's lock. Revocation changes the file's tables and zaps under the
//!   same lock, so a mapping being set up concurrently cannot be missed: a fault either
//!   ran before the revocation (its VMA is linked by then, and the zap finds it) or
//!   sees the object gone.
//! - **Revoked mappings** fault in the file's sink page: writes go nowhere, reads see
//!   what this file's own revoked mappings wrote, never another file's data. A process
//!   reads the status page to learn why.
//!
//! C header: [`include/linux/mm.h`](srctree/include/linux/mm.h)

use core::ffi::c_void;
use core::sync::atomic::{
    AtomicU64,
    Ordering, //
};

use kernel::{bindings, mm::virt::VmaNew, prelude::*};

use crate::file::FileState;
use crate::glue::{self, refuse};

pub(crate) const PAGE_SIZE: usize = bindings::PAGE_SIZE;
pub(crate) const PAGE_SHIFT: u32 = bindings::PAGE_SHIFT;

/// The next unused mmap page offset (0 is the status page, 1 the map status page).
static NEXT_PGOFF: AtomicU64 = AtomicU64::new(2);

/// Takes fresh page offsets for an object of `bytes`.
pub(crate) fn take_pgoffs(bytes: usize) -> u64 {
    NEXT_PGOFF.fetch_add(bytes.div_ceil(PAGE_SIZE) as u64, Ordering::Relaxed)
}

/// Revokes every user mapping of `bytes` at page offset `pgoff` of the misc device.
pub(crate) fn zap(mapping: usize, pgoff: u64, bytes: usize) {
    // SAFETY: `mapping` is the `address_space` of an open file of ours, which lives
    // as long as the misc device's inode; zapping PTEs needs no other guarantee.
    unsafe {
        bindings::unmap_mapping_range(
            mapping as *mut bindings::address_space,
            (pgoff << PAGE_SHIFT) as i64,
            bytes as i64,
            1,
        )
    };
}

/// What backs one page of a mapping.
pub(crate) enum Backing {
    /// Kernel memory, by its kernel address (linear map or vmalloc space).
    Kernel(*mut c_void),
    /// Controller registers, by physical address (mapped uncached).
    Mmio(u64),
}

/// What an mmap offset names, for the checks at mmap time.
pub(crate) struct Object {
    /// Its first page offset.
    pub(crate) pgoff: u64,
    /// Its length in bytes (whole pages).
    pub(crate) bytes: usize,
    /// Whether user space may write it.
    pub(crate) writable: bool,
    /// Whether it is device memory (uncached).
    pub(crate) mmio: bool,
}

/// Sets up `vma` for `obj`, which it must cover exactly, from its first page. Pages
/// come later, from [`fault`].
pub(crate) fn setup(vma: &VmaNew, ctx: &FileState, obj: &Object) -> Result {
    // SAFETY: `vma` is being set up under the mmap lock; reading its offset is fine.
    let pgoff = unsafe { (*vma.as_ptr()).vm_pgoff } as u64;
    if pgoff != obj.pgoff || vma.end() - vma.start() != obj.bytes {
        refuse!("mmap: a mapping must cover one whole object\n");
        return Err(EINVAL);
    }
    if !obj.writable {
        if vma.writable() {
            return Err(EACCES);
        }
        vma.try_clear_maywrite()?;
    }
    // SAFETY: `vma` is being set up under the mmap lock. `ctx` outlives the VMA: the
    // VMA holds the file, whose release drops the last reference to `ctx`.
    unsafe {
        glue::homi_vma_setup(
            vma.as_ptr().cast(),
            core::ptr::from_ref(ctx).cast_mut().cast(),
            obj.mmio,
        )
    };
    Ok(())
}

/// Inserts `backing` at the faulting address; returns a `vm_fault_t`.
///
/// # Safety
///
/// `vmf` is the fault being handled, in a VMA set up by [`setup`].
pub(crate) unsafe fn insert(vmf: *mut c_void, backing: Backing) -> u32 {
    let pfn = match backing {
        // SAFETY: kernel memory the caller keeps alive while it holds the file's lock.
        Backing::Kernel(addr) => unsafe { glue::homi_kaddr_pfn(addr) },
        Backing::Mmio(phys) => (phys >> PAGE_SHIFT) as usize,
    };
    // SAFETY: `vmf` is the fault being handled (caller); the VMA is `VM_PFNMAP`.
    unsafe { glue::homi_vmf_insert_pfn(vmf, pfn) }
}

/// The fault handler of every homi mapping (`homi_glue.c` calls it).
///
/// # Safety
///
/// `ctx` is the `FileState` passed to [`setup`] and `vmf` the fault being handled.
pub(crate) unsafe extern "C" fn fault(ctx: *mut c_void, vmf: *mut c_void) -> u32 {
    // SAFETY: the VMA holds the file, so its state is alive (see `setup`).
    let file = unsafe { &*ctx.cast::<FileState>() };
    // SAFETY: `vmf` is the fault being handled.
    let pgoff = unsafe { glue::homi_vmf_pgoff(vmf) } as u64;
    // SAFETY: `vmf` is the fault being handled; `file.fault` calls this while it holds
    // its lock, so the backing stays alive until the PTE is in place.
    file.fault(pgoff, |b| unsafe { insert(vmf, b) })
}
