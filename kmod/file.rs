// SPDX-License-Identifier: GPL-2.0

//! One open file of `/dev/homi`: attaching it to a controller, what it does when the
//! controller's state changes, its mappings and their faults, INFO and LIST_QPAIRS,
//! and its teardown on close, reset and unbind. The queue ioctls are in
//! `file_queues.rs`, the memory ioctls in `file_memory.rs`, what an attached file
//! holds in `attached.rs`.
//!
//! Locking: a file's `inner` may be held while taking the module-wide locks of
//! [`registry`](crate::registry), never the other way round. Nothing copies to or from
//! user space, or pins user pages, with `inner` held: the mmap lock is taken before
//! `inner` by mmap and faults. The last reference to a controller entry is never
//! dropped with `inner` held (stopping its state watch waits for a callback that may
//! need `inner`).

use core::mem;
use core::sync::atomic::Ordering;

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

use crate::attached::Attached;
use crate::dma::{
    DMA_BYTES,
    PINNED_PAGES, //
};
use crate::glue::{
    self,
    refuse,
    Ctrl, //
};
use crate::mapping::{
    self,
    zap,
    Backing,
    Object,
    PAGE_SHIFT,
    PAGE_SIZE, //
};
use crate::memory::QUARANTINED;
use crate::queue::{
    DoorbellMap,
    Gate,
    QueuePair,
    DOORBELL_BASE, //
};
use crate::registry::{
    self,
    Controller,
    QidRange, //
};
use crate::status::{
    KernelPage,
    MapStatusPage,
    StatusPage, //
};
use crate::uapi::*;
use crate::ModuleRef;

pub(crate) enum Inner {
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
    pub(crate) inner: Mutex<Inner>,
    /// The file's `address_space`, for revoking user mappings.
    pub(crate) mapping: usize,
    pub(crate) status: StatusPage,
    pub(crate) map_status: MapStatusPage,
    /// What revoked mappings of this file show.
    sink: KernelPage,
    /// The doorbell pages of its live queues, for revocation at reset without `inner`
    /// (which an ioctl may hold across admin commands that wait for the reset). Taken
    /// after `inner`, or alone; a leaf.
    #[pin]
    doorbells: Mutex<KVec<DoorbellMap>>,
    _module: ModuleRef,
}

/// A plain reference to the file behind `fd` of the calling process (`EBADF` for none).
pub(crate) fn file_of_fd(fd: i32) -> Result<ARef<File>> {
    let local = LocalFile::fget(u32::try_from(fd).map_err(|_| EBADF)?)?;
    // SAFETY: the callers hold no `fdget_pos` on that file: they are in an ioctl on a
    // file of `/dev/homi`, and keep the reference only as a plain reference.
    Ok(unsafe { LocalFile::assume_no_fdget_pos(local) })
}

