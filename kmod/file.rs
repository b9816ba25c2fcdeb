// SPDX-License-Identifier: GPL-2.0

//! One open file of `/dev/homi`: the controller it is attached to, its queue pairs,
//! buffers and registrations, and their teardown on close, reset and unbind.
//!
//! Locking: `FILES` may be held while taking a file's `inner`, and `inner` while taking
//! `QIDS`, never the other way round. The state watch callback takes `inner`, so a
//! watch is only ever stopped with `inner` released.
//!
//! mmap offsets: every mappable object gets page offsets from one module-wide counter,
//! never reused. All files of the misc device share one `address_space`, so unique
//! offsets let `unmap_mapping_range` revoke exactly one object's mappings, in every
//! process that has them (forks included).

use core::ffi::c_void;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use kernel::{
    bindings,
    fs::{
        File,
        LocalFile, //
    },
    mm::virt::VmaNew,
    prelude::*,
    sync::{
        aref::ARef,
        new_mutex,
        Arc,
        ArcBorrow,
        Mutex, //
    },
    uaccess::UserSlice,
};

use crate::admin;
use crate::dma::{
    DmaRegion,
    Pinned,
    DMA_BYTES,
    PINNED_PAGES, //
};
use crate::glue::{
    self,
    Ctrl,
    ShadowSlots,
    Watch, //
};
use crate::uapi::*;

const PAGE_SIZE: usize = bindings::PAGE_SIZE;
const PAGE_SHIFT: u32 = bindings::PAGE_SHIFT;
/// Doorbells start at this offset of BAR0.
const DOORBELL_BASE: u64 = 0x1000;

/// Queue pairs one file may hold.
const MAX_QPAIRS_PER_FILE: usize = 64;
/// Buffers plus registrations one file may hold.
const MAX_OBJECTS_PER_FILE: usize = 1024;
/// Coherent DMA bytes (rings, buffers) one file may hold.
const MAX_DMA_BYTES_PER_FILE: usize = 256 << 20;
/// User pages one file may keep pinned (1 GiB of 4 KiB pages).
const MAX_PINNED_PAGES_PER_FILE: usize = 1 << 18;

/// The next unused mmap page offset (0 is never handed out).
static NEXT_PGOFF: AtomicU64 = AtomicU64::new(1);
/// Queue pairs held through homi, module-wide.
static QPAIRS: AtomicU32 = AtomicU32::new(0);

/// An errno the kernel crate has no constant for.
fn errno(e: u32) -> Error {
    Error::from_errno(-(e as i32))
}

fn take_pgoffs(bytes: usize) -> u64 {
    NEXT_PGOFF.fetch_add((bytes >> PAGE_SHIFT) as u64, Ordering::Relaxed)
}

/// The qids one controller has given out, keyed by the controller.
struct Reserved {
    ctrl: usize,
    qids: KVec<u16>,
}

kernel::sync::global_lock! {
    // SAFETY: `init_globals` initialises it in module init, before any file exists.
    unsafe(uninit) static QIDS: Mutex<KVec<Reserved>> = KVec::new();
}

kernel::sync::global_lock! {
    // SAFETY: `init_globals` initialises it in module init, before any file exists.
    unsafe(uninit) static FILES: Mutex<KVec<Arc<FileState>>> = KVec::new();
}

/// Initialises the module-wide locks.
///
/// # Safety
///
/// Call once, from module init, before anything else in this file runs.
pub(crate) unsafe fn init_globals() {
    // SAFETY: the caller calls this once, first.
    unsafe {
        QIDS.init();
        FILES.init();
    }
}

/// Frees the module-wide vectors' storage. Statics are never dropped, so without this
/// their heap buffers would outlive the module (kmemleak finds them after `rmmod`).
///
/// Call from module teardown, when no file is open.
pub(crate) fn free_globals() {
    drop(core::mem::take(&mut *QIDS.lock()));
    drop(core::mem::take(&mut *FILES.lock()));
}

/// Reserves the lowest qid in `first..=last` that nobody holds on `ctrl`.
fn reserve_qid(ctrl: &Ctrl, first: u32, last: u32) -> Result<u16> {
    let key = ctrl.key();
    let mut all = QIDS.lock();
    let idx = match all.iter().position(|r| r.ctrl == key) {
        Some(i) => i,
        None => {
            all.push(
                Reserved {
                    ctrl: key,
                    qids: KVec::new(),
                },
                GFP_KERNEL,
            )?;
            all.len() - 1
        }
    };
    let taken = &mut all[idx].qids;
    let last = last.min(u32::from(u16::MAX));
    for q in first..=last {
        // Both bounds fit in u16 here.
        let q = q as u16;
        if !taken.contains(&q) {
            taken.push(q, GFP_KERNEL)?;
            return Ok(q);
        }
    }
    Err(ENOSPC)
}

fn release_qid(ctrl_key: usize, qid: u16) {
    let mut all = QIDS.lock();
    if let Some(i) = all.iter().position(|r| r.ctrl == ctrl_key) {
        all[i].qids.retain(|q| *q != qid);
        if all[i].qids.is_empty() {
            let _ = all.remove(i);
        }
    }
}

