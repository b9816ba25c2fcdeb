// SPDX-License-Identifier: GPL-2.0

//! One homi queue pair and its life on the controller: creation, deletion, and what
//! decides whether it may still exist there.
//!
//! A queue may exist on the controller from its first Create command until a Delete
//! succeeds (or finds no such queue), or until the controller is disabled. homi learns
//! the latter from its own reset accounting ([`Controller::gone`]), never from a
//! counter user space can rewrite. Whenever a queue may exist, its rings, and whatever
//! its commands could reach, stay allocated.
//!
//! Ring ownership: user space owns the SQ slots it has not yet published through the
//! tail doorbell and the CQ head; the controller owns published SQ slots until it
//! posts their completions, and CQ slots up to the head. The module touches the rings
//! only when the queue does not exist on the controller (zeroing them before a
//! rearm).

use core::sync::atomic::{
    AtomicU64,
    Ordering, //
};

use kernel::{bindings, prelude::*};

use crate::admin::{
    self,
    Created,
    Deleted, //
};
use crate::glue::{
    refuse,
    ShadowSlots, //
};
use crate::mapping::{
    take_pgoffs,
    zap,
    Backing,
    Object,
    PAGE_SHIFT,
    PAGE_SIZE, //
};
use crate::memory::Held;
use crate::placement::Ring;
use crate::registry::{
    Controller,
    QidRange, //
};
use crate::uapi::*;

/// Doorbells start at this offset of BAR0.
pub(crate) const DOORBELL_BASE: u64 = 0x1000;

/// The next queue life: each creation of a queue on the controller is a new one.
static NEXT_LIFE: AtomicU64 = AtomicU64::new(1);

/// A queue's shadow doorbell pages (see [`HOMI_QPAIR_SHADOW`]).
struct Shadow {
    slots: ShadowSlots,
    pgoff: u64,
    eventidx_pgoff: u64,
}

impl Shadow {
    /// For a queue about to be created on `qid` of `range`: with shadow doorbells,
    /// zeroes its slots and gives them fresh mmap offsets; without, `None`.
    fn new(c: &Controller, range: &QidRange, qid: u16) -> Result<Option<Self>> {
        if !range.shadow {
            return Ok(None);
        }
        Ok(Some(Self {
            slots: c.ctrl.reset_shadow(qid)?,
            pgoff: take_pgoffs(PAGE_SIZE),
            eventidx_pgoff: take_pgoffs(PAGE_SIZE),
        }))
    }
}

/// One reserved queue pair.
pub(crate) struct QueuePair {
    pub(crate) qid: u16,
    depth: u32,
    /// Its slot in the status page.
    pub(crate) slot: u32,
    sq: Ring,
    cq: Ring,
    db_pgoff: u64,
    /// The BAR0 page holding this queue's doorbells, and the SQ tail doorbell's offset
    /// in it.
    db_phys: u64,
    db_offset: u32,
    /// BAR0's physical address.
    bar: u64,
    /// Whether an SQ may exist beside the CQ (Create I/O SQ was sent and not refused).
    sq_made: bool,
    /// While the queue may exist on the controller: the epoch it was created in.
    born: Option<u64>,
    /// This life of the queue on the controller; memory freed meanwhile waits for it.
    pub(crate) life: u64,
    /// User space may use it: doorbells mapped, status `LIVE`. Cleared when a reset
    /// begins, set again by rearm.
    pub(crate) live: bool,
    shadow: Option<Shadow>,
}

/// A live queue's doorbell pages, kept apart from the file's `inner` so that a reset
/// revokes them at once, whatever ioctl holds `inner` meanwhile.
pub(crate) struct DoorbellMap {
    pub(crate) slot: u32,
    /// The epoch the queue was created in: a later one makes its doorbells invalid.
    pub(crate) born: u64,
    /// The MMIO doorbell page, the shadow and event index pages (0: none).
    pub(crate) pgoffs: [u64; 3],
}

impl DoorbellMap {
    pub(crate) fn zap(&self, mapping: usize) {
        for p in self.pgoffs.iter().filter(|p| **p != 0) {
            zap(mapping, *p, PAGE_SIZE);
        }
    }
}

