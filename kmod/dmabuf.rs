// SPDX-License-Identifier: GPL-2.0

//! dma-bufs imported for the controller (REGISTER_DMABUF): GPU memory, a udmabuf,
//! another device's memory.
//!
//! The import is a dynamic attachment to the controller's own PCI device, peer-to-peer
//! capable, pinned and mapped for as long as the registration lives. Exporters such as
//! NVIDIA's compute addresses for the attaching device, and a static attach can make
//! an exporter migrate the buffer to host memory; a dynamic one with a pin cannot.
//!
//! A pinned attachment should never be moved. If the exporter still calls
//! `invalidate_mappings`, the registration is marked revoked at once and a work item
//! then makes every queue of the file dead as a reset would (status `DEAD`, doorbells
//! revoked), deletes them, and unmaps the attachment once none of them may exist any
//! more. The teardown order of the lifetime rule holds throughout: unmap, unpin,
//! detach and put only after every queue that could reach the memory is gone.
//!
//! C header: [`include/linux/dma-buf.h`](srctree/include/linux/dma-buf.h)

use core::ptr::NonNull;
use core::sync::atomic::{
    AtomicBool,
    AtomicPtr,
    Ordering, //
};

use kernel::{
    alloc::KVVec,
    bindings,
    error::from_err_ptr,
    prelude::*,
    scatterlist::SGTable,
    sync::{
        Arc,
        ArcBorrow, //
    },
    workqueue::{
        self,
        impl_has_work,
        new_work,
        Work,
        WorkItem, //
    },
};

use crate::dma::{
    DevRef,
    PINNED_PAGES, //
};
use crate::file::FileState;
use crate::glue::{
    self,
    refuse, //
};
use crate::mapping::PAGE_SIZE;
use crate::uapi::*;

/// What the exporter's `invalidate_mappings` reaches: the registration it concerns.
#[pin_data]
pub(crate) struct Revoker {
    #[pin]
    work: Work<Revoker>,
    /// The file holding the registration. A closed file has no queues left; the work
    /// then finds nothing to do.
    file: Arc<FileState>,
    id: u32,
    revoked: AtomicBool,
}

impl_has_work! {
    impl HasWork<Self> for Revoker { self.work }
}

impl WorkItem for Revoker {
    type Pointer = Arc<Revoker>;

    fn run(this: Arc<Revoker>) {
        this.file.revoke_registration(this.id);
    }
}

/// `dma_buf_attach_ops.invalidate_mappings`: called with the dma-buf's reservation lock
/// held. Admin commands cannot wait there, so the queues are taken down by a work item.
///
/// # Safety
///
/// `attach` must be an attachment made by [`Imported::new`], not yet detached.
unsafe extern "C" fn invalidate(attach: *mut bindings::dma_buf_attachment) {
    // SAFETY: the attachment was made with `importer_priv` pointing to a `Revoker` kept
    // alive (by the reference `Imported::revoker` owns) until after the detach.
    let r = unsafe { ArcBorrow::<Revoker>::from_raw((*attach).importer_priv.cast()) };
    if r.revoked.swap(true, Ordering::AcqRel) {
        return;
    }
    refuse!(
        "register_dmabuf: the exporter moved registration {} although it is pinned; \
         its file's queues are being destroyed\n",
        r.id
    );
    let arc: Arc<Revoker> = r.into();
    // Enqueued once: `revoked` was false until now.
    let _ = workqueue::system_long().enqueue(arc);
}

/// Importer operations: peer-to-peer capable (the memory may have no struct pages, as
/// GPU memory), with revocation.
static IMPORTER: bindings::dma_buf_attach_ops = bindings::dma_buf_attach_ops {
    allow_peer2peer: true,
    invalidate_mappings: Some(invalidate),
};

/// A range of a dma-buf, attached to the controller's device, pinned and mapped.
///
/// # Invariants
///
/// `buf` holds a reference from `dma_buf_get`; `attach` is a dynamic attachment of it
/// to `dev` with [`IMPORTER`] and `revoker` as private data, pinned. `sgt` is the
/// attachment's mapping, or null once revocation unmapped it; it changes only under the
/// dma-buf's reservation lock. Drop unmaps, unpins, detaches and puts, in that order.
pub(crate) struct Imported {
    /// The device attached to, kept until after the detach.
    dev: DevRef,
    buf: NonNull<bindings::dma_buf>,
    attach: NonNull<bindings::dma_buf_attachment>,
    sgt: AtomicPtr<bindings::sg_table>,
    /// The controller-visible address of each page of the range.
    addrs: KVVec<u64>,
    revoker: *const Revoker,
}

