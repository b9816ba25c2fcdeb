// SPDX-License-Identifier: GPL-2.0

//! One open file of `/dev/homi`: the controller it is attached to, its queue pairs,
//! buffers and registrations, the ioctls that change them, the page faults of its
//! mappings, and its teardown on close, reset and unbind.
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

use crate::dma::{
    DmaRegion,
    Pinned,
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
    take_pgoffs,
    zap,
    Backing,
    Object,
    PAGE_SHIFT,
    PAGE_SIZE, //
};
use crate::memory::{
    Buffer,
    Held,
    Memory,
    Registration,
    Waiting,
    QUARANTINED, //
};
use crate::queue::{
    QueuePair,
    Zombie,
    DOORBELL_BASE, //
};
use crate::registry::{
    self,
    Controller,
    Package,
    QidRange, //
};
use crate::status::{
    KernelPage,
    StatusPage, //
};
use crate::uapi::*;
use crate::ModuleRef;

/// Buffers plus registrations one file may hold. Memory itself is limited per process
/// (`RLIMIT_MEMLOCK`) and module-wide, not per file.
const MAX_OBJECTS_PER_FILE: usize = 1024;

/// What a file holds once attached.
struct Attached {
    c: Arc<Controller>,
    queues: KVec<QueuePair>,
    zombies: KVec<Zombie>,
    buffers: KVec<Buffer>,
    regs: KVec<Registration>,
    waiting: KVec<Waiting>,
    next_id: u32,
    /// The process that attached, for LIST_QPAIRS.
    pid: i32,
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
    /// What revoked mappings of this file show.
    sink: KernelPage,
    _module: ModuleRef,
}

fn capable_rawio() -> bool {
    // SAFETY: `capable` only reads the current task's credentials; it checks the
    // initial user namespace.
    unsafe { bindings::capable(bindings::CAP_SYS_RAWIO as i32) }
}

impl Attached {
    fn next_id(&mut self) -> u32 {
        self.next_id = self.next_id.wrapping_add(1).max(1);
        self.next_id
    }

    /// The queue lives that may still exist on the controller.
    fn lives(&mut self) -> Result<KVec<u64>> {
        let mut out = KVec::new();
        for q in self.queues.iter_mut() {
            if q.may_exist(&self.c) {
                out.push(q.life, GFP_KERNEL)?;
            }
        }
        for z in self.zombies.iter() {
            if !self.c.gone(z.born) {
                out.push(z.life, GFP_KERNEL)?;
            }
        }
        Ok(out)
    }

    /// Frees what nothing can reach any more: zombies the controller's reset took, and
    /// memory that waited only for queues that are gone.
    fn sweep(&mut self) {
        let c = self.c.clone();
        self.zombies.retain(|z| {
            let gone = c.gone(z.born);
            if gone {
                c.release_qid(z.qid);
            }
            !gone
        });
        let Ok(lives) = self.lives() else { return };
        self.waiting.retain(|w| !w.releasable(&lives));
    }

    /// Lets go of `mem`: freed now if no queue that could reach it may exist, else kept
    /// until none does.
    fn park(&mut self, mem: Memory) -> Result {
        let lives = self.lives()?;
        if lives.is_empty() {
            return Ok(());
        }
        self.waiting.reserve(1, GFP_KERNEL)?;
        self.waiting.push(
            Waiting {
                held: Held::new(mem),
                lives,
            },
            GFP_KERNEL,
        )?;
        Ok(())
    }

    /// Deletes `q` on the controller and frees it, or keeps it as a zombie if it may
    /// still exist. The caller revoked its mappings.
    fn retire(&mut self, mut q: QueuePair) {
        crate::QPAIRS.fetch_sub(1, Ordering::Relaxed);
        if q.delete(&self.c) {
            self.c.release_qid(q.qid);
        } else if self.zombies.push(q.into_zombie(), GFP_KERNEL).is_err() {
            pr_err!("out of memory: leaking a queue that may still exist\n");
        }
    }