/// When a fault may map a page of an object.
pub(crate) enum Gate {
    /// Whenever the object exists (rings, buffers).
    Always,
    /// A doorbell page (MMIO or shadow): only in the epoch its queue was created in
    /// (`Some`), and only while the queue is live (`None` when it is not).
    Doorbell(Option<u64>),
}

/// Where qid's doorbells are: BAR0's physical address, the physical address of the page
/// holding them, and the SQ tail doorbell's offset in it. Refuses placements where a
/// one-page mapping would miss the CQ doorbell or expose more than doorbells.
fn doorbells(c: &Controller, qid: u16) -> Result<(u64, u64, u32)> {
    let stride = u64::from(c.ctrl.doorbell_stride());
    let (bar, _) = c.ctrl.bar();
    let db = DOORBELL_BASE + 2 * u64::from(qid) * stride;
    let db_page = db & !(PAGE_SIZE as u64 - 1);
    let db_offset = (db - db_page) as u32;
    if u64::from(db_offset) + stride + 4 > PAGE_SIZE as u64 {
        refuse!(
            "nvme{}: qid {}'s doorbells straddle a page (stride {}); refused\n",
            c.ctrl.instance(),
            qid,
            stride
        );
        return Err(crate::glue::errno(bindings::EOPNOTSUPP));
    }
    if !c.ctrl.bar0_page_holds_only_doorbells(db_page) {
        refuse!(
            "nvme{}: the page of qid {}'s doorbells holds more than doorbells; refused\n",
            c.ctrl.instance(),
            qid
        );
        return Err(crate::glue::errno(bindings::EOPNOTSUPP));
    }
    Ok((bar, bar + db_page, db_offset))
}

/// A queue whose Delete failed: it may still exist on the controller, so its rings stay
/// allocated and its qid reserved until the controller is disabled.
pub(crate) struct Zombie {
    pub(crate) qid: u16,
    pub(crate) born: u64,
    pub(crate) life: u64,
    /// Its rings in module memory; placed rings stay with the file's memory.
    pub(crate) rings: [Option<Held>; 2],
}

impl QueuePair {
    /// A queue pair on `qid` with rings `sq` and `cq` (see
    /// [`Attached::ring`](crate::attached::Attached)); it does not exist on the
    /// controller yet.
    pub(crate) fn new(
        c: &Controller,
        range: &QidRange,
        qid: u16,
        depth: u32,
        slot: u32,
        (sq, cq): (Ring, Ring),
    ) -> Result<Self> {
        let (bar, db_phys, db_offset) = doorbells(c, qid)?;
        let shadow = Shadow::new(c, range, qid)?;
        Ok(Self {
            qid,
            depth,
            slot,
            db_pgoff: take_pgoffs(PAGE_SIZE),
            db_phys,
            db_offset,
            bar,
            sq_made: false,
            born: None,
            life: 0,
            live: false,
            shadow,
            sq,
            cq,
        })
    }

    /// Creates the queue on the controller: Create I/O CQ, then SQ. The controller must
    /// be live and its epoch unchanged throughout, or whatever was created is deleted
    /// again. On error, [`may_exist`](Self::may_exist) says whether that failed too.
    pub(crate) fn create(&mut self, c: &Controller) -> Result {
        let epoch = c.epoch();
        if !c.ctrl.live() {
            return Err(EAGAIN);
        }
        self.life = NEXT_LIFE.fetch_add(1, Ordering::Relaxed);
        // From the first Create on, the queue may exist.
        self.born = Some(epoch);
        self.sq_made = false;
        let cq = admin::create_cq(&c.ctrl, self.qid, self.depth, self.cq.dma());
        let sq = if matches!(cq, Ok(Created::Yes)) {
            self.sq_made = true;
            Some(admin::create_sq(
                &c.ctrl,
                self.qid,
                self.depth,
                self.sq.dma(),
            ))
        } else {
            None
        };
        // The commands may have run on the controller a reset re-enabled, before that
        // reset's CONNECTING: the queue was created in this epoch at the latest.
        let now = c.epoch();
        self.born = Some(now);
        let err = match (cq, sq) {
            (Ok(Created::Yes), Some(Ok(Created::Yes))) if now == epoch && c.ctrl.live() => {
                self.live = true;
                return Ok(());
            }
            (Ok(Created::Yes), Some(Ok(Created::Yes))) => EAGAIN,
            (Ok(Created::Refused), _) => {
                // Nothing was created, and the qid's owner (if any) is not us.
                self.born = None;
                return Err(EIO);
            }
            (Ok(Created::Yes), Some(Ok(Created::Refused))) => {
                self.sq_made = false;
                EIO
            }
            (Err(e), _) | (_, Some(Err(e))) => e,
            (Ok(Created::Yes), None) => EIO,
        };
        // A reset began meanwhile, or a command failed: take down whatever exists.
        self.delete(c);
        Err(err)
    }