fn reserved_count(ctrl: &Ctrl) -> usize {
    let key = ctrl.key();
    QIDS.lock()
        .iter()
        .find(|r| r.ctrl == key)
        .map_or(0, |r| r.qids.len())
}

/// The qids homi may take on a controller right now.
struct QidRange {
    first: u32,
    last: u32,
    /// I/O queues the controller granted (Get Features, Number of Queues).
    granted: u32,
    /// The range is nvme-pci's user queue reservation.
    user: bool,
    /// The controller reads doorbells from nvme-pci's shadow buffer.
    shadow: bool,
}

impl QidRange {
    fn of(c: &Ctrl) -> Result<Self> {
        let (_, bar_len) = c.bar();
        // The highest qid whose CQ head doorbell is still inside BAR0.
        let bar_last = (bar_len.saturating_sub(DOORBELL_BASE + 4)
            / (2 * u64::from(c.doorbell_stride()))) as u32;
        let granted = admin::granted_io_queues(c)?;
        let uq = c.user_queues();
        if let Some(uq) = uq.filter(|uq| uq.nr > 0) {
            return Ok(Self {
                first: uq.first,
                last: (uq.first + uq.nr - 1).min(bar_last),
                granted,
                user: true,
                shadow: uq.shadow,
            });
        }
        Ok(Self {
            first: c.io_queues() + 1,
            last: granted.min(bar_last),
            granted,
            user: false,
            shadow: uq.map_or_else(|| c.offers_shadow_doorbells(), |uq| uq.shadow),
        })
    }

    fn contains(&self, qid: u16) -> bool {
        (self.first..=self.last).contains(&u32::from(qid))
    }

    fn len(&self) -> u32 {
        (self.last + 1).saturating_sub(self.first)
    }
}

/// A queue's shadow doorbell pages (see [`HOMI_QPAIR_SHADOW`]).
struct Shadow {
    slots: ShadowSlots,
    pgoff: u64,
    eventidx_pgoff: u64,
}

impl Shadow {
    /// For a queue about to be created on `qid` of `range`: with shadow doorbells,
    /// zeroes its slots and gives them fresh mmap offsets; without, `None`.
    fn new(c: &Ctrl, range: &QidRange, qid: u16) -> Result<Option<Self>> {
        if !range.shadow {
            return Ok(None);
        }
        Ok(Some(Self {
            slots: c.reset_shadow(qid)?,
            pgoff: take_pgoffs(PAGE_SIZE),
            eventidx_pgoff: take_pgoffs(PAGE_SIZE),
        }))
    }
}

/// One reserved queue pair.
struct QueuePair {
    qid: u16,
    depth: u32,
    sq: DmaRegion,
    cq: DmaRegion,
    sq_pgoff: u64,
    cq_pgoff: u64,
    db_pgoff: u64,
    /// The controller page holding this queue's doorbells, and the SQ tail doorbell's
    /// offset in it.
    db_phys: u64,
    db_offset: u32,
    /// The controller generation the queue was (re)created in.
    generation: u64,
    /// Whether the queue exists on the controller.
    live: bool,
    /// With shadow doorbells: where the queue's shadow slots are mapped.
    shadow: Option<Shadow>,
}

impl QueuePair {
    fn reply(&self) -> HomiQpair {
        let (flags, shadow_offset, eventidx_offset, shadow_sq, shadow_cq) = match &self.shadow {
            Some(s) => (
                HOMI_QPAIR_SHADOW,
                s.pgoff << PAGE_SHIFT,
                s.eventidx_pgoff << PAGE_SHIFT,
                s.slots.sq,
                s.slots.cq,
            ),
            None => (0, 0, 0, 0, 0),
        };
        HomiQpair {
            depth: self.depth,
            flags,
            qid: u32::from(self.qid),
            sq_doorbell: self.db_offset,
            sq_size: self.sq.size() as u64,
            cq_size: self.cq.size() as u64,
            sq_offset: self.sq_pgoff << PAGE_SHIFT,
            cq_offset: self.cq_pgoff << PAGE_SHIFT,
            doorbell_offset: self.db_pgoff << PAGE_SHIFT,
            generation: self.generation,
            shadow_offset,
            eventidx_offset,
            shadow_sq,
            shadow_cq,
        }
    }
}

struct Buffer {
    id: u32,
    mem: DmaRegion,
    pgoff: u64,
}

struct Registration {
    id: u32,
    pinned: Pinned,
}

/// What a file holds once attached.
///
/// Field order is drop order: the watch stops before the controller reference goes,
/// and DMA memory is freed before the device reference it holds is dropped.
struct Attached {
    watch: Option<Watch>,
    queues: KVec<QueuePair>,
    buffers: KVec<Buffer>,
    regs: KVec<Registration>,
    dma_bytes: usize,
    pinned_pages: usize,
    next_id: u32,
    /// The process that attached, for LIST_QPAIRS.
    pid: i32,
    ctrl: Ctrl,
    _nvme_file: ARef<File>,
}

enum Inner {
    /// Opened, not attached yet.
    Detached,
    Attached(Attached),
    /// The controller was unbound from its driver; everything was torn down.
    Gone,
}