    /// The object at page offset `pgoff` and what backs that page.
    fn lookup(&self, pgoff: u64) -> Option<(Object, Backing)> {
        for b in self.buffers.iter() {
            let Some(i) = pgoff.checked_sub(b.pgoff) else {
                continue;
            };
            if let Some(page) = usize::try_from(i).ok().and_then(|i| b.mem.page(i)) {
                let obj = Object {
                    pgoff: b.pgoff,
                    bytes: b.mem.size(),
                    writable: true,
                    mmio: false,
                };
                return Some((obj, Backing::Kernel(page)));
            }
        }
        self.queues.iter().find_map(|q| q.lookup(pgoff))
    }
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
                sink: KernelPage::new()?,
                _module: ModuleRef::get()?,
            }),
            GFP_KERNEL,
        )
    }

    fn with_attached<T>(&self, f: impl FnOnce(&mut Attached) -> Result<T>) -> Result<T> {
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
        let fd = u32::try_from(req.nvme_fd).map_err(|_| EBADF)?;
        let local = LocalFile::fget(fd)?;
        // SAFETY: this thread holds no `fdget_pos` on that file: it is in an ioctl on a
        // different file, and keeps the reference only as a plain reference.
        let nvme_file = unsafe { LocalFile::assume_no_fdget_pos(local) };
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
        let c = Controller::get(ctrl)?;
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
                next_id: 0,
                pid: kernel::current!().tgid_nr_ns(None),
                _nvme_file: nvme_file,
            });
        }
        drop(inner);
        registry::put(c);
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
            for b in a.buffers.iter() {
                zap(self.mapping, b.pgoff, b.mem.size());
            }
            while let Some(q) = a.queues.pop() {
                a.retire(q);
            }
            a.sweep();
            a.c.remove_file(self);
            if !a.zombies.is_empty() {
                self.quarantine_rest(&mut a);
            }
            a
            // Dropped below with `inner` released: memory, the nvme file, and the
            // controller entry.
        };
        let Attached { c, .. } = a;
        registry::put(c);
    }

    /// Moves what `a` still holds into one package of its controller's quarantine.
    fn quarantine_rest(&self, a: &mut Attached) {
        let born = a.zombies.iter().map(|z| z.born).max().unwrap_or(0);
        let mut qids = KVec::new();
        let mut held = KVec::new();
        let mut keep = || -> Result {
            for z in mem::take(&mut a.zombies) {
                qids.push(z.qid, GFP_KERNEL)?;
                for r in z.rings {
                    held.push(r, GFP_KERNEL)?;
                }
            }
            for b in mem::take(&mut a.buffers) {
                held.push(Held::new(Memory::Coherent(b.mem)), GFP_KERNEL)?;
            }
            for r in mem::take(&mut a.regs) {
                held.push(Held::new(Memory::Pinned(r.pinned)), GFP_KERNEL)?;
            }
            for w in mem::take(&mut a.waiting) {
                held.push(w.held, GFP_KERNEL)?;
            }
            Ok(())
        };
        let kept = keep();
        match kept.and_then(|()| Package::new(born, qids, held)) {
            Ok(p) => a.c.quarantine(p),
            Err(_) => pr_err!("out of memory: leaking quarantined memory\n"),
        }
    }

    /// The file is closing (also when its process died).
    pub(crate) fn release(self: Arc<Self>) {
        self.teardown(Inner::Detached);
    }

    /// The controller `_c` is being unbound from its driver.
    pub(crate) fn unbound(&self, _c: &Controller) {
        self.teardown(Inner::Gone);
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

    /// Checks that the controller can take a homi queue in `range` right now.
    fn check_queue_ok(c: &Ctrl, range: &QidRange) -> Result {
        if range.shadow && !range.user {
            if glue::have_user_queues() {
                refuse!(
                    "nvme{}: shadow doorbells (Doorbell Buffer Config) are active and \
                     nvme-pci reserved no user queues; boot with nvme.user_queues=N\n",
                    c.instance()
                );
            } else {
                refuse!(
                    "nvme{}: shadow doorbells (Doorbell Buffer Config) are active; a stock \
                     nvme-pci keeps them private, so homi queues cannot work here (a kernel \
                     with qemu/patches and nvme.user_queues=N can)\n",
                    c.instance()
                );
            }
            return Err(glue::errno(bindings::EOPNOTSUPP));
        }
        if !c.live() {
            refuse!(
                "nvme{}: controller is not live (resetting?)\n",
                c.instance()
            );
            return Err(EAGAIN);
        }
        Ok(())
    }

    pub(crate) fn create_qpair(&self, req: &HomiQpair) -> Result<HomiQpair> {
        if req.flags != 0 || req.reserved != 0 {
            return Err(EINVAL);
        }
        self.with_attached(|a| {
            let c = a.c.clone();
            let mqes = (c.ctrl.cap() & 0xffff) as u32 + 1;
            if req.depth < 2 || req.depth > mqes {
                refuse!(
                    "nvme{}: queue depth {} outside 2..={}\n",
                    c.ctrl.instance(),
                    req.depth,
                    mqes
                );
                return Err(EINVAL);
            }
            let range = QidRange::of(&c.ctrl)?;
            Self::check_queue_ok(&c.ctrl, &range)?;
            let slot = (0..HOMI_STATUS_SLOTS as u32)
                .find(|s| !a.queues.iter().any(|q| q.slot == *s))
                .ok_or(EMFILE)?;
            a.queues.reserve(1, GFP_KERNEL)?;
            a.zombies.reserve(1, GFP_KERNEL)?;
            let qid = c.reserve_qid(range.first, range.last).inspect_err(|_| {
                refuse!(
                    "nvme{}: no spare queues: qids {}..={} are all held (the driver uses \
                     1..={})\n",
                    c.ctrl.instance(),
                    range.first,
                    range.last,
                    c.ctrl.io_queues()
                );
            })?;
            let mut q = match QueuePair::new(&c, &range, qid, req.depth, slot) {
                Ok(q) => q,
                Err(e) => {
                    c.release_qid(qid);
                    return Err(e);
                }
            };
            if let Err(e) = q.create(&c) {
                if q.may_exist(&c) {
                    // Room was reserved above.
                    a.zombies.push(q.into_zombie(), GFP_KERNEL)?;
                } else {
                    c.release_qid(qid);
                }
                return Err(e);
            }
            c.warn_trust_once(q.db_page());
            crate::QPAIRS.fetch_add(1, Ordering::Relaxed);
            self.status.set_queue_state(slot, HOMI_QUEUE_LIVE);
            let reply = q.reply(c.epoch());
            // Room was reserved above.
            a.queues.push(q, GFP_KERNEL)?;
            Ok(reply)
        })
    }

    fn find_queue(a: &Attached, qid: u32) -> Result<usize> {
        a.queues
            .iter()
            .position(|q| u32::from(q.qid) == qid)
            .ok_or(ENOENT)
    }

    pub(crate) fn destroy_qpair(&self, req: &HomiId) -> Result {
        if req.flags != 0 {
            return Err(EINVAL);
        }
        self.with_attached(|a| {
            let i = Self::find_queue(a, req.id)?;
            let q = a.queues.remove(i).map_err(|_| ENOENT)?;
            self.status.set_queue_state(q.slot, HOMI_QUEUE_NONE);
            q.zap(self.mapping);
            a.retire(q);
            a.sweep();
            Ok(())
        })
    }

    pub(crate) fn rearm_qpair(&self, req: &HomiQpair) -> Result<HomiQpair> {
        if req.flags != 0 || req.reserved != 0 {
            return Err(EINVAL);
        }
        self.with_attached(|a| {
            let c = a.c.clone();
            let i = Self::find_queue(a, req.qid)?;
            let q = &mut a.queues[i];
            if q.live {
                return Err(EBUSY);
            }
            if q.may_exist(&c) {
                // The reset that killed it has not disabled the controller yet.
                return Err(EAGAIN);
            }
            let range = QidRange::of(&c.ctrl)?;
            Self::check_queue_ok(&c.ctrl, &range)?;
            if !range.contains(q.qid) {
                refuse!(
                    "nvme{}: qid {} is no longer one homi may use (qids {}..={}); destroy it\n",
                    c.ctrl.instance(),
                    q.qid,
                    range.first,
                    range.last
                );
                return Err(EBUSY);
            }
            q.rearm(&c, &range)?;
            self.status.set_queue_state(q.slot, HOMI_QUEUE_LIVE);
            Ok(q.reply(c.epoch()))
        })
    }

    pub(crate) fn alloc(&self, req: &HomiAlloc) -> Result<HomiAlloc> {
        if req.flags != 0
            || req.id != 0
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
            a.buffers.reserve(1, GFP_KERNEL)?;
            let mem = DmaRegion::alloc(&a.c.ctrl.dev_ref()?, req.size as usize)?;
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
            // Room was reserved above.
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
            a.park(Memory::Coherent(b.mem))
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
        // Pinning and copying the addresses out can take the mmap lock, which mmap and
        // faults hold while they take `inner`: so check under `inner`, pin and copy
        // without it, and take it again to record the registration.
        let check = |a: &Attached| {
            if a.buffers.len() + a.regs.len() >= MAX_OBJECTS_PER_FILE {
                return Err(EMFILE);
            }
            Ok(())
        };
        let (dev, ctrl) = self.with_attached(|a| {
            check(a)?;
            Ok((a.c.ctrl.dev_ref()?, a.c.ctrl.key()))
        })?;
        let pinned = Pinned::new(&dev, req.addr, req.len)?;
        let mut w = UserSlice::new(UserPtr::from_addr(req.dma_addrs as usize), pages * 8).writer();
        pinned.for_each_page_dma(|addr| w.write(&addr))?;
        self.with_attached(|a| {
            // Another thread may have registered meanwhile, or the file was re-attached.
            if a.c.ctrl.key() != ctrl {
                return Err(ENODEV);
            }
            check(a)?;
            a.regs.reserve(1, GFP_KERNEL)?;
            let id = a.next_id();
            // Room was reserved above.
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
            a.park(Memory::Pinned(r.pinned))
        })
    }

    pub(crate) fn mmap(&self, vma: &VmaNew) -> Result {
        // SAFETY: `vma` is being set up under the mmap lock; reading its offset is fine.
        let pgoff = unsafe { (*vma.as_ptr()).vm_pgoff } as u64;
        if vma.flags() & bindings::VM_SHARED == 0 {
            refuse!("mmap: homi mappings must be MAP_SHARED\n");
            return Err(EINVAL);
        }
        if pgoff == HOMI_STATUS_OFFSET >> PAGE_SHIFT {
            let status = Object {
                pgoff,
                bytes: PAGE_SIZE,
                writable: false,
                mmio: false,
            };
            return mapping::setup(vma, self, &status);
        }
        self.with_attached(|a| {
            let Some((obj, _)) = a.lookup(pgoff) else {
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
        let found = if pgoff == HOMI_STATUS_OFFSET >> PAGE_SHIFT {
            Some(Backing::Kernel(self.status.addr()))
        } else if let Inner::Attached(a) = &*inner {
            a.lookup(pgoff).map(|(_, b)| b)
        } else {
            None
        };
        insert(found.unwrap_or(Backing::Kernel(self.sink.addr())))
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
