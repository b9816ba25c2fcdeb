// SPDX-License-Identifier: GPL-2.0

//! Hand-written declarations of `homi_glue.c`, and [`Ctrl`], the safe handle to an
//! nvme-pci controller built on them.
//!
//! C header: `kmod/homi_glue.h`

use core::ffi::c_void;
use core::ptr::NonNull;

use kernel::{bindings, fs::File, prelude::*};

use crate::dma::DevRef;

/// Logs a refused call, rate-limited, and counts it (INFO's `refused_calls`): bad
/// input from user space must not be able to flood the kernel log.
macro_rules! refuse {
    ($($arg:tt)*) => {{
        $crate::glue::REFUSED.fetch_add(1, core::sync::atomic::Ordering::Relaxed);
        if $crate::glue::log_ratelimit() {
            pr_info!($($arg)*);
        }
    }};
}
pub(crate) use refuse;

/// Calls refused for bad input since the module loaded.
pub(crate) static REFUSED: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

/// `struct nvme_ctrl`, private to `drivers/nvme/host`: only ever behind a pointer.
#[repr(C)]
pub(crate) struct NvmeCtrl {
    _private: [u8; 0],
}

/// `struct homi_watch` of `homi_glue.c`.
#[repr(C)]
pub(crate) struct HomiWatch {
    _private: [u8; 0],
}

// Kernel structs are passed as `c_void` pointers: their bindgen types contain
// zero-sized members that the `improper_ctypes` lint rejects in `extern` blocks.
extern "C" {
    fn homi_ctrl_get(nvme_file: *mut c_void) -> *mut NvmeCtrl;
    fn homi_ctrl_put(ctrl: *mut NvmeCtrl);
    fn homi_ctrl_dma_dev(ctrl: *mut NvmeCtrl) -> *mut c_void;
    fn homi_ctrl_instance(ctrl: *mut NvmeCtrl) -> i32;
    fn homi_ctrl_io_queues(ctrl: *mut NvmeCtrl) -> u32;
    fn homi_ctrl_cap(ctrl: *mut NvmeCtrl) -> u64;
    fn homi_ctrl_oacs(ctrl: *mut NvmeCtrl) -> u16;
    fn homi_ctrl_max_hw_sectors(ctrl: *mut NvmeCtrl) -> u32;
    fn homi_ctrl_live(ctrl: *mut NvmeCtrl) -> bool;
    fn homi_ctrl_deleting(ctrl: *mut NvmeCtrl) -> bool;
    fn homi_ctrl_bar0_doorbells_only(ctrl: *mut NvmeCtrl, page: u64, len: u64) -> bool;
    fn homi_ctrl_bar_start(ctrl: *mut NvmeCtrl) -> u64;
    fn homi_ctrl_bar_len(ctrl: *mut NvmeCtrl) -> u64;
    fn homi_ctrl_cmb_size(ctrl: *mut NvmeCtrl) -> u64;
    fn homi_ctrl_admin(
        ctrl: *mut NvmeCtrl,
        sqe: *const c_void,
        buf: *mut c_void,
        len: u32,
        result: *mut u32,
    ) -> i32;
    fn homi_have_user_queues() -> bool;
    fn homi_ctrl_user_queues(
        ctrl: *mut NvmeCtrl,
        first: *mut u32,
        nr: *mut u32,
        shadow: *mut bool,
    ) -> i32;
    fn homi_user_queue_shadow(
        ctrl: *mut NvmeCtrl,
        qid: u16,
        sq_slot: *mut u32,
        cq_slot: *mut u32,
        shadow_page: *mut *mut c_void,
        eventidx_page: *mut *mut c_void,
    ) -> i32;
    pub(crate) fn homi_vma_setup(vma: *mut c_void, ctx: *mut c_void, mmio: bool);
    pub(crate) fn homi_vmf_pgoff(vmf: *mut c_void) -> usize;
    pub(crate) fn homi_kaddr_pfn(kaddr: *mut c_void) -> usize;
    pub(crate) fn homi_vmf_insert_pfn(vmf: *mut c_void, pfn: usize) -> u32;
    pub(crate) fn homi_page_alloc() -> *mut c_void;
    pub(crate) fn homi_page_free(addr: *mut c_void);
    fn homi_watch_start(
        ctrl: *mut NvmeCtrl,
        changed: unsafe extern "C" fn(ctx: *mut c_void),
        ctx: *mut c_void,
    ) -> *mut HomiWatch;
    fn homi_watch_stop(w: *mut HomiWatch);
    fn homi_watch_resets(w: *mut HomiWatch) -> u64;
    fn homi_watch_cleared(w: *mut HomiWatch) -> u64;
    pub(crate) fn homi_mm_get() -> *mut c_void;
    pub(crate) fn homi_mm_put(mm: *mut c_void);
    pub(crate) fn homi_mm_charge(mm: *mut c_void, pages: usize) -> i32;
    pub(crate) fn homi_mm_uncharge(mm: *mut c_void, pages: usize);
    pub(crate) fn homi_dma_needs_sync(dev: *mut c_void, addr: u64) -> bool;
    fn homi_locked_down() -> i32;
    fn homi_dev_present(dev: *mut c_void) -> bool;
    fn homi_dev_iommu_translates(dev: *mut c_void) -> bool;
    fn homi_log_ratelimit() -> bool;
    pub(crate) fn homi_glue_init(
        unbinding: unsafe extern "C" fn(dev: *mut c_void, done: bool),
        fault: unsafe extern "C" fn(ctx: *mut c_void, vmf: *mut c_void) -> u32,
    ) -> i32;
    pub(crate) fn homi_glue_exit();
}