/// The state behind one open file of `/dev/homi`.
#[pin_data]
pub(crate) struct FileState {
    #[pin]
    inner: Mutex<Inner>,
    /// The file's `address_space`, for revoking user mappings.
    mapping: usize,
    status: StatusPage,
    _module: ModuleRef,
}

/// A reference on this module, held by each open file.
///
/// The Rust misc device leaves `file_operations.owner` unset, so the VFS pins nothing
/// while a file is open; without this, `rmmod` would succeed under open files.
/// The reference drops at the very end of `release`, after all teardown.
struct ModuleRef;

impl ModuleRef {
    fn get() -> Result<Self> {
        // SAFETY: `THIS_MODULE` is this module, alive while its code runs.
        if unsafe { bindings::try_module_get(crate::THIS_MODULE.as_ptr()) } {
            Ok(Self)
        } else {
            // The module is being unloaded.
            Err(ENODEV)
        }
    }
}

impl Drop for ModuleRef {
    fn drop(&mut self) {
        // SAFETY: taken in `get`, put once, here.
        unsafe { bindings::module_put(crate::THIS_MODULE.as_ptr()) };
    }
}

/// The file's status page ([`HomiStatus`]): a kernel page that user space maps
/// read-only at [`HOMI_STATUS_OFFSET`].
///
/// # Invariants
///
/// `addr` is a zeroed page from `homi_page_alloc`, owned by `self`. Its user mappings
/// hold page references, and user space can only read it.
struct StatusPage {
    addr: NonNull<c_void>,
}

// SAFETY: the page is written only through atomics.
unsafe impl Send for StatusPage {}
// SAFETY: as for `Send`.
unsafe impl Sync for StatusPage {}

impl StatusPage {
    const GENERATION: usize = 0;
    const CTRL_STATE: usize = 8;
    const QUEUE_STATE: usize = 16;

    fn new() -> Result<Self> {
        // SAFETY: allocating a page has no preconditions.
        let addr = NonNull::new(unsafe { glue::homi_page_alloc() }).ok_or(ENOMEM)?;
        // INVARIANT: a fresh zeroed page, owned from here on.
        Ok(Self { addr })
    }

    fn slot(&self, at: usize) -> *mut u8 {
        // SAFETY: callers pass offsets inside the page (type invariant: it is live).
        unsafe { self.addr.as_ptr().cast::<u8>().add(at) }
    }

    fn set_generation(&self, gen: u64) {
        // SAFETY: an 8-aligned slot inside the live page; user space cannot write it,
        // so atomic access from here is sound.
        unsafe { AtomicU64::from_ptr(self.slot(Self::GENERATION).cast()) }
            .store(gen, Ordering::Release);
    }

    fn set_u32(&self, at: usize, val: u32) {
        // SAFETY: a 4-aligned slot inside the live page, as for `set_generation`.
        unsafe { AtomicU32::from_ptr(self.slot(at).cast()) }.store(val, Ordering::Release);
    }

    fn set_queue_state(&self, qid: u16, state: u32) {
        let qid = usize::from(qid);
        if qid < HOMI_STATUS_QUEUES {
            self.set_u32(Self::QUEUE_STATE + 4 * qid, state);
        }
    }

    fn set_ctrl_state(&self, state: u32) {
        self.set_u32(Self::CTRL_STATE, state);
    }

    fn mmap(&self, vma: &VmaNew) -> Result {
        if vma.end() - vma.start() != PAGE_SIZE {
            return Err(EINVAL);
        }
        if vma.writable() {
            return Err(EACCES);
        }
        vma.try_clear_maywrite()?;
        // SAFETY: `vma` is one page being set up under the mmap lock; the page lives
        // until the file is released, and each mapping holds its own page reference.
        kernel::error::to_result(unsafe {
            glue::homi_mmap_page(vma.as_ptr().cast(), self.addr.as_ptr())
        })
    }
}

impl Drop for StatusPage {
    fn drop(&mut self) {
        // SAFETY: allocated in `new`, freed once; mappings keep their own references.
        unsafe { glue::homi_page_free(self.addr.as_ptr()) };
    }
}

impl Attached {
    fn next_id(&mut self) -> u32 {
        self.next_id = self.next_id.wrapping_add(1).max(1);
        self.next_id
    }

    /// Checks the per-file object and byte limits for one more coherent allocation.
    fn charge_dma(&mut self, bytes: usize) -> Result {
        if self.dma_bytes.saturating_add(bytes) > MAX_DMA_BYTES_PER_FILE {
            pr_warn!(
                "nvme{}: per-file DMA memory limit reached\n",
                self.ctrl.instance()
            );
            return Err(ENOMEM);
        }
        self.dma_bytes += bytes;
        Ok(())
    }
}

