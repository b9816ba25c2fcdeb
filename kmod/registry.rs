// SPDX-License-Identifier: GPL-2.0

//! The controllers homi is attached to, module-wide: for each, the qids it holds, the
//! files attached to it (for unbind), homi's own reset accounting and the quarantine
//! of memory that closed files left behind. An entry lives from the first ATTACH to
//! its controller until the driver lets go of the controller (unbind) or the module
//! unloads, so its reset count (the generation user space sees) only grows.
//!
//! Locking: a file's `inner` may be held while taking `CONTROLLERS`, which may be held
//! while taking a controller's `shared`; `shared` is a leaf. Code holding them copies
//! what it needs and lets go. The last reference to a [`Controller`] is never
//! dropped from its own state watch (stopping the watch waits for it).

use core::ffi::c_void;

use core::sync::atomic::{
    AtomicBool,
    Ordering, //
};

use kernel::{
    bindings,
    prelude::*,
    sync::{
        new_mutex,
        Arc,
        Mutex, //
    },
};

use crate::admin;
use crate::file::FileState;
use crate::glue::{
    Ctrl,
    Watch, //
};
use crate::memory::Held;
use crate::queue::DOORBELL_BASE;
use crate::ModuleRef;

kernel::sync::global_lock! {
    // SAFETY: `init` initialises it in module init, before any file exists.
    unsafe(uninit) static CONTROLLERS: Mutex<KVec<Arc<Controller>>> = KVec::new();
}

/// Initialises the module-wide list.
///
/// # Safety
///
/// Call once, from module init, before anything else in this file runs.
pub(crate) unsafe fn init() {
    // SAFETY: the caller calls this once, first.
    unsafe { CONTROLLERS.init() };
}

/// Drops every controller entry and the list's storage (statics are never dropped, so
/// without this kmemleak finds the buffer after `rmmod`). Call from module teardown,
/// when no file is open and no quarantine is left (both hold module references).
pub(crate) fn exit() {
    let all = core::mem::take(&mut *CONTROLLERS.lock());
    drop(all);
}

/// Memory a closed file left behind while one of its queues may still exist on the
/// controller: released when the controller has been disabled since `born`.
pub(crate) struct Package {
    born: u64,
    qids: KVec<u16>,
    _held: KVec<Held>,
    /// The module's code must stay while the controller may write this memory.
    _module: ModuleRef,
}

impl Package {
    /// Fails only while the module is going away, giving the parts back so that the
    /// caller can keep them rather than free them.
    pub(crate) fn new(
        born: u64,
        qids: KVec<u16>,
        held: KVec<Held>,
    ) -> core::result::Result<Self, (KVec<u16>, KVec<Held>)> {
        match ModuleRef::get() {
            Ok(module) => Ok(Self {
                born,
                qids,
                _held: held,
                _module: module,
            }),
            Err(_) => Err((qids, held)),
        }
    }
}

struct Shared {
    /// Qids homi holds on this controller: by queue pairs, zombies and packages.
    qids: KVec<u16>,
    files: KVec<Arc<FileState>>,
    quarantine: KVec<Package>,
    /// The driver is being unbound: no file may attach any more.
    unbinding: bool,
    /// The trust warnings were logged (once per controller).
    warned: bool,
    /// The entry left the module-wide list (the driver let go of the controller):
    /// nothing may attach to it any more.
    dead: bool,
}

/// A controller homi is attached to.
#[pin_data]
pub(crate) struct Controller {
    /// Declared first, so it is stopped first on drop, before what its callback uses.
    watch: Watch,
    /// Set once the entry is fully built; the watch callback ignores changes before.
    ready: AtomicBool,
    /// nvme-pci's remove has run: the controller is disabled and reaches no memory,
    /// and its admin queue is gone, so nothing may be sent to it any more.
    disabled: AtomicBool,
    pub(crate) ctrl: Ctrl,
    #[pin]
    shared: Mutex<Shared>,
}

/// The qids homi may take on a controller right now.
pub(crate) struct QidRange {
    pub(crate) first: u32,
    pub(crate) last: u32,
    /// I/O queues the controller granted (Get Features, Number of Queues).
    pub(crate) granted: u32,
    /// The range is nvme-pci's user queue reservation.
    pub(crate) user: bool,
    /// The controller reads doorbells from nvme-pci's shadow buffer.
    pub(crate) shadow: bool,
}