/// OACS bit 8: Doorbell Buffer Config. nvme-pci enables shadow doorbells whenever the
/// controller offers them, so on a stock kernel this bit means they are active.
const OACS_DBBUF: u16 = 1 << 8;

/// Whether this module was built against an nvme-pci with user queues.
pub(crate) fn have_user_queues() -> bool {
    // SAFETY: returns a constant.
    unsafe { homi_have_user_queues() }
}

/// The queues nvme-pci reserved for homi (`nvme.user_queues=N`).
#[derive(Clone, Copy)]
pub(crate) struct UserQueues {
    /// The first reserved qid.
    pub(crate) first: u32,
    /// How many; 0 if none.
    pub(crate) nr: u32,
    /// Whether the controller reads doorbells from the shadow buffer.
    pub(crate) shadow: bool,
}

/// A reserved queue's shadow slots: byte offsets in the shadow doorbell page and, the
/// same, in the event index page, and those pages' kernel addresses (in nvme-pci's
/// shadow buffer, which lives until the device goes away).
#[derive(Clone, Copy)]
pub(crate) struct ShadowSlots {
    pub(crate) sq: u32,
    pub(crate) cq: u32,
    pub(crate) page: *mut c_void,
    pub(crate) eventidx_page: *mut c_void,
}

// SAFETY: two offsets and two addresses of memory nvme-pci owns; nothing thread-bound.
unsafe impl Send for ShadowSlots {}
// SAFETY: as for `Send`.
unsafe impl Sync for ShadowSlots {}

/// A held nvme-pci controller.
///
/// # Invariants
///
/// `ptr` came from `homi_ctrl_get`, whose device reference this object owns, so the
/// `struct nvme_ctrl` stays allocated for the life of `self`.
pub(crate) struct Ctrl {
    ptr: NonNull<NvmeCtrl>,
}

// SAFETY: the glue accessors read fields under the driver's own rules (READ_ONCE,
// atomics) or fields fixed at probe; submitting admin commands is thread-safe.
unsafe impl Send for Ctrl {}
// SAFETY: as for `Send`; no method needs exclusive access.
unsafe impl Sync for Ctrl {}

impl Ctrl {
    /// The controller behind `file`, if it is an nvme-pci controller char device.
    pub(crate) fn from_file(file: &File) -> Option<Self> {
        // SAFETY: `file` is a valid, referenced file for the duration of the call.
        let ptr = NonNull::new(unsafe { homi_ctrl_get(file.as_ptr().cast()) })?;
        // INVARIANT: `homi_ctrl_get` took a device reference that we now own.
        Some(Self { ptr })
    }

    /// Identifies the controller in module-wide tables.
    pub(crate) fn key(&self) -> usize {
        self.ptr.as_ptr() as usize
    }

    fn raw(&self) -> *mut NvmeCtrl {
        self.ptr.as_ptr()
    }

    /// The `struct nvme_ctrl`, alive for as long as `self`.
    pub(crate) fn raw_nonnull(&self) -> NonNull<NvmeCtrl> {
        self.ptr
    }

    /// Whether the controller is being deleted (or dead): nothing may attach then.
    pub(crate) fn deleting(&self) -> bool {
        // SAFETY: by the type invariant the controller is alive.
        unsafe { homi_ctrl_deleting(self.raw()) }
    }

    /// Whether the BAR0 page at byte offset `page` holds nothing but doorbells: no
    /// controller registers, no MSI-X table or pending-bit array.
    pub(crate) fn bar0_page_holds_only_doorbells(&self, page: u64) -> bool {
        // SAFETY: by the type invariant the controller, and its PCI device, are alive.
        unsafe { homi_ctrl_bar0_doorbells_only(self.raw(), page, PAGE_SIZE as u64) }
    }

    /// The PCI device that rings and buffers are DMA-mapped against.
    pub(crate) fn dma_dev(&self) -> *mut bindings::device {
        // SAFETY: by the type invariant the controller is alive.
        unsafe { homi_ctrl_dma_dev(self.raw()).cast() }
    }