// SAFETY: the dma-buf objects are refcounted kernel objects usable from any thread; the
// mapping pointer is only changed under the reservation lock.
unsafe impl Send for Imported {}
// SAFETY: `&Imported` only reads the address array and the revoked flag.
unsafe impl Sync for Imported {}

/// Takes `resv`, runs `f`, and lets it go.
///
/// # Safety
///
/// `buf` must be a dma-buf the caller holds a reference on.
unsafe fn with_resv<T>(buf: NonNull<bindings::dma_buf>, f: impl FnOnce() -> T) -> T {
    // SAFETY: the dma-buf is live (caller); with no acquire context the lock cannot
    // fail with -EDEADLK.
    let resv = unsafe { (*buf.as_ptr()).resv };
    // SAFETY: `resv` is the dma-buf's own reservation object.
    unsafe { bindings::dma_resv_lock(resv, core::ptr::null_mut()) };
    let r = f();
    // SAFETY: locked above.
    unsafe { bindings::dma_resv_unlock(resv) };
    r
}

impl Imported {
    /// Imports `len` bytes at `offset` of the dma-buf behind `fd` for `dev`, on behalf of
    /// registration `id` of `file`.
    pub(crate) fn new(
        dev: &DevRef,
        file: Arc<FileState>,
        id: u32,
        fd: i32,
        offset: u64,
        len: u64,
    ) -> Result<Self> {
        let revoker = Arc::pin_init(
            pin_init!(Revoker {
                work <- new_work!("homi::Revoker::work"),
                file,
                id,
                revoked: AtomicBool::new(false),
            }),
            GFP_KERNEL,
        )?;
        let pages = usize::try_from(len / PAGE_SIZE as u64)?;
        let mut addrs = KVVec::with_capacity(pages, GFP_KERNEL)?;
        // SAFETY: `dma_buf_get` checks the fd itself.
        let buf = from_err_ptr(unsafe { bindings::dma_buf_get(fd) }).inspect_err(|_| {
            refuse!("register_dmabuf: fd {} is not a dma-buf\n", fd);
        })?;
        let buf = NonNull::new(buf).ok_or(EBADF)?;
        // SAFETY: we hold a reference on `buf` from here on; dropped on every error path.
        let put = || unsafe { bindings::dma_buf_put(buf.as_ptr()) };
        // SAFETY: `buf` is live.
        let size = unsafe { (*buf.as_ptr()).size } as u64;
        if offset.checked_add(len).is_none_or(|end| end > size) {
            put();
            refuse!(
                "register_dmabuf: {:#x} bytes at {:#x} pass the dma-buf's end ({:#x})\n",
                len,
                offset,
                size
            );
            return Err(EINVAL);
        }
        let priv_ = Arc::into_raw(revoker);
        // SAFETY: taken by `into_raw` above, given back once.
        let unref = || drop(unsafe { Arc::from_raw(priv_) });
        // SAFETY: `buf` and `dev` are live; `IMPORTER` is static and `priv_` outlives the
        // attachment (it is released after the detach).
        let attach = from_err_ptr(unsafe {
            bindings::dma_buf_dynamic_attach(
                buf.as_ptr(),
                dev.as_ptr(),
                &IMPORTER,
                priv_.cast_mut().cast(),
            )
        });
        let attach = match attach.map(NonNull::new) {
            Ok(Some(a)) => a,
            Ok(None) | Err(_) => {
                let e = attach.err().unwrap_or(ENOMEM);
                unref();
                put();
                return Err(unreachable_err("attach", e));
            }
        };
        // SAFETY: `attach` is a live attachment of `buf`; detached once on error.
        let detach = || unsafe { bindings::dma_buf_detach(buf.as_ptr(), attach.as_ptr()) };
        // SAFETY: `buf` is live. Pin and map need the reservation lock; waiting for the
        // kernel fences (a move the exporter started) is required of dynamic importers.
        let mapped = unsafe {
            with_resv(buf, || {
                let ret = bindings::dma_buf_pin(attach.as_ptr());
                if ret != 0 {
                    return Err(Error::from_errno(ret));
                }
                let sgt = from_err_ptr(bindings::dma_buf_map_attachment(
                    attach.as_ptr(),
                    bindings::dma_data_direction_DMA_BIDIRECTIONAL,
                ));
                let sgt = match sgt {
                    Ok(s) => s,
                    Err(e) => {
                        bindings::dma_buf_unpin(attach.as_ptr());
                        return Err(e);
                    }
                };
                let waited = bindings::dma_resv_wait_timeout(
                    (*buf.as_ptr()).resv,
                    bindings::dma_resv_usage_DMA_RESV_USAGE_KERNEL,
                    true,
                    core::ffi::c_long::MAX as usize,
                );
                if waited < 0 {
                    bindings::dma_buf_unmap_attachment(
                        attach.as_ptr(),
                        sgt,
                        bindings::dma_data_direction_DMA_BIDIRECTIONAL,
                    );
                    bindings::dma_buf_unpin(attach.as_ptr());
                    return Err(Error::from_errno(waited as i32));
                }
                Ok(sgt)
            })
        };
        let sgt = match mapped {
            Ok(s) => s,
            Err(e) => {
                detach();
                unref();
                put();
                return Err(unreachable_err("map", e));
            }
        };
        // INVARIANT: referenced, attached, pinned and mapped above.
        let mut me = Self {
            dev: dev.clone(),
            buf,
            attach,
            sgt: AtomicPtr::new(sgt),
            addrs: KVVec::new(),
            revoker: priv_,
        };
        // Dropping `me` on error undoes everything above.
        me.collect(offset, len, &mut addrs)?;
        me.addrs = addrs;
        PINNED_PAGES.fetch_add(pages as u64, Ordering::Relaxed);
        Ok(me)
    }