pub(crate) fn capable_rawio() -> bool {
    // SAFETY: `capable` only reads the current task's credentials; it checks the
    // initial user namespace.
    unsafe { bindings::capable(bindings::CAP_SYS_RAWIO as i32) }
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
                map_status: MapStatusPage::new()?,
                sink: KernelPage::new()?,
                doorbells <- new_mutex!(KVec::new()),
                _module: ModuleRef::get()?,
            }),
            GFP_KERNEL,
        )
    }

    pub(crate) fn with_attached<T>(&self, f: impl FnOnce(&mut Attached) -> Result<T>) -> Result<T> {
        match &mut *self.inner.lock() {
            Inner::Attached(a) => f(a),
            Inner::Detached => Err(glue::errno(bindings::ENOTCONN)),
            Inner::Gone => Err(ENODEV),
        }
    }

    /// Copies the controller's epoch and state to the status page.
    fn publish_ctrl_state(&self, c: &Controller) -> u64 {
        let epoch = c.epoch();
        self.status.set_generation(epoch);
        self.status.set_ctrl_state(if c.ctrl.live() {
            HOMI_CTRL_LIVE
        } else {
            HOMI_CTRL_NOT_LIVE
        });
        epoch
    }

    pub(crate) fn attach(self: ArcBorrow<'_, Self>, req: &HomiAttach) -> Result {
        if req.flags != 0 {
            return Err(EINVAL);
        }
        if !capable_rawio() {
            return Err(EPERM);
        }
        if glue::locked_down().is_err() {
            refuse!("attach: refused under kernel lockdown (raw PCI access)\n");
            return Err(EPERM);
        }
        let fd = req.nvme_fd;
        let nvme_file = file_of_fd(fd)?;
        let Some(ctrl) = Ctrl::from_file(&nvme_file) else {
            refuse!(
                "attach: fd {} is not an nvme-pci controller (/dev/nvmeX)\n",
                fd
            );
            return Err(ENODEV);
        };
        if nvme_file.flags() & bindings::O_ACCMODE != bindings::O_RDWR {
            refuse!(
                "attach: nvme{} must be opened read-write\n",
                ctrl.instance()
            );
            return Err(EACCES);
        }
        if ctrl.deleting() {
            return Err(ENODEV);
        }
        let mut ctrl = Some(ctrl);
        loop {
            // An entry retired between the lookup and `add_file` says `EAGAIN`: look up
            // again, which makes a fresh one.
            let Some(ctrl) = ctrl.take().or_else(|| Ctrl::from_file(&nvme_file)) else {
                return Err(ENODEV);
            };
            match self.attach_to(Controller::get(ctrl)?, &nvme_file) {
                Err(e) if e == EAGAIN => continue,
                res => return res,
            }
        }
    }

    fn attach_to(self: ArcBorrow<'_, Self>, c: Arc<Controller>, nvme_file: &ARef<File>) -> Result {
        let mut inner = self.inner.lock();
        let res = match *inner {
            Inner::Detached => c.add_file(self.into()),
            Inner::Attached(_) => Err(EBUSY),
            Inner::Gone => Err(ENODEV),
        };
        if res.is_ok() {
            self.publish_ctrl_state(&c);
            *inner = Inner::Attached(Attached {
                c: c.clone(),
                queues: KVec::new(),
                zombies: KVec::new(),
                buffers: KVec::new(),
                regs: KVec::new(),
                waiting: KVec::new(),
                maps: KVec::new(),
                map_slots: Default::default(),
                next_id: 0,
                pid: kernel::current!().tgid_nr_ns(None),
                _nvme_file: nvme_file.clone(),
            });
        }
        drop(inner);
        // Dropped with `inner` released (see the locking rules above).
        drop(c);
        res
    }

    /// Tears everything down, on close (`then` is `Detached`) and unbind (`Gone`). Every
    /// mapping is revoked first; each queue is deleted on the controller; what a queue
    /// that may still exist could reach goes to the controller's quarantine.
    fn teardown(&self, then: Inner) {
        let gone = matches!(then, Inner::Gone);
        let a = {
            let mut inner = self.inner.lock();
            let Inner::Attached(mut a) = mem::replace(&mut *inner, then) else {
                return;
            };
            if gone {
                // Tell user space first: revoked mappings read as the sink page.
                self.status.set_ctrl_state(HOMI_CTRL_GONE);
            }
            let qstate = if gone {
                HOMI_QUEUE_DEAD
            } else {
                HOMI_QUEUE_NONE
            };
            for q in a.queues.iter() {
                self.status.set_queue_state(q.slot, qstate);
                q.zap(self.mapping);
            }
            self.doorbells.lock().clear();
            for b in a.buffers.iter() {
                zap(self.mapping, b.pgoff, b.mem.size());
            }
            while let Some(q) = a.queues.pop() {
                a.retire(q);
            }
            // File maps go after the queues: with `a` below, or with the quarantine.
            a.sweep();
            if !a.zombies.is_empty() {
                a.quarantine_rest();
            }
            a.c.remove_file(self);
            a
            // Dropped below with `inner` released: memory, the nvme file, and the
            // controller entry.
        };
        drop(a);
    }

    /// The file is closing (also when its process died).
    pub(crate) fn release(self: Arc<Self>) {
        self.teardown(Inner::Detached);
    }

    /// The controller `_c` is being unbound from its driver.
    pub(crate) fn unbound(&self, _c: &Controller) {
        self.teardown(Inner::Gone);
    }

    /// First response to a state change, before `inner` (an ioctl may hold it across
    /// admin commands waiting for the reset): publishes the controller's state, and
    /// marks dead and revokes the doorbells of every queue a reset began after. The
    /// fault handler checks the epoch under the same lock, so no doorbell page is mapped
    /// again afterwards.
    pub(crate) fn revoke_doorbells(&self, c: &Controller) {
        let epoch = self.publish_ctrl_state(c);
        self.doorbells.lock().retain(|d| {
            let dead = epoch > d.born;
            if dead {
                self.status.set_queue_state(d.slot, HOMI_QUEUE_DEAD);
                d.zap(self.mapping);
            }
            !dead
        });
    }

    /// Records (or replaces) the doorbell pages of a queue that just became live.
    pub(crate) fn track_doorbells(&self, q: &QueuePair) -> Result {
        let mut maps = self.doorbells.lock();
        // A replaced record's pages are revoked: nothing else would.
        maps.retain(|d| {
            if d.slot == q.slot {
                d.zap(self.mapping);
            }
            d.slot != q.slot
        });
        maps.push(q.doorbell_map(), GFP_KERNEL)?;
        Ok(())
    }

    pub(crate) fn untrack_doorbells(&self, slot: u32) {
        self.doorbells.lock().retain(|d| d.slot != slot);
    }

    /// The controller's state changed: a reset begun since a queue was created makes it
    /// dead to user space (its doorbells are revoked, its rings kept until destroy or
    /// rearm); what the reset freed is released.
    pub(crate) fn state_changed(&self) {
        let mut inner = self.inner.lock();
        let Inner::Attached(a) = &mut *inner else {
            return;
        };
        let epoch = self.publish_ctrl_state(&a.c);
        for q in a.queues.iter_mut() {
            if q.live && q.reset_since(epoch) {
                self.status.set_queue_state(q.slot, HOMI_QUEUE_DEAD);
                q.zap_doorbells(self.mapping);
                q.live = false;
            }
        }
        a.sweep();
    }

    pub(crate) fn info(&self) -> Result<HomiInfo> {
        self.with_attached(|a| {
            let c = &a.c.ctrl;
            let cap = c.cap();
            let range = QidRange::of(c)?;
            let mut info = HomiInfo {
                instance: c.instance(),
                driver_io_queues: c.io_queues(),
                granted_io_queues: range.granted,
                first_spare_qid: range.first,
                spare_free: range.len().saturating_sub(a.c.reserved() as u32),
                max_queue_entries: (cap & 0xffff) as u32 + 1,
                doorbell_stride: c.doorbell_stride(),
                min_page_size: 4096 << ((cap >> 48) & 0xf),
                max_transfer: c.max_transfer(),
                cap,
                generation: a.c.epoch(),
                pinned_pages: PINNED_PAGES.load(Ordering::Relaxed),
                dma_bytes: DMA_BYTES.load(Ordering::Relaxed),
                qpairs: crate::QPAIRS.load(Ordering::Relaxed),
                quarantined_bytes: QUARANTINED.load(Ordering::Relaxed),
                refused_calls: glue::REFUSED.load(Ordering::Relaxed),
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
            if c.iommu_translates() {
                info.flags |= HOMI_INFO_IOMMU;
            }
            let stride = u64::from(c.doorbell_stride());
            let first_page =
                (DOORBELL_BASE + 2 * u64::from(range.first) * stride) & !(PAGE_SIZE as u64 - 1);
            let kernel_end = DOORBELL_BASE + 2 * (u64::from(c.io_queues()) + 1) * stride;
            if first_page < kernel_end {
                info.flags |= HOMI_INFO_SHARED_DOORBELLS;
            }
            let (nss, more) = crate::admin::namespaces(c, HOMI_MAX_NAMESPACES)?;
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

    pub(crate) fn mmap(&self, vma: &VmaNew) -> Result {
        // SAFETY: `vma` is being set up under the mmap lock; reading its offset is fine.
        let pgoff = unsafe { (*vma.as_ptr()).vm_pgoff } as u64;
        if vma.flags() & bindings::VM_SHARED == 0 {
            refuse!("mmap: homi mappings must be MAP_SHARED\n");
            return Err(EINVAL);
        }
        if pgoff == HOMI_STATUS_OFFSET >> PAGE_SHIFT
            || pgoff == HOMI_MAP_STATUS_OFFSET >> PAGE_SHIFT
        {
            let status = Object {
                pgoff,
                bytes: PAGE_SIZE,
                writable: false,
                mmio: false,
            };
            return mapping::setup(vma, self, &status);
        }
        self.with_attached(|a| {
            let Some((obj, _, _)) = a.lookup(pgoff) else {
                refuse!(
                    "mmap: no homi object at offset {:#x}\n",
                    pgoff << PAGE_SHIFT
                );
                return Err(EINVAL);
            };
            mapping::setup(vma, self, &obj)
        })
    }

    /// A page fault at page offset `pgoff` of one of this file's mappings: inserts what
    /// backs it now, or the sink page if it was revoked, with `inner` held so that no
    /// revocation can run in between.
    pub(crate) fn fault(&self, pgoff: u64, insert: impl FnOnce(Backing) -> u32) -> u32 {
        let inner = self.inner.lock();
        let sink = Backing::Kernel(self.sink.addr());
        if pgoff == HOMI_STATUS_OFFSET >> PAGE_SHIFT {
            return insert(Backing::Kernel(self.status.addr()));
        }
        if pgoff == HOMI_MAP_STATUS_OFFSET >> PAGE_SHIFT {
            return insert(Backing::Kernel(self.map_status.addr()));
        }
        let Inner::Attached(a) = &*inner else {
            return insert(sink);
        };
        match a.lookup(pgoff) {
            None => insert(sink),
            Some((_, backing, Gate::Always)) => insert(backing),
            // A doorbell page: checked and inserted under the lock the reset's
            // revocation takes, against the epoch the watch bumps synchronously.
            Some((_, backing, Gate::Doorbell(born))) => {
                let _maps = self.doorbells.lock();
                if born == Some(a.c.epoch()) {
                    insert(backing)
                } else {
                    insert(sink)
                }
            }
        }
    }
}

/// LIST_QPAIRS: copies up to `req.capacity` entries to user space and returns how many
/// queue pairs exist.
pub(crate) fn list_qpairs(req: &HomiList) -> Result<u32> {
    if !(req.capacity == 0 || req.entries != 0) {
        return Err(EFAULT);
    }
    if !capable_rawio() {
        return Err(EPERM);
    }
    let mut all = KVec::new();
    for c in registry::all()?.iter() {
        for f in c.files()?.iter() {
            if let Inner::Attached(a) = &*f.inner.lock() {
                for q in a.queues.iter() {
                    all.push(q.entry(a.pid, c.ctrl.instance()), GFP_KERNEL)?;
                }
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