    /// A reference on [`dma_dev`](Self::dma_dev), which outlives the controller.
    pub(crate) fn dev_ref(&self) -> Result<DevRef> {
        // SAFETY: nvme-pci holds its PCI device for as long as the controller lives,
        // and by the type invariant it does.
        unsafe { DevRef::new(self.dma_dev()) }
    }

    /// The `X` of `/dev/nvmeX`.
    pub(crate) fn instance(&self) -> u32 {
        // SAFETY: by the type invariant the controller is alive.
        unsafe { homi_ctrl_instance(self.raw()) as u32 }
    }

    /// I/O queues the driver created.
    pub(crate) fn io_queues(&self) -> u32 {
        // SAFETY: by the type invariant the controller is alive.
        unsafe { homi_ctrl_io_queues(self.raw()) }
    }

    /// The CAP register, as the driver read it.
    pub(crate) fn cap(&self) -> u64 {
        // SAFETY: by the type invariant the controller is alive.
        unsafe { homi_ctrl_cap(self.raw()) }
    }

    /// Whether the controller offers shadow doorbells, which a stock nvme-pci then
    /// always turns on. With user queues, [`UserQueues::shadow`] says whether they are.
    pub(crate) fn offers_shadow_doorbells(&self) -> bool {
        // SAFETY: by the type invariant the controller is alive.
        unsafe { homi_ctrl_oacs(self.raw()) & OACS_DBBUF != 0 }
    }

    /// Bytes from one doorbell register to the next (`4 << CAP.DSTRD`).
    pub(crate) fn doorbell_stride(&self) -> u32 {
        4 << ((self.cap() >> 32) & 0xf)
    }

    /// The largest transfer the driver allows, in bytes.
    pub(crate) fn max_transfer(&self) -> u32 {
        // SAFETY: by the type invariant the controller is alive.
        unsafe { homi_ctrl_max_hw_sectors(self.raw()).saturating_mul(512) }
    }

    /// Whether the controller is live.
    pub(crate) fn live(&self) -> bool {
        // SAFETY: by the type invariant the controller is alive.
        unsafe { homi_ctrl_live(self.raw()) }
    }

    /// BAR0's physical address and length.
    pub(crate) fn bar(&self) -> (u64, u64) {
        // SAFETY: by the type invariant the controller is alive; BAR0 is fixed at probe.
        unsafe {
            (
                homi_ctrl_bar_start(self.raw()),
                homi_ctrl_bar_len(self.raw()),
            )
        }
    }

    /// nvme-pci's user queue reservation; `None` on a kernel without user queues.
    pub(crate) fn user_queues(&self) -> Option<UserQueues> {
        let mut uq = UserQueues {
            first: 0,
            nr: 0,
            shadow: false,
        };
        // SAFETY: by the type invariant the controller is alive; the out pointers are
        // valid for writes.
        let ret =
            unsafe { homi_ctrl_user_queues(self.raw(), &mut uq.first, &mut uq.nr, &mut uq.shadow) };
        (ret == 0).then_some(uq)
    }

    /// Zeroes reserved queue `qid`'s shadow doorbell and event index slots, before the
    /// queue is created, and says where they are.
    pub(crate) fn reset_shadow(&self, qid: u16) -> Result<ShadowSlots> {
        let mut slots = ShadowSlots {
            sq: 0,
            cq: 0,
            page: core::ptr::null_mut(),
            eventidx_page: core::ptr::null_mut(),
        };
        // SAFETY: by the type invariant the controller is alive; the out pointers are
        // valid for writes.
        kernel::error::to_result(unsafe {
            homi_user_queue_shadow(
                self.raw(),
                qid,
                &mut slots.sq,
                &mut slots.cq,
                &mut slots.page,
                &mut slots.eventidx_page,
            )
        })?;
        Ok(slots)
    }

    /// Whether the controller's PCI device still answers (false once it was
    /// surprise-removed: then nothing is waited on).
    pub(crate) fn present(&self) -> bool {
        // SAFETY: by the type invariant the controller, and so its PCI device, is alive.
        unsafe { homi_dev_present(self.dma_dev().cast()) }
    }

    /// Whether the controller's DMA is translated by an IOMMU.
    pub(crate) fn iommu_translates(&self) -> bool {
        // SAFETY: as for `present`.
        unsafe { homi_dev_iommu_translates(self.dma_dev().cast()) }
    }

    /// The Controller Memory Buffer's size in bytes; 0 if it has none.
    pub(crate) fn cmb_size(&self) -> u64 {
        // SAFETY: by the type invariant the controller is alive; BAR0 is fixed at probe.
        unsafe { homi_ctrl_cmb_size(self.raw()) }
    }