    /// Fills `addrs` with the address of each page of `len` bytes at `offset`: the
    /// mapping's DMA segments split into pages. Refuses segments that need CPU syncs
    /// (as REGISTER does) and segments that are not page-aligned.
    fn collect(&self, offset: u64, len: u64, addrs: &mut KVVec<u64>) -> Result {
        let page = PAGE_SIZE as u64;
        // SAFETY: the mapping is live while `self` is and not revoked (nothing could
        // have revoked it yet: no queue or id was handed out).
        let table = unsafe { SGTable::from_raw(self.sgt.load(Ordering::Acquire)) };
        let (mut pos, end) = (0u64, offset + len);
        for sg in table.iter() {
            let (addr, seg) = (sg.dma_address(), sg.dma_len());
            // The controller writes the memory with no sync call in between: a segment
            // the exporter mapped through a swiotlb bounce buffer (or for a
            // non-coherent device) would never show those writes to anyone.
            // SAFETY: `dev` is live (we hold a reference); any address may be asked.
            if unsafe { glue::homi_dma_needs_sync(self.dev.as_ptr().cast(), addr) } {
                refuse!(
                    "register_dmabuf: DMA to this dma-buf would need syncs (swiotlb bounce \
                     buffering?); refused\n"
                );
                return Err(glue::errno(bindings::EOPNOTSUPP));
            }
            if addr % page != 0 || seg % page != 0 {
                refuse!(
                    "register_dmabuf: the exporter mapped a segment at {:#x} of {:#x} bytes, \
                     not 4096-aligned\n",
                    addr,
                    seg
                );
                return Err(EINVAL);
            }
            let mut off = 0;
            while off < seg && pos < end {
                if pos >= offset {
                    addrs.push(addr + off, GFP_KERNEL)?;
                }
                off += page;
                pos += page;
            }
            if pos >= end {
                return Ok(());
            }
        }
        refuse!("register_dmabuf: the exporter mapped less than the dma-buf's size\n");
        Err(EINVAL)
    }

    /// Bytes held.
    pub(crate) fn bytes(&self) -> usize {
        self.addrs.len() * PAGE_SIZE
    }