impl QidRange {
    pub(crate) fn of(c: &Ctrl) -> Result<Self> {
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

    pub(crate) fn contains(&self, qid: u16) -> bool {
        (self.first..=self.last).contains(&u32::from(qid))
    }

    pub(crate) fn len(&self) -> u32 {
        (self.last + 1).saturating_sub(self.first)
    }
}

impl Controller {
    /// The entry for `ctrl`, made (and its state watch started) if there is none.
    pub(crate) fn get(ctrl: Ctrl) -> Result<Arc<Self>> {
        let mut all = CONTROLLERS.lock();
        // Checked under the lock the unbind's end takes: nvme_remove marks the
        // controller deleting before that end removes its entry.
        if ctrl.deleting() {
            return Err(ENODEV);
        }
        if let Some(c) = all.iter().find(|c| c.ctrl.key() == ctrl.key()) {
            return Ok(c.clone());
        }
        all.reserve(1, GFP_KERNEL)?;
        let raw = ctrl.raw_nonnull();
        let c = Arc::pin_init(
            try_pin_init!(&this in Self {
                ready: AtomicBool::new(false),
                disabled: AtomicBool::new(false),
                ctrl,
                shared <- new_mutex!(Shared {
                    qids: KVec::new(),
                    files: KVec::new(),
                    quarantine: KVec::new(),
                    unbinding: false,
                    warned: false,
                    dead: false,
                }),
                // Last: the callback may run at once; it reads only `ready` until that
                // is set below.
                // SAFETY: `this` stays valid until the watch stops, which `Drop` of the
                // `Controller` does first.
                watch: unsafe { Watch::start(raw, state_changed, this.as_ptr().cast()) }?,
            }),
            GFP_KERNEL,
        )?;
        c.ready.store(true, Ordering::Release);
        // Room was reserved above.
        all.push(c.clone(), GFP_KERNEL)?;
        Ok(c)
    }

    /// homi's reset epoch of this controller (see [`Watch::epoch`]).
    pub(crate) fn epoch(&self) -> u64 {
        self.watch.epoch()
    }

    /// Whether a queue created in epoch `born` is certainly gone from the controller.
    pub(crate) fn gone(&self, born: u64) -> bool {
        self.disabled.load(Ordering::Acquire) || self.watch.cleared() > born
    }

    /// Lists `file` as attached, unless the driver is being unbound (`ENODEV`) or the
    /// entry was retired meanwhile (`EAGAIN`: look the controller up again).
    pub(crate) fn add_file(&self, file: Arc<FileState>) -> Result {
        let mut s = self.shared.lock();
        if s.unbinding {
            return Err(ENODEV);
        }
        if s.dead {
            return Err(EAGAIN);
        }
        s.files.push(file, GFP_KERNEL)?;
        Ok(())
    }

    pub(crate) fn remove_file(&self, file: &FileState) {
        self.shared
            .lock()
            .files
            .retain(|f| !core::ptr::eq(&**f, file));
    }

    /// The attached files, copied.
    pub(crate) fn files(&self) -> Result<KVec<Arc<FileState>>> {
        let s = self.shared.lock();
        let mut out = KVec::with_capacity(s.files.len(), GFP_KERNEL)?;
        for f in s.files.iter() {
            out.push(f.clone(), GFP_KERNEL)?;
        }
        Ok(out)
    }

    /// Reserves the lowest qid in `first..=last` that homi does not hold.
    pub(crate) fn reserve_qid(&self, first: u32, last: u32) -> Result<u16> {
        let mut s = self.shared.lock();
        s.qids.reserve(1, GFP_KERNEL)?;
        let last = last.min(u32::from(u16::MAX));
        for q in first..=last {
            // Both bounds fit in u16 here.
            let q = q as u16;
            if !s.qids.contains(&q) {
                s.qids.push(q, GFP_KERNEL)?;
                return Ok(q);
            }
        }
        Err(ENOSPC)
    }

    pub(crate) fn release_qid(&self, qid: u16) {
        self.shared.lock().qids.retain(|q| *q != qid);
    }

    /// Qids homi holds on this controller.
    pub(crate) fn reserved(&self) -> usize {
        self.shared.lock().qids.len()
    }

    /// Takes memory a closed file left behind, with the qids of its undeleted queues.
    pub(crate) fn quarantine(&self, p: Package) {
        let mut s = self.shared.lock();
        if s.quarantine.reserve(1, GFP_KERNEL).is_err() {
            // Nowhere to keep it: keeping it forever is safe, freeing it is not.
            pr_err!("out of memory: leaking quarantined memory\n");
            core::mem::forget(p);
            return;
        }
        // Room was reserved above, so this cannot drop `p`.
        let _ = s.quarantine.push(p, GFP_KERNEL);
    }