    /// Whether a reset began since the queue was created (it is dead to user space).
    pub(crate) fn reset_since(&self, epoch: u64) -> bool {
        self.born.is_none_or(|b| epoch > b)
    }

    /// The BAR0 offset of the page holding its doorbells.
    pub(crate) fn db_page(&self) -> u64 {
        self.db_phys - self.bar
    }

    /// Whether the queue may exist on the controller.
    pub(crate) fn may_exist(&mut self, c: &Controller) -> bool {
        if let Some(born) = self.born {
            if c.gone(born) {
                self.born = None;
            }
        }
        self.born.is_some()
    }

    /// Deletes the queue on the controller if it may exist there: Delete SQ, then Delete
    /// CQ. Returns whether it is gone for sure; if not, nothing it could reach may be
    /// freed until the controller is disabled.
    pub(crate) fn delete(&mut self, c: &Controller) -> bool {
        self.live = false;
        if !self.may_exist(c) {
            return true;
        }
        // A surprise-removed device reaches no memory, and would only time out.
        if !c.ctrl.present() {
            self.born = None;
            return true;
        }
        // The SQ goes first: deleting a CQ with an SQ still bound to it is an error.
        let sq = if self.sq_made {
            admin::delete_sq(&c.ctrl, self.qid)
        } else {
            Ok(Deleted::NotThere)
        };
        let cq = admin::delete_cq(&c.ctrl, self.qid);
        if matches!(
            (sq, cq),
            (
                Ok(Deleted::Now | Deleted::NotThere),
                Ok(Deleted::Now | Deleted::NotThere)
            )
        ) {
            self.born = None;
            return true;
        }
        !self.may_exist(c)
    }

    /// Recreates the queue after a reset destroyed it: same qid and rings (zeroed), new
    /// doorbell offsets, so old doorbell mappings stay revoked.
    pub(crate) fn rearm(&mut self, c: &Controller, range: &QidRange) -> Result {
        // The reset may have turned shadow doorbells on or off, or moved the doorbells.
        self.shadow = Shadow::new(c, range, self.qid)?;
        (self.bar, self.db_phys, self.db_offset) = doorbells(c, self.qid)?;
        self.sq.zero();
        self.cq.zero();
        self.db_pgoff = take_pgoffs(PAGE_SIZE);
        self.create(c)
    }

    /// What the state watch needs to revoke the queue's doorbells without `inner`.
    pub(crate) fn doorbell_map(&self) -> DoorbellMap {
        let (shadow, eventidx) = self
            .shadow
            .as_ref()
            .map_or((0, 0), |s| (s.pgoff, s.eventidx_pgoff));
        DoorbellMap {
            slot: self.slot,
            born: self.born.unwrap_or(0),
            pgoffs: [self.db_pgoff, shadow, eventidx],
        }
    }

    /// Revokes the doorbell mappings, MMIO and shadow.
    pub(crate) fn zap_doorbells(&self, mapping: usize) {
        zap(mapping, self.db_pgoff, PAGE_SIZE);
        if let Some(s) = &self.shadow {
            zap(mapping, s.pgoff, PAGE_SIZE);
            zap(mapping, s.eventidx_pgoff, PAGE_SIZE);
        }
    }