/// Revokes every user mapping of `bytes` at page offset `pgoff` of the file.
fn zap(mapping: usize, pgoff: u64, bytes: usize) {
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

impl FileState {
    pub(crate) fn new(file: &File) -> Result<Arc<Self>> {
        // SAFETY: `file` is being opened and valid; `f_mapping` is set before `open`.
        let mapping = unsafe { (*file.as_ptr()).f_mapping } as usize;
        Arc::pin_init(
            try_pin_init!(Self {
                inner <- new_mutex!(Inner::Detached),
                mapping,
                status: StatusPage::new()?,
                _module: ModuleRef::get()?,
            }),
            GFP_KERNEL,
        )
    }

    fn zap_queue(&self, q: &QueuePair) {
        zap(self.mapping, q.sq_pgoff, q.sq.size());
        zap(self.mapping, q.cq_pgoff, q.cq.size());
        self.zap_doorbells(q);
    }

    /// Revokes the queue's doorbell mappings, MMIO and shadow.
    fn zap_doorbells(&self, q: &QueuePair) {
        zap(self.mapping, q.db_pgoff, PAGE_SIZE);
        if let Some(s) = &q.shadow {
            zap(self.mapping, s.pgoff, PAGE_SIZE);
            zap(self.mapping, s.eventidx_pgoff, PAGE_SIZE);
        }
    }

    /// Takes a queue off the controller and releases its qid; the rings are freed when
    /// `q` is dropped, after its mappings are gone.
    fn retire_queue(&self, a: &Attached, q: &QueuePair, state: u32) {
        self.zap_queue(q);
        if q.live && a.ctrl.live() && q.generation == a.ctrl.generation() {
            // The SQ goes first: deleting a CQ with an SQ still bound to it is an error.
            // A failure means the controller is going away; it takes the queue with it.
            let _ = admin::delete_sq(&a.ctrl, q.qid);
            let _ = admin::delete_cq(&a.ctrl, q.qid);
        }
        self.status.set_queue_state(q.qid, state);
        release_qid(a.ctrl.key(), q.qid);
        QPAIRS.fetch_sub(1, Ordering::Relaxed);
    }

    /// Tears everything down. Runs on close and on unbind, with `inner` not held by the
    /// caller; the watch is stopped after `inner` is released.
    fn teardown(&self, then: Inner) {
        let gone = matches!(then, Inner::Gone);
        let watch = {
            let mut inner = self.inner.lock();
            let Inner::Attached(mut a) = core::mem::replace(&mut *inner, then) else {
                return;
            };
            if gone {
                // Tell user space first: revoked mappings read as the dummy page.
                self.status.set_ctrl_state(HOMI_CTRL_GONE);
            }
            let qstate = if gone {
                HOMI_QUEUE_DEAD
            } else {
                HOMI_QUEUE_NONE
            };
            for q in a.queues.iter() {
                self.status.set_queue_state(q.qid, qstate);
            }
            while let Some(q) = a.queues.pop() {
                self.retire_queue(&a, &q, qstate);
            }
            while let Some(b) = a.buffers.pop() {
                zap(self.mapping, b.pgoff, b.mem.size());
            }
            a.regs.clear();
            a.watch.take()
            // `a` drops here: memory, the nvme file and the controller reference.
        };
        drop(watch);
    }

    /// The file is closing (also when its process died).
    pub(crate) fn release(self: Arc<Self>) {
        self.teardown(Inner::Detached);
        FILES.lock().retain(|f| !core::ptr::eq(&**f, &*self));
    }

    pub(crate) fn attach(self: ArcBorrow<'_, Self>, req: &HomiAttach) -> Result {
        if req.flags != 0 {
            return Err(EINVAL);
        }
        // SAFETY: `capable` only reads the current task's credentials.
        if !unsafe { bindings::capable(bindings::CAP_SYS_RAWIO as i32) } {
            return Err(EPERM);
        }
        let fd = u32::try_from(req.nvme_fd).map_err(|_| EBADF)?;
        let local = LocalFile::fget(fd)?;
        // SAFETY: this thread holds no `fdget_pos` on that file: it is in an ioctl on a
        // different file, and keeps the reference only as a plain reference.
        let nvme_file = unsafe { LocalFile::assume_no_fdget_pos(local) };
        let Some(ctrl) = Ctrl::from_file(&nvme_file) else {
            pr_info!(
                "attach: fd {} is not an nvme-pci controller (/dev/nvmeX)\n",
                fd
            );
            return Err(ENODEV);
        };
        if nvme_file.flags() & bindings::O_ACCMODE != bindings::O_RDWR {
            pr_info!(
                "attach: nvme{} must be opened read-write\n",
                ctrl.instance()
            );
            return Err(EACCES);
        }

        // Listed before attaching, so an unbind can never miss an attached file.
        FILES.lock().push(self.into(), GFP_KERNEL)?;
        let unlist = || FILES.lock().retain(|f| !core::ptr::eq(&**f, &*self));
        let mut inner = self.inner.lock();
        let res = self.attach_locked(&mut inner, ctrl, nvme_file);
        drop(inner);
        if res.is_err() {
            unlist();
        }
        res
    }

    fn attach_locked(&self, inner: &mut Inner, ctrl: Ctrl, nvme_file: ARef<File>) -> Result {
        match *inner {
            Inner::Detached => {}
            Inner::Attached(_) => return Err(EBUSY),
            Inner::Gone => return Err(ENODEV),
        }
        let mut a = Attached {
            watch: None,
            queues: KVec::new(),
            buffers: KVec::new(),
            regs: KVec::new(),
            dma_bytes: 0,
            pinned_pages: 0,
            next_id: 0,
            pid: kernel::current!().tgid_nr_ns(None),
            ctrl,
            _nvme_file: nvme_file,
        };
        self.publish_ctrl_state(&a.ctrl);
        let ctx = core::ptr::from_ref(self).cast_mut().cast();
        // SAFETY: the callback gets a pointer to `self`, which outlives the watch: the
        // watch is stopped in `teardown`, which runs before the last reference goes
        // (release holds one, and so does the unbind path).
        a.watch = Some(unsafe { a.ctrl.watch(state_changed, ctx) }?);
        *inner = Inner::Attached(a);
        Ok(())
    }

    fn with_attached<T>(&self, f: impl FnOnce(&mut Attached) -> Result<T>) -> Result<T> {
        match &mut *self.inner.lock() {
            Inner::Attached(a) => f(a),
            Inner::Detached => Err(errno(bindings::ENOTCONN)),
            Inner::Gone => Err(ENODEV),
        }
    }

    pub(crate) fn info(&self) -> Result<HomiInfo> {
        self.with_attached(|a| {
            let c = &a.ctrl;
            let cap = c.cap();
            let range = QidRange::of(c)?;
            let mut info = HomiInfo {
                instance: c.instance(),
                driver_io_queues: c.io_queues(),
                granted_io_queues: range.granted,
                first_spare_qid: range.first,
                spare_free: range.len().saturating_sub(reserved_count(c) as u32),
                max_queue_entries: (cap & 0xffff) as u32 + 1,
                doorbell_stride: c.doorbell_stride(),
                min_page_size: 4096 << ((cap >> 48) & 0xf),
                max_transfer: c.max_transfer(),
                cap,
                generation: c.generation(),
                pinned_pages: PINNED_PAGES.load(Ordering::Relaxed),
                dma_bytes: DMA_BYTES.load(Ordering::Relaxed),
                qpairs: QPAIRS.load(Ordering::Relaxed),
                ..Default::default()
            };
            if c.live() {
                info.flags |= HOMI_INFO_LIVE;
            }
            if range.shadow {
                info.flags |= HOMI_INFO_SHADOW_DOORBELLS;
            }
            if range.user {
                info.flags |= HOMI_INFO_USER_QUEUES;
            }
            if c.cmb_size() > 0 {
                info.flags |= HOMI_INFO_CMB;
            }
            let (nss, more) = admin::namespaces(c, HOMI_MAX_NAMESPACES)?;
            if more {
                info.flags |= HOMI_INFO_MORE_NAMESPACES;
            }
            for (slot, ns) in info.namespaces.iter_mut().zip(nss.iter()) {
                *slot = HomiNamespace {
                    nsid: ns.nsid,
                    lba_shift: ns.lba_shift,
                    blocks: ns.blocks,
                    meta_size: ns.meta_size,
                    reserved: 0,
                };
            }
            info.nr_namespaces = nss.len() as u32;
            Ok(info)
        })
    }

    /// Checks that the controller can take a homi queue in `range` right now.
    fn check_queue_ok(c: &Ctrl, range: &QidRange) -> Result {
        if range.shadow && !range.user {
            if glue::have_user_queues() {
                pr_info!(
                    "nvme{}: shadow doorbells (Doorbell Buffer Config) are active and \
                     nvme-pci reserved no user queues; boot with nvme.user_queues=N\n",
                    c.instance()
                );
            } else {
                pr_info!(
                    "nvme{}: shadow doorbells (Doorbell Buffer Config) are active; a stock \
                     nvme-pci keeps them private, so homi queues cannot work here (a kernel \
                     with qemu/patches and nvme.user_queues=N can)\n",
                    c.instance()
                );
            }
            return Err(errno(bindings::EOPNOTSUPP));
        }
        if !c.live() {
            pr_info!(
                "nvme{}: controller is not live (resetting?)\n",
                c.instance()
            );
            return Err(EAGAIN);
        }
        Ok(())
    }

    /// Issues Create I/O CQ then SQ for `q`; on failure leaves nothing on the controller.
    fn create_on_ctrl(c: &Ctrl, q: &QueuePair) -> Result {
        admin::create_cq(c, q.qid, q.depth, q.cq.dma())?;
        if let Err(e) = admin::create_sq(c, q.qid, q.depth, q.sq.dma()) {
            let _ = admin::delete_cq(c, q.qid);
            return Err(e);
        }
        Ok(())
    }

    pub(crate) fn create_qpair(&self, req: &HomiQpair) -> Result<HomiQpair> {
        if req.flags != 0 {
            return Err(EINVAL);
        }
        self.with_attached(|a| {
            let c = &a.ctrl;
            let cap = c.cap();
            let mqes = (cap & 0xffff) as u32 + 1;
            if req.depth < 2 || req.depth > mqes {
                pr_info!(
                    "nvme{}: queue depth {} outside 2..={}\n",
                    c.instance(),
                    req.depth,
                    mqes
                );
                return Err(EINVAL);
            }
            let range = QidRange::of(c)?;
            Self::check_queue_ok(c, &range)?;
            if a.queues.len() >= MAX_QPAIRS_PER_FILE {
                return Err(EMFILE);
            }
            let stride = u64::from(c.doorbell_stride());
            let (bar, _) = c.bar();
            let qid = match reserve_qid(c, range.first, range.last) {
                Ok(q) => q,
                Err(e) => {
                    if range.user {
                        pr_info!(
                            "nvme{}: no spare queues: homi holds all of nvme-pci's user queues \
                             (qids {}..={})\n",
                            c.instance(),
                            range.first,
                            range.last
                        );
                    } else {
                        pr_info!(
                            "nvme{}: no spare queues: the driver uses qids 1..={}, the \
                             controller granted up to qid {}, and homi holds the rest\n",
                            c.instance(),
                            range.first - 1,
                            range.last
                        );
                    }
                    return Err(e);
                }
            };
            let made = (|| {
                let shadow = Shadow::new(c, &range, qid)?;
                let sq = DmaRegion::alloc(&c.dev_ref()?, req.depth as usize * 64)?;
                let cq = DmaRegion::alloc(&c.dev_ref()?, req.depth as usize * 16)?;
                let db = DOORBELL_BASE + 2 * u64::from(qid) * stride;
                let q = QueuePair {
                    qid,
                    depth: req.depth,
                    sq_pgoff: take_pgoffs(sq.size()),
                    cq_pgoff: take_pgoffs(cq.size()),
                    db_pgoff: take_pgoffs(PAGE_SIZE),
                    db_phys: bar + (db & !(PAGE_SIZE as u64 - 1)),
                    db_offset: (db & (PAGE_SIZE as u64 - 1)) as u32,
                    generation: c.generation(),
                    live: false,
                    shadow,
                    sq,
                    cq,
                };
                Ok::<_, Error>(q)
            })();
            let mut q = match made {
                Ok(q) => q,
                Err(e) => {
                    release_qid(c.key(), qid);
                    return Err(e);
                }
            };
            let bytes = q.sq.size() + q.cq.size();
            if let Err(e) = a.charge_dma(bytes) {
                release_qid(a.ctrl.key(), qid);
                return Err(e);
            }
            if let Err(e) = a
                .queues
                .reserve(1, GFP_KERNEL)
                .map_err(Error::from)
                .and_then(|()| Self::create_on_ctrl(&a.ctrl, &q))
            {
                a.dma_bytes -= bytes;
                release_qid(a.ctrl.key(), qid);
                return Err(e);
            }
            q.live = true;
            QPAIRS.fetch_add(1, Ordering::Relaxed);
            self.status.set_queue_state(qid, HOMI_QUEUE_LIVE);
            let reply = q.reply();
            // Cannot fail: room was reserved above.
            a.queues.push(q, GFP_KERNEL)?;
            Ok(reply)
        })
    }

    fn find_queue(a: &Attached, id: u32) -> Result<usize> {
        a.queues
            .iter()
            .position(|q| u32::from(q.qid) == id)
            .ok_or(ENOENT)
    }

    pub(crate) fn destroy_qpair(&self, req: &HomiId) -> Result {
        if req.flags != 0 {
            return Err(EINVAL);
        }
        self.with_attached(|a| {
            let i = Self::find_queue(a, req.id)?;
            let q = a.queues.remove(i).map_err(|_| ENOENT)?;
            self.retire_queue(a, &q, HOMI_QUEUE_NONE);
            a.dma_bytes -= q.sq.size() + q.cq.size();
            Ok(())
        })
    }

    pub(crate) fn rearm_qpair(&self, req: &HomiQpair) -> Result<HomiQpair> {
        if req.flags != 0 {
            return Err(EINVAL);
        }
        self.with_attached(|a| {
            let i = Self::find_queue(a, req.qid)?;
            if a.queues[i].live {
                return Err(EBUSY);
            }
            let range = QidRange::of(&a.ctrl)?;
            Self::check_queue_ok(&a.ctrl, &range)?;
            if !range.contains(a.queues[i].qid) {
                pr_info!(
                    "nvme{}: qid {} is no longer one homi may use (qids {}..={}); destroy it\n",
                    a.ctrl.instance(),
                    a.queues[i].qid,
                    range.first,
                    range.last
                );
                return Err(EBUSY);
            }
            // The reset may have turned shadow doorbells on or off.
            let shadow = Shadow::new(&a.ctrl, &range, a.queues[i].qid)?;
            let q = &a.queues[i];
            q.sq.zero();
            q.cq.zero();
            Self::create_on_ctrl(&a.ctrl, q)?;
            let generation = a.ctrl.generation();
            let q = &mut a.queues[i];
            q.live = true;
            q.generation = generation;
            // The old doorbell mappings stay revoked; the queue gets fresh offsets.
            q.db_pgoff = take_pgoffs(PAGE_SIZE);
            q.shadow = shadow;
            self.status.set_queue_state(q.qid, HOMI_QUEUE_LIVE);
            Ok(q.reply())
        })
    }

    pub(crate) fn alloc(&self, req: &HomiAlloc) -> Result<HomiAlloc> {
        if req.flags != 0
            || req.size == 0
            || req.size > HOMI_ALLOC_MAX
            || req.size % PAGE_SIZE as u64 != 0
        {
            return Err(EINVAL);
        }
        self.with_attached(|a| {
            if a.buffers.len() + a.regs.len() >= MAX_OBJECTS_PER_FILE {
                return Err(EMFILE);
            }
            let size = req.size as usize;
            a.charge_dma(size)?;
            let mem = match a
                .ctrl
                .dev_ref()
                .and_then(|d| DmaRegion::alloc(&d, size))
                .and_then(|m| {
                    a.buffers
                        .reserve(1, GFP_KERNEL)
                        .map(|()| m)
                        .map_err(Error::from)
                }) {
                Ok(m) => m,
                Err(e) => {
                    a.dma_bytes -= size;
                    return Err(e);
                }
            };
            let b = Buffer {
                id: a.next_id(),
                pgoff: take_pgoffs(mem.size()),
                mem,
            };
            let reply = HomiAlloc {
                size: req.size,
                flags: 0,
                id: b.id,
                offset: b.pgoff << PAGE_SHIFT,
                dma_addr: b.mem.dma(),
            };
            a.buffers.push(b, GFP_KERNEL)?;
            Ok(reply)
        })
    }

    pub(crate) fn free(&self, req: &HomiId) -> Result {
        if req.flags != 0 {
            return Err(EINVAL);
        }
        self.with_attached(|a| {
            let i = a
                .buffers
                .iter()
                .position(|b| b.id == req.id)
                .ok_or(ENOENT)?;
            let b = a.buffers.remove(i).map_err(|_| ENOENT)?;
            zap(self.mapping, b.pgoff, b.mem.size());
            a.dma_bytes -= b.mem.size();
            Ok(())
        })
    }

    pub(crate) fn register(&self, req: &HomiRegister) -> Result<HomiRegister> {
        let page = PAGE_SIZE as u64;
        if req.flags != 0
            || req.id != 0
            || req.len == 0
            || req.addr % page != 0
            || req.len % page != 0
        {
            return Err(EINVAL);
        }
        let pages = usize::try_from(req.len / page).map_err(|_| EINVAL)?;
        // Pinning and copying the addresses out can take the mmap lock, which mmap()
        // holds while it takes `inner`: so check the limits under `inner`, pin and copy
        // without it, and take it again to record the registration.
        let check = |a: &Attached| {
            if a.buffers.len() + a.regs.len() >= MAX_OBJECTS_PER_FILE {
                return Err(EMFILE);
            }
            if a.pinned_pages.saturating_add(pages) > MAX_PINNED_PAGES_PER_FILE {
                pr_info!(
                    "nvme{}: per-file pinned memory limit reached\n",
                    a.ctrl.instance()
                );
                return Err(ENOMEM);
            }
            Ok(())
        };
        let (dev, ctrl) = self.with_attached(|a| {
            check(a)?;
            Ok((a.ctrl.dev_ref()?, a.ctrl.key()))
        })?;
        let pinned = Pinned::new(&dev, req.addr, req.len)?;
        let mut w = UserSlice::new(UserPtr::from_addr(req.dma_addrs as usize), pages * 8).writer();
        pinned.for_each_page_dma(|addr| w.write(&addr))?;
        self.with_attached(|a| {
            // Another thread may have registered meanwhile, or the controller changed.
            if a.ctrl.key() != ctrl {
                return Err(ENODEV);
            }
            check(a)?;
            a.regs.reserve(1, GFP_KERNEL)?;
            a.pinned_pages += pinned.nr_pages();
            let id = a.next_id();
            a.regs.push(Registration { id, pinned }, GFP_KERNEL)?;
            Ok(HomiRegister { id, ..*req })
        })
    }

    pub(crate) fn unregister(&self, req: &HomiId) -> Result {
        if req.flags != 0 {
            return Err(EINVAL);
        }
        self.with_attached(|a| {
            let i = a.regs.iter().position(|r| r.id == req.id).ok_or(ENOENT)?;
            let r = a.regs.remove(i).map_err(|_| ENOENT)?;
            a.pinned_pages -= r.pinned.nr_pages();
            Ok(())
        })
    }

    pub(crate) fn mmap(&self, vma: &VmaNew) -> Result {
        // SAFETY: `vma` is being set up under the mmap lock; reading its offset is fine.
        let pgoff = unsafe { (*vma.as_ptr()).vm_pgoff } as u64;
        if vma.flags() & bindings::VM_SHARED == 0 {
            return Err(EINVAL);
        }
        vma.set_dontcopy();
        vma.set_dontexpand();
        vma.set_dontdump();
        if pgoff == HOMI_STATUS_OFFSET >> PAGE_SHIFT {
            return self.status.mmap(vma);
        }
        self.with_attached(|a| {
            if let Some(b) = a.buffers.iter().find(|b| b.pgoff == pgoff) {
                b.mem.mmap(vma)?;
            } else if let Some(q) = a.queues.iter().find(|q| q.sq_pgoff == pgoff) {
                q.sq.mmap(vma)?;
            } else if let Some(q) = a.queues.iter().find(|q| q.cq_pgoff == pgoff) {
                q.cq.mmap(vma)?;
            } else if let Some((q, eventidx)) = a.queues.iter().filter(|q| q.live).find_map(|q| {
                let s = q.shadow.as_ref()?;
                (s.pgoff == pgoff || s.eventidx_pgoff == pgoff)
                    .then_some((q, s.eventidx_pgoff == pgoff))
            }) {
                // SAFETY: `vma` is being set up under the mmap lock; nvme-pci checks
                // that it is one page, and read-only for the event index.
                unsafe { a.ctrl.mmap_shadow(vma.as_ptr().cast(), q.qid, eventidx) }?;
            } else if let Some(q) = a.queues.iter().find(|q| q.live && q.db_pgoff == pgoff) {
                if vma.end() - vma.start() != PAGE_SIZE {
                    return Err(EINVAL);
                }
                vma.set_io();
                // SAFETY: `vma` is being set up under the mmap lock and is one page;
                // `db_phys` is the BAR0 page holding this queue's doorbells.
                kernel::error::to_result(unsafe {
                    glue::homi_mmap_mmio(vma.as_ptr().cast(), q.db_phys)
                })?;
            } else {
                return Err(EINVAL);
            }
            // SAFETY: `vma` is being set up under the mmap lock and was fully populated
            // above; from now on a fault means homi revoked it.
            unsafe { glue::homi_vma_revocable(vma.as_ptr().cast()) };
            Ok(())
        })
    }

    /// Called after every controller state change (reset, deletion).
    fn state_changed(&self) {
        let mut inner = self.inner.lock();
        let Inner::Attached(a) = &mut *inner else {
            return;
        };
        let generation = self.publish_ctrl_state(&a.ctrl);
        for q in a.queues.iter_mut() {
            if q.live && q.generation != generation {
                // The reset destroyed the queue on the controller. Its rings stay valid
                // memory until it is destroyed; its doorbells are taken away so nothing
                // rings a queue that no longer exists.
                self.status.set_queue_state(q.qid, HOMI_QUEUE_DEAD);
                self.zap_doorbells(q);
                q.live = false;
            }
        }
    }

    /// Copies the controller's generation and state to the status page; returns the
    /// generation.
    fn publish_ctrl_state(&self, c: &Ctrl) -> u64 {
        let generation = c.generation();
        self.status.set_generation(generation);
        self.status.set_ctrl_state(if c.live() {
            HOMI_CTRL_LIVE
        } else {
            HOMI_CTRL_NOT_LIVE
        });
        generation
    }

    /// The controller's PCI device `dev` is about to be unbound from its driver.
    fn unbinding(&self, dev: *mut bindings::device) {
        let ours = match &*self.inner.lock() {
            Inner::Attached(a) => core::ptr::eq(a.ctrl.dma_dev(), dev),
            _ => false,
        };
        if ours {
            pr_info!("controller unbinding: revoking homi queues and memory\n");
            self.teardown(Inner::Gone);
        }
    }
}

/// LIST_QPAIRS: copies up to `req.capacity` entries to user space and returns how many
/// queue pairs exist.
pub(crate) fn list_qpairs(req: &HomiList) -> Result<u32> {
    if !(req.capacity == 0 || req.entries != 0) {
        return Err(EFAULT);
    }
    // SAFETY: `capable` only reads the current task's credentials.
    if !unsafe { bindings::capable(bindings::CAP_SYS_RAWIO as i32) } {
        return Err(EPERM);
    }
    let mut all = KVec::new();
    for f in FILES.lock().iter() {
        if let Inner::Attached(a) = &*f.inner.lock() {
            for q in a.queues.iter() {
                let state = if q.live {
                    HOMI_QUEUE_LIVE
                } else {
                    HOMI_QUEUE_DEAD
                };
                let e = HomiQpairEntry {
                    pid: a.pid as u32,
                    instance: a.ctrl.instance(),
                    qid: u32::from(q.qid),
                    depth: q.depth,
                    state,
                    reserved: 0,
                };
                all.push(e, GFP_KERNEL)?;
            }
        }
    }
    // Copied with no lock held: the copy can fault and take the mmap lock.
    let n = all.len().min(req.capacity as usize);
    let bytes = n.checked_mul(size_of::<HomiQpairEntry>()).ok_or(EINVAL)?;
    let mut w = UserSlice::new(UserPtr::from_addr(req.entries as usize), bytes).writer();
    for e in all.iter().take(n) {
        w.write(e)?;
    }
    u32::try_from(all.len()).map_err(|_| EOVERFLOW)
}

/// `homi_watch` callback, in process context.
///
/// # Safety
///
/// `ctx` is a `FileState` whose watch is still running (see `attach`).
unsafe extern "C" fn state_changed(ctx: *mut c_void) {
    // SAFETY: the watch is stopped before the `FileState` can go away.
    let me = unsafe { &*(ctx as *const FileState) };
    me.state_changed();
}

/// PCI bus notifier callback: `dev` is about to lose its driver.
///
/// # Safety
///
/// `dev` is a valid device for the duration of the call.
pub(crate) unsafe extern "C" fn unbinding(dev: *mut c_void) {
    for f in FILES.lock().iter() {
        f.unbinding(dev.cast());
    }
}