    /// Releases the packages whose queues are gone (all of them if `everything`), and
    /// their qids.
    fn sweep(&self, everything: bool) {
        // Dropped after `shared` is released: a package may hold file maps, whose
        // release can wait for page cache locks.
        let mut released = KVec::new();
        let mut s = self.shared.lock();
        let Shared {
            qids, quarantine, ..
        } = &mut *s;
        let mut i = 0;
        while i < quarantine.len() {
            let p = &quarantine[i];
            if !(everything || self.gone(p.born)) {
                i += 1;
                continue;
            }
            qids.retain(|q| !p.qids.contains(q));
            if let Ok(p) = quarantine.remove(i) {
                // Out of memory: dropped here, under the lock, as before.
                let _ = released.push(p, GFP_KERNEL);
            }
        }
        drop(s);
        drop(released);
    }

    /// Logs once per controller what a queue holder can reach here.
    pub(crate) fn warn_trust_once(&self, db_page: u64) {
        {
            let mut s = self.shared.lock();
            if s.warned {
                return;
            }
            s.warned = true;
        }
        let c = &self.ctrl;
        // The page also holds the admin queue's doorbells, or the driver's queues'.
        let kernel_end =
            DOORBELL_BASE + 2 * (u64::from(c.io_queues()) + 1) * u64::from(c.doorbell_stride());
        if db_page < kernel_end {
            pr_warn!(
                "nvme{}: homi queue doorbells share a page with the kernel's (admin and I/O \
                 queues): their holders are trusted like root\n",
                c.instance()
            );
        }
        if !c.iommu_translates() {
            pr_warn!(
                "nvme{}: DMA is not translated by an IOMMU: homi queue holders can make the \
                 controller read and write any physical memory\n",
                c.instance()
            );
        }
    }

    /// The watch saw a state change: revoke the doorbells of queues a reset killed
    /// (first, without waiting for any file's `inner`), release what a reset freed,
    /// tell the files.
    fn state_changed(&self) {
        if !self.ready.load(Ordering::Acquire) {
            return;
        }
        let Ok(files) = self.files() else { return };
        for f in files.iter() {
            f.revoke_doorbells(self);
        }
        self.sweep(false);
        for f in files.iter() {
            f.state_changed();
        }
    }
}

/// The controllers homi is attached to, copied.
pub(crate) fn all() -> Result<KVec<Arc<Controller>>> {
    let all = CONTROLLERS.lock();
    let mut out = KVec::with_capacity(all.len(), GFP_KERNEL)?;
    for c in all.iter() {
        out.push(c.clone(), GFP_KERNEL)?;
    }
    Ok(out)
}

/// `homi_watch` callback, in process context.
///
/// # Safety
///
/// `ctx` is a `Controller` whose watch is still running (see [`Controller::get`]).
unsafe extern "C" fn state_changed(ctx: *mut c_void) {
    // SAFETY: the watch is stopped before the `Controller` goes away.
    let c = unsafe { &*ctx.cast::<Controller>() };
    c.state_changed();
}

fn find_by_dev(dev: *mut bindings::device) -> Option<Arc<Controller>> {
    // At most one: `get` refuses a controller being deleted, and the unbind's end
    // removes the entry before the device can be bound again.
    CONTROLLERS
        .lock()
        .iter()
        .find(|c| core::ptr::eq(c.ctrl.dma_dev(), dev))
        .cloned()
}

/// PCI bus notifier callback: `dev` is about to lose its driver (`done` false: the
/// admin queue still works), or has lost it (`done` true: nvme-pci disabled the
/// controller, which reaches no memory any more).
///
/// # Safety
///
/// `dev` is a valid device for the duration of the call.
pub(crate) unsafe extern "C" fn unbinding(dev: *mut c_void, done: bool) {
    let Some(c) = find_by_dev(dev.cast()) else {
        return;
    };
    if !done {
        // No admin command runs under a lock here: the files are copied out first.
        let files = {
            let mut s = c.shared.lock();
            s.unbinding = true;
            core::mem::take(&mut s.files)
        };
        if !files.is_empty() {
            pr_info!(
                "nvme{}: controller unbinding: revoking homi queues and memory\n",
                c.ctrl.instance()
            );
        }
        for f in files.iter() {
            f.unbound(&c);
        }
        return;
    }
    // The controller is disabled: nothing can reach homi's memory now. A file that
    // attached after the first notification (before nvme_remove marked the controller
    // deleting) is torn down here, without admin commands.
    c.disabled.store(true, Ordering::Release);
    let late = core::mem::take(&mut c.shared.lock().files);
    for f in late.iter() {
        f.unbound(&c);
    }
    c.sweep(true);
    let entry = {
        let mut all = CONTROLLERS.lock();
        c.shared.lock().dead = true;
        let mine = all.iter().position(|x| Arc::ptr_eq(x, &c));
        mine.and_then(|i| all.remove(i).ok())
    };
    drop(entry);
    drop(c);
}