    /// Runs one admin command on the driver's admin queue, with an optional data
    /// buffer. Returns completion dword 0, or the NVMe status the command completed
    /// with (status code type and code, without the DNR and More bits).
    pub(crate) fn admin_status(
        &self,
        sqe: &[u32; 16],
        buf: Option<&mut [u8]>,
    ) -> Result<core::result::Result<u32, u16>> {
        // Once nvme_remove began, the admin queue is being torn down.
        if self.deleting() {
            return Err(ENODEV);
        }
        let (ptr, len) = match buf {
            Some(b) => (b.as_mut_ptr().cast(), u32::try_from(b.len())?),
            None => (core::ptr::null_mut(), 0),
        };
        let mut result = 0u32;
        // SAFETY: the controller is alive (invariant), `sqe` is 64 readable bytes, `ptr`
        // is null or `len` bytes of kmalloc'ed memory the caller lends for the call.
        let ret =
            unsafe { homi_ctrl_admin(self.raw(), sqe.as_ptr().cast(), ptr, len, &mut result) };
        match ret {
            0 => Ok(Ok(result)),
            e if e < 0 => Err(Error::from_errno(e)),
            status => Ok(Err((status & 0x7ff) as u16)),
        }
    }

    /// As [`admin_status`](Self::admin_status), with an NVMe error status logged and
    /// turned into `EIO`.
    pub(crate) fn admin(&self, sqe: &[u32; 16], buf: Option<&mut [u8]>) -> Result<u32> {
        self.admin_status(sqe, buf)?.map_err(|status| {
            if log_ratelimit() {
                pr_warn!(
                    "nvme{}: admin opcode {:#04x} failed: status {:#x}\n",
                    self.instance(),
                    sqe[0] & 0xff,
                    status
                );
            }
            EIO
        })
    }
}

impl Drop for Ctrl {
    fn drop(&mut self) {
        // SAFETY: we own the reference `homi_ctrl_get` took (type invariant).
        unsafe { homi_ctrl_put(self.raw()) };
    }
}

/// A controller state watch; stopping it waits for a running callback.
///
/// # Invariants
///
/// `ptr` came from `homi_watch_start` and is stopped exactly once, on drop.
pub(crate) struct Watch {
    ptr: NonNull<HomiWatch>,
}

// SAFETY: the watch is only ever stopped, which is allowed from any thread.
unsafe impl Send for Watch {}
// SAFETY: `&Watch` allows nothing.
unsafe impl Sync for Watch {}

impl Watch {
    /// Starts watching the state of the controller at `ctrl`: `changed(ctx)` runs in
    /// process context after each change, until the watch is dropped.
    ///
    /// # Safety
    ///
    /// `ctrl` is a live controller that outlives the watch, and `ctx` stays valid for
    /// `changed` until the watch is dropped.
    pub(crate) unsafe fn start(
        ctrl: NonNull<NvmeCtrl>,
        changed: unsafe extern "C" fn(ctx: *mut c_void),
        ctx: *mut c_void,
    ) -> Result<Self> {
        // SAFETY: as the caller guarantees.
        let w = unsafe { homi_watch_start(ctrl.as_ptr(), changed, ctx) };
        // INVARIANT: a started watch, stopped only by `drop`.
        Ok(Self {
            ptr: NonNull::new(w).ok_or(ENOMEM)?,
        })
    }

    /// homi's reset epoch: how many times the controller entered RESETTING since the
    /// watch started. A queue created while the controller was live records it.
    pub(crate) fn epoch(&self) -> u64 {
        // SAFETY: by the type invariant the watch is live.
        unsafe { homi_watch_resets(self.ptr.as_ptr()) }
    }

    /// Every queue created in an epoch below this one is gone from the controller:
    /// nvme-pci disabled (or subsystem-reset) it since.
    pub(crate) fn cleared(&self) -> u64 {
        // SAFETY: by the type invariant the watch is live.
        unsafe { homi_watch_cleared(self.ptr.as_ptr()) }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        // SAFETY: by the type invariant the watch is live and stopped only here.
        unsafe { homi_watch_stop(self.ptr.as_ptr()) };
    }
}

/// An errno the kernel crate has no constant for.
pub(crate) fn errno(e: u32) -> Error {
    Error::from_errno(-(e as i32))
}

const PAGE_SIZE: usize = bindings::PAGE_SIZE;

/// Whether kernel lockdown forbids what a queue holder can do (raw PCI access).
pub(crate) fn locked_down() -> Result {
    // SAFETY: asks the LSMs; no preconditions.
    kernel::error::to_result(unsafe { homi_locked_down() })
}

/// Whether a line about a refused call may be logged now (10 per 5 seconds).
pub(crate) fn log_ratelimit() -> bool {
    // SAFETY: a ratelimit state private to the glue; no preconditions.
    unsafe { homi_log_ratelimit() }
}
