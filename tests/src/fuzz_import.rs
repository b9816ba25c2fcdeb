//! The fuzz suite's share of memory the caller brings: REGISTER_DMABUF of udmabufs and
//! of fds that are no dma-buf, at good and bad offsets and lengths, and CREATE_QPAIR
//! with rings placed in buffers and registrations (random ids, offsets and flags).
//! A child module of `fuzz`, so it extends its worker.

use std::os::fd::{AsRawFd, OwnedFd};

use homi::uapi::*;

use super::{Worker, BUFFER, PAGE, QPAIR, REG};

/// Bytes of the udmabuf every thread imports from.
pub(super) const UDMABUF_LEN: u64 = 1 << 20;

/// The fds REGISTER_DMABUF is handed: one udmabuf, and fds that are no dma-buf.
pub(super) struct ImportFds {
    /// `None` where the kernel has no `/dev/udmabuf`.
    pub(super) udmabuf: Option<OwnedFd>,
    /// A memfd (what a udmabuf is made of, but not one).
    pub(super) memfd: OwnedFd,
}

impl ImportFds {
    pub(super) fn new() -> anyhow::Result<Self> {
        let udmabuf = if std::path::Path::new("/dev/udmabuf").exists() {
            Some(crate::dmabuf::udmabuf(UDMABUF_LEN as usize)?)
        } else {
            None
        };
        let memfd = nix::sys::memfd::memfd_create("homi-fuzz-import", nix::sys::memfd::MFdFlags::empty())?;
        nix::unistd::ftruncate(&memfd, UDMABUF_LEN as i64)?;
        Ok(Self { udmabuf, memfd })
    }
}

impl Worker<'_> {
    /// REGISTER_DMABUF of the udmabuf, or of an fd that is no dma-buf, with offsets and
    /// lengths inside, across and past its end, and must-be-zero fields that are not.
    pub(super) fn register_dmabuf(&mut self) {
        if self.full() {
            return self.release(REG);
        }
        let homi = self.file();
        let good = self.sh.import.udmabuf.as_ref().map(|f| f.as_raw_fd());
        let fd = match (good, self.rng.below(6)) {
            (Some(fd), 0..=3) => fd,
            (_, 4) => self.sh.import.memfd.as_raw_fd(),
            _ => self.rng.pick(&self.sh.forged),
        };
        let pages = 1 + self.rng.below(16);
        // Room for every length the module may accept here (up to the whole udmabuf),
        // and for the one-page-too-long one: it writes `len / 4096` addresses.
        let mut addrs = vec![0u64; (UDMABUF_LEN / PAGE as u64) as usize + 1];
        let bad = self.rng.bad(self.sh.none.addr) as u64;
        let mut r = HomiRegisterDmabuf {
            fd,
            flags: self.rng.zeroish(),
            offset: PAGE as u64 * self.rng.below(UDMABUF_LEN / PAGE as u64),
            len: pages * PAGE as u64,
            dma_addrs: addrs.as_mut_ptr() as u64,
            id: if self.rng.one_in(16) { self.rng.next() as u32 } else { 0 },
            reserved: self.rng.zeroish(),
        };
        match self.rng.below(10) {
            0 => r.offset += 1 + self.rng.below(4095),
            1 => r.offset = self.rng.odd(),
            2 => r.len = self.rng.pick(&[0, 1, 4095, r.len + 8, UDMABUF_LEN, UDMABUF_LEN + PAGE as u64]),
            // Lengths past the array only ever come with an array the module can't write.
            3 => (r.len, r.dma_addrs) = (self.rng.odd(), bad),
            4 => r.dma_addrs = self.rng.pick(&[bad, self.sh.ro.addr as u64]),
            _ => {}
        }
        let inside = r.offset.checked_add(r.len).is_some_and(|end| end <= UDMABUF_LEN);
        let refuse = Some(r.fd) != good
            || r.flags != 0
            || r.reserved != 0
            || r.id != 0
            || r.offset % PAGE as u64 != 0
            || r.len == 0
            || r.len % PAGE as u64 != 0
            || !inside;
        if self.call("REGISTER_DMABUF", &homi, HOMI_IOCTL_REGISTER_DMABUF, &mut r, refuse) {
            self.add(&homi, REG, r.id, None);
        }
    }

    /// CREATE_QPAIR with the SQ, the CQ or both placed in a buffer or registration (of
    /// this file or another, or an id nobody has), at random offsets, with random flags.
    pub(super) fn placed_qpair(&mut self) {
        if self.full() {
            return self.release(QPAIR);
        }
        let kind = if self.rng.one_in(2) { BUFFER } else { REG };
        let (homi, id) = self.target(kind);
        let depth = self.rng.pick(&[2, 16, 64, 128, 256, 1024]);
        let mut offset = || match self.rng.below(6) {
            0 => self.rng.odd() & !4095,
            1 => 1 + self.rng.below(4095),
            _ => PAGE as u64 * self.rng.below(16),
        };
        let (sq_off, cq_off) = (offset(), offset());
        let place = self.rng.pick(&[
            HOMI_QPAIR_SQ_IN_MEMORY,
            HOMI_QPAIR_CQ_IN_MEMORY,
            HOMI_QPAIR_SQ_IN_MEMORY | HOMI_QPAIR_CQ_IN_MEMORY,
        ]);
        let flags = place | self.rng.zeroish();
        let mut q = HomiQpair { depth, flags, reserved: self.rng.zeroish(), ..Default::default() };
        if flags & HOMI_QPAIR_SQ_IN_MEMORY != 0 || self.rng.one_in(8) {
            (q.sq_memory, q.sq_memory_offset) = (id, sq_off);
        }
        if flags & HOMI_QPAIR_CQ_IN_MEMORY != 0 || self.rng.one_in(8) {
            (q.cq_memory, q.cq_memory_offset) = (id, cq_off);
        }
        // What the ABI refuses whatever memory the ids name.
        let (sq, cq) = (flags & HOMI_QPAIR_SQ_IN_MEMORY != 0, flags & HOMI_QPAIR_CQ_IN_MEMORY != 0);
        let stray =
            |on: bool, mem: u32, off: u64| if on { mem == 0 || off % PAGE as u64 != 0 } else { mem != 0 || off != 0 };
        let refuse = flags & !(HOMI_QPAIR_SQ_IN_MEMORY | HOMI_QPAIR_CQ_IN_MEMORY) != 0
            || q.reserved != 0
            || !(2..=self.sh.max_depth).contains(&depth)
            || stray(sq, q.sq_memory, q.sq_memory_offset)
            || stray(cq, q.cq_memory, q.cq_memory_offset);
        if !self.call("CREATE_QPAIR(placed)", &homi, HOMI_IOCTL_CREATE_QPAIR, &mut q, refuse) {
            return;
        }
        if q.status_slot as usize >= HOMI_STATUS_SLOTS || (sq && q.sq_offset != 0) || (cq && q.cq_offset != 0) {
            self.stats.bad(format!("CREATE_QPAIR(placed) replied {q:?}"));
        }
        self.add(&homi, QPAIR, q.qid, None);
        if !sq {
            self.add_region(&homi, q.sq_offset, q.sq_size, true, false);
        }
        if !cq {
            self.add_region(&homi, q.cq_offset, q.cq_size, true, false);
        }
        self.add_region(&homi, q.doorbell_offset, PAGE as u64, false, false);
    }
}
