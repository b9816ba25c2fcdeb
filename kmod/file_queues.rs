// SPDX-License-Identifier: GPL-2.0

//! The queue pair ioctls of a file: CREATE_QPAIR, DESTROY_QPAIR and REARM_QPAIR.

use core::sync::atomic::Ordering;

use kernel::{bindings, prelude::*};

use crate::attached::Attached;
use crate::file::FileState;
use crate::glue::{
    self,
    refuse,
    Ctrl, //
};
use crate::queue::QueuePair;
use crate::registry::QidRange;
use crate::uapi::*;

impl FileState {
    /// Checks that the controller can take a homi queue in `range` right now.
    pub(crate) fn check_queue_ok(c: &Ctrl, range: &QidRange) -> Result {
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
        if req.reserved != 0 {
            return Err(EINVAL);
        }
        let (want_sq, want_cq) = crate::placement::wanted(req)?;
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
                if range.user {
                    refuse!(
                        "nvme{}: no spare queues: homi holds all of nvme-pci's user queues \
                         (qids {}..={})\n",
                        c.ctrl.instance(),
                        range.first,
                        range.last
                    );
                } else {
                    refuse!(
                        "nvme{}: no spare queues: the driver uses qids 1..={}, the controller \
                         granted up to qid {}, and homi holds the rest\n",
                        c.ctrl.instance(),
                        range.first - 1,
                        range.last
                    );
                }
            })?;
            let dev = c.ctrl.dev_ref()?;
            let rings = a
                .ring(&dev, want_sq, req.depth as usize * 64)
                .and_then(|sq| Ok((sq, a.ring(&dev, want_cq, req.depth as usize * 16)?)));
            let rings = match rings {
                Ok(r) => r,
                Err(e) => {
                    c.release_qid(qid);
                    return Err(e);
                }
            };
            let mut q = match QueuePair::new(&c, &range, qid, req.depth, slot, rings) {
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
            if let Err(e) = self.track_doorbells(&q) {
                // Without a record a reset could not revoke its doorbells: undo.
                self.status.set_queue_state(slot, HOMI_QUEUE_NONE);
                a.retire(q);
                return Err(e);
            }
            let reply = q.reply();
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

    /// Makes every queue pair of the file dead, as a reset would, and deletes each on
    /// the controller (which ends its commands): a dma-buf moved under them, or a file
    /// map was not let go in time. They stay in the file's table until destroyed.
    pub(crate) fn kill_queues(&self, a: &mut Attached) {
        let c = a.c.clone();
        for q in a.queues.iter_mut() {
            self.untrack_doorbells(q.slot);
            self.status.set_queue_state(q.slot, HOMI_QUEUE_DEAD);
            q.zap_doorbells(self.mapping);
            q.delete(&c);
        }
        a.sweep();
    }

    pub(crate) fn destroy_qpair(&self, req: &HomiId) -> Result {
        if req.flags != 0 {
            return Err(EINVAL);
        }
        self.with_attached(|a| {
            let i = Self::find_queue(a, req.id)?;
            let q = a.queues.remove(i).map_err(|_| ENOENT)?;
            // Untracked first, so a concurrent revocation cannot mark the slot dead.
            self.untrack_doorbells(q.slot);
            self.status.set_queue_state(q.slot, HOMI_QUEUE_NONE);
            q.zap(self.mapping);
            a.retire(q);
            a.sweep();
            Ok(())
        })
    }

    pub(crate) fn rearm_qpair(&self, req: &HomiQpair) -> Result<HomiQpair> {
        if req.flags != 0
            || req.reserved != 0
            || req.sq_memory != 0
            || req.cq_memory != 0
            || req.sq_memory_offset != 0
            || req.cq_memory_offset != 0
        {
            return Err(EINVAL);
        }
        self.with_attached(|a| {
            let c = a.c.clone();
            let i = Self::find_queue(a, req.qid)?;
            if a.placement_revoked(a.queues[i].placements()) {
                refuse!(
                    "rearm_qpair: qid {}'s rings are in a dma-buf its exporter revoked; \
                     destroy it\n",
                    req.qid
                );
                return Err(glue::errno(bindings::ENXIO));
            }
            let q = &mut a.queues[i];
            if q.live && !q.reset_since(c.epoch()) {
                return Err(EBUSY);
            }
            // A reset began since it was created: dead, whether or not the state watch
            // got to it yet. Its old doorbell pages are revoked here too (the fault
            // handler cannot map them again: its epoch check fails, and `inner` is held).
            q.live = false;
            self.status.set_queue_state(q.slot, HOMI_QUEUE_DEAD);
            self.untrack_doorbells(q.slot);
            q.zap_doorbells(self.mapping);
            if q.may_exist(&c) {
                if !c.ctrl.live() {
                    // The reset that killed it has not disabled the controller yet.
                    return Err(EAGAIN);
                }
                // Live again, yet the queue may exist: a Delete sent during the reset
                // failed. Ask the controller now; it answers Invalid QID if it is gone.
                if !q.delete(&c) {
                    return Err(EAGAIN);
                }
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
            if let Err(e) = self.track_doorbells(q) {
                // Without a record a reset could not revoke its doorbells: take it down.
                q.delete(&c);
                return Err(e);
            }
            self.status.set_queue_state(q.slot, HOMI_QUEUE_LIVE);
            Ok(q.reply())
        })
    }
}
