// SPDX-License-Identifier: GPL-2.0

//! What an attached file holds: its controller, queue pairs, zombies, buffers,
//! registrations and quarantine, and the bookkeeping that applies the lifetime rule to
//! them (see `memory.rs`): which queue lives may still reach memory, parking what is
//! let go, retiring queues, and handing everything to the controller at close.

use core::mem;
use core::sync::atomic::Ordering;

use kernel::{
    fs::File,
    prelude::*,
    sync::{
        aref::ARef,
        Arc, //
    },
};

use crate::filemap::{
    MapEntry,
    MapSlots, //
};
use crate::mapping::{
    Backing,
    Object, //
};
use crate::memory::{
    Buffer,
    Held,
    Memory,
    Registration,
    Waiting, //
};
// Placement checks and the per-file object limit are in `placement.rs`.
use crate::queue::{
    Gate,
    QueuePair,
    Zombie, //
};
use crate::registry::{
    Controller,
    Package, //
};

/// Buffers plus registrations one file may hold. Memory itself is limited per process
/// (`RLIMIT_MEMLOCK`) and module-wide, not per file.
pub(crate) const MAX_OBJECTS_PER_FILE: usize = 1024;

/// What a file holds once attached.
pub(crate) struct Attached {
    pub(crate) c: Arc<Controller>,
    pub(crate) queues: KVec<QueuePair>,
    pub(crate) zombies: KVec<Zombie>,
    pub(crate) buffers: KVec<Buffer>,
    pub(crate) regs: KVec<Registration>,
    pub(crate) waiting: KVec<Waiting>,
    /// File maps (MAP_FILE), each holding a lease.
    pub(crate) maps: KVec<MapEntry>,
    pub(crate) map_slots: MapSlots,
    pub(crate) next_id: u32,
    /// The process that attached, for LIST_QPAIRS.
    pub(crate) pid: i32,
    pub(crate) _nvme_file: ARef<File>,
}

impl Attached {
    pub(crate) fn next_id(&mut self) -> u32 {
        self.next_id = self.next_id.wrapping_add(1).max(1);
        self.next_id
    }

    /// The queue lives that may still exist on the controller.
    pub(crate) fn lives(&mut self) -> Result<KVec<u64>> {
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
    pub(crate) fn sweep(&mut self) {
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

    /// Gets ready to let go of one object: the queue lives that may reach it, with room
    /// to park it. Fails before anything is taken out.
    pub(crate) fn prepare_park(&mut self) -> Result<KVec<u64>> {
        let lives = self.lives()?;
        if !lives.is_empty() {
            self.waiting.reserve(1, GFP_KERNEL)?;
        }
        Ok(lives)
    }

    /// Lets go of `mem`: freed now if no queue that could reach it may exist, else kept
    /// until none does. `lives` comes from [`prepare_park`](Self::prepare_park).
    pub(crate) fn park(&mut self, mem: Memory, lives: KVec<u64>) {
        if lives.is_empty() {
            return;
        }
        let w = Waiting {
            held: Held::new(mem),
            lives,
        };
        // Room was reserved by `prepare_park`, so this cannot drop `w`.
        let _ = self.waiting.push(w, GFP_KERNEL);
    }

    /// Deletes `q` on the controller and frees it, or keeps it as a zombie if it may
    /// still exist. The caller revoked its mappings.
    pub(crate) fn retire(&mut self, mut q: QueuePair) {
        crate::QPAIRS.fetch_sub(1, Ordering::Relaxed);
        if q.delete(&self.c) {
            self.c.release_qid(q.qid);
        } else if self.zombies.reserve(1, GFP_KERNEL).is_err() {
            // Keeping it forever is safe; freeing it is not.
            pr_err!("out of memory: leaking a queue that may still exist\n");
            mem::forget(q);
        } else {
            // Room was reserved above, so this cannot drop the zombie.
            let _ = self.zombies.push(q.into_zombie(), GFP_KERNEL);
        }
    }

    /// The object at page offset `pgoff`, what backs that page, and when a fault may
    /// map it.
    pub(crate) fn lookup(&self, pgoff: u64) -> Option<(Object, Backing, Gate)> {
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
                return Some((obj, Backing::Kernel(page), Gate::Always));
            }
        }
        self.queues.iter().find_map(|q| q.lookup(pgoff))
    }

    /// Moves what it still holds into one package of its controller's quarantine. On
    /// allocation failure it leaks instead: keeping memory forever is safe, freeing
    /// what the controller may still reach is not.
    pub(crate) fn quarantine_rest(&mut self) {
        let born = self.zombies.iter().map(|z| z.born).max().unwrap_or(0);
        let nheld = 2 * self.zombies.len()
            + self.buffers.len()
            + self.regs.len()
            + self.waiting.len()
            + self.maps.len();
        let mut qids = KVec::new();
        let mut held = KVec::new();
        if qids.reserve(self.zombies.len(), GFP_KERNEL).is_err()
            || held.reserve(nheld, GFP_KERNEL).is_err()
        {
            pr_err!("out of memory: leaking quarantined memory\n");
            mem::forget(mem::take(&mut self.zombies));
            mem::forget(mem::take(&mut self.buffers));
            mem::forget(mem::take(&mut self.regs));
            mem::forget(mem::take(&mut self.waiting));
            mem::forget(mem::take(&mut self.maps));
            return;
        }
        // Room was reserved above: none of these pushes can fail and drop its value.
        for z in mem::take(&mut self.zombies) {
            let _ = qids.push(z.qid, GFP_KERNEL);
            for r in z.rings.into_iter().flatten() {
                let _ = held.push(r, GFP_KERNEL);
            }
        }
        for b in mem::take(&mut self.buffers) {
            let _ = held.push(Held::new(Memory::Coherent(b.mem)), GFP_KERNEL);
        }
        for r in mem::take(&mut self.regs) {
            let _ = held.push(Held::new(r.mem), GFP_KERNEL);
        }
        for w in mem::take(&mut self.waiting) {
            let _ = held.push(w.held, GFP_KERNEL);
        }
        for m in mem::take(&mut self.maps) {
            let _ = held.push(Held::new(Memory::FileBlocks(m)), GFP_KERNEL);
        }
        match Package::new(born, qids, held) {
            Ok(p) => self.c.quarantine(p),
            Err(p) => {
                pr_err!("cannot keep quarantined memory: leaking it\n");
                mem::forget(p);
            }
        }
    }
}