    /// Revokes every mapping of the queue.
    pub(crate) fn zap(&self, mapping: usize) {
        self.sq.zap(mapping);
        self.cq.zap(mapping);
        self.zap_doorbells(mapping);
    }

    /// Whether a ring of it is placed in buffer or registration `id`.
    pub(crate) fn placed_in(&self, id: u32) -> bool {
        [self.sq.placed_in(), self.cq.placed_in()].contains(&Some(id))
    }

    /// The buffers or registrations its rings are placed in.
    pub(crate) fn placements(&self) -> [Option<u32>; 2] {
        [self.sq.placed_in(), self.cq.placed_in()]
    }

    /// The object at page offset `pgoff`, if it is one of this queue's: its extent, what
    /// backs page `pgoff`, and when a fault may map it.
    pub(crate) fn lookup(&self, pgoff: u64) -> Option<(Object, Backing, Gate)> {
        if let Some(found) = self.sq.lookup(pgoff).or_else(|| self.cq.lookup(pgoff)) {
            return Some(found);
        }
        // A doorbell page may be mapped while the queue is dead (a reset may catch a
        // caller between CREATE and its mmap); its faults then get the sink page.
        let born = Gate::Doorbell(self.born.filter(|_| self.live));
        let page = |pgoff: u64, writable: bool, mmio: bool| Object {
            pgoff,
            bytes: PAGE_SIZE,
            writable,
            mmio,
        };
        if pgoff == self.db_pgoff {
            return Some((page(pgoff, true, true), Backing::Mmio(self.db_phys), born));
        }
        let s = self.shadow.as_ref()?;
        if pgoff == s.pgoff {
            Some((
                page(pgoff, true, false),
                Backing::Kernel(s.slots.page),
                born,
            ))
        } else if pgoff == s.eventidx_pgoff {
            let eventidx = Backing::Kernel(s.slots.eventidx_page);
            Some((page(pgoff, false, false), eventidx, born))
        } else {
            None
        }
    }

    /// Turns a queue that may still exist into a zombie that keeps its rings.
    pub(crate) fn into_zombie(self) -> Zombie {
        Zombie {
            qid: self.qid,
            born: self.born.unwrap_or(0),
            life: self.life,
            rings: [self.sq.into_held(), self.cq.into_held()],
        }
    }

    /// The CREATE and REARM reply; `generation` is the epoch the queue was created in.
    pub(crate) fn reply(&self) -> HomiQpair {
        let generation = self.born.unwrap_or(0);
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
        let mut flags = flags;
        let (sq_memory, cq_memory) = (self.sq.placed_at(), self.cq.placed_at());
        if sq_memory.is_some() {
            flags |= HOMI_QPAIR_SQ_IN_MEMORY;
        }
        if cq_memory.is_some() {
            flags |= HOMI_QPAIR_CQ_IN_MEMORY;
        }
        HomiQpair {
            depth: self.depth,
            flags,
            qid: u32::from(self.qid),
            sq_doorbell: self.db_offset,
            sq_size: self.sq.size() as u64,
            cq_size: self.cq.size() as u64,
            sq_offset: self.sq.mmap_offset(),
            cq_offset: self.cq.mmap_offset(),
            doorbell_offset: self.db_pgoff << PAGE_SHIFT,
            generation,
            shadow_offset,
            eventidx_offset,
            shadow_sq,
            shadow_cq,
            status_slot: self.slot,
            sq_memory: sq_memory.map_or(0, |(id, _)| id),
            cq_memory: cq_memory.map_or(0, |(id, _)| id),
            reserved: 0,
            sq_memory_offset: sq_memory.map_or(0, |(_, off)| off),
            cq_memory_offset: cq_memory.map_or(0, |(_, off)| off),
        }
    }

    /// For LIST_QPAIRS.
    pub(crate) fn entry(&self, pid: i32, instance: u32) -> HomiQpairEntry {
        HomiQpairEntry {
            pid: pid as u32,
            instance,
            qid: u32::from(self.qid),
            depth: self.depth,
            state: if self.live {
                HOMI_QUEUE_LIVE
            } else {
                HOMI_QUEUE_DEAD
            },
            reserved: 0,
        }
    }
}