    /// Whether the exporter revoked it (moved the buffer despite the pin).
    pub(crate) fn revoked(&self) -> bool {
        // SAFETY: `revoker` lives as long as `self` (type invariant).
        unsafe { &*self.revoker }.revoked.load(Ordering::Acquire)
    }

    /// Each page's controller-visible address, in order.
    pub(crate) fn addrs(&self) -> &[u64] {
        &self.addrs
    }

    /// Lets the mapping go early, after a revocation, once no queue that could reach it
    /// may exist.
    pub(crate) fn unmap(&self) {
        // SAFETY: `buf` is referenced (type invariant).
        unsafe {
            with_resv(self.buf, || {
                let sgt = self.sgt.swap(core::ptr::null_mut(), Ordering::AcqRel);
                if !sgt.is_null() {
                    // SAFETY: `sgt` is the attachment's live mapping, unmapped once
                    // (it was swapped out under the reservation lock).
                    bindings::dma_buf_unmap_attachment(
                        self.attach.as_ptr(),
                        sgt,
                        bindings::dma_data_direction_DMA_BIDIRECTIONAL,
                    );
                }
            })
        };
    }
}

/// The errno for a failed attach or map: `EXDEV` when the exporter cannot place the
/// buffer where the controller reaches it (P2PDMA says the topology does not allow it).
fn unreachable_err(what: &str, e: Error) -> Error {
    let p2p = [
        glue::errno(bindings::EREMOTEIO),
        glue::errno(bindings::EOPNOTSUPP),
        EBUSY,
    ];
    if p2p.contains(&e) {
        refuse!(
            "register_dmabuf: {} failed ({:?}): the exporter cannot place this dma-buf where \
             the controller reaches it (no peer-to-peer path, per P2PDMA); refused\n",
            what,
            e
        );
        return glue::errno(bindings::EXDEV);
    }
    e
}

impl Drop for Imported {
    fn drop(&mut self) {
        self.unmap();
        // SAFETY: by the type invariant the attachment is pinned (undone under the
        // reservation lock), attached and `buf` referenced; each is undone once, in
        // reverse order. The revoker outlives the detach.
        unsafe {
            with_resv(self.buf, || bindings::dma_buf_unpin(self.attach.as_ptr()));
            bindings::dma_buf_detach(self.buf.as_ptr(), self.attach.as_ptr());
            drop(Arc::from_raw(self.revoker));
            bindings::dma_buf_put(self.buf.as_ptr());
        }
        PINNED_PAGES.fetch_sub(self.addrs.len() as u64, Ordering::Relaxed);
    }
}

impl FileState {
    /// The work of a revocation: every queue of the file could reach registration `id`,
    /// so each is made dead as a reset would make it, and deleted; the mapping goes once
    /// none may exist.
    pub(crate) fn revoke_registration(&self, id: u32) {
        let _ = self.with_attached(|a| {
            if !a.regs.iter().any(|r| r.id == id) {
                // Unregistered meanwhile: its drop unmaps, after the quarantine.
                return Ok(());
            }
            self.kill_queues(a);
            if a.lives()?.is_empty() {
                if let Some(r) = a.regs.iter().find(|r| r.id == id) {
                    r.mem.unmap_revoked();
                }
            }
            Ok(())
        });
    }

    /// REGISTER_DMABUF.
    pub(crate) fn register_dmabuf(
        self: ArcBorrow<'_, Self>,
        req: &HomiRegisterDmabuf,
    ) -> Result<HomiRegisterDmabuf> {
        let page = PAGE_SIZE as u64;
        if req.flags != 0
            || req.reserved != 0
            || req.id != 0
            || req.fd < 0
            || req.len == 0
            || req.len > HOMI_REGISTER_MAX
            || req.offset % page != 0
            || req.len % page != 0
        {
            return Err(EINVAL);
        }
        let (dev, ctrl, id) = self.begin_registration()?;
        // Attaching, pinning and mapping take the reservation lock and may wait for the
        // exporter: done without `inner`.
        let imported = Imported::new(&dev, self.into(), id, req.fd, req.offset, req.len)?;
        self.record_registration(ctrl, id, crate::memory::Memory::DmaBuf(imported))?;
        self.copy_out_addrs(id, req.dma_addrs, req.len)?;
        Ok(HomiRegisterDmabuf { id, ..*req })
    }
}
