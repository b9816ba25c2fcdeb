//! File extents under a lease: [`Controller::map_file`] asks the module where a file's
//! bytes lie on the namespace, and [`QueuePair::read_at`] and [`QueuePair::write_at`]
//! move file bytes at those LBAs through homi queues.
//!
//! The map stays true while its lease holds. On XFS that is a layout lease: when the
//! file system must change the layout, the module marks the map [`MapState::Revoked`]
//! in the map status page and waits; the holder stops issuing I/O on the map, waits for
//! what is in flight, and unmaps, which acknowledges. A holder too slow to do so is
//! fenced: its queue pairs are destroyed. On ext4, which has no layout leases, writes
//! to the file are denied while it is mapped (opens for writing and truncates fail
//! with `ETXTBSY`), so its maps are never revoked.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use homi_uapi::*;

use crate::blockdev::{describe_device, path_of};
use crate::buffer::DmaBuffer;
use crate::command::Command;
use crate::controller::{Controller, Shared};
use crate::error::MapRefusal;
use crate::prp::{LIST_ENTRIES, PAGE};
use crate::queue::QueuePair;
use crate::{sys, Error, Result};

/// What an extent holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ExtentKind {
    /// Data at [`Extent::lba`].
    Mapped,
    /// Allocated but never written: reads as zeros; homi neither reads nor writes it.
    Unwritten,
    /// No blocks: reads as zeros.
    Hole,
}

/// One extent of a [`FileMap`], in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    /// Byte offset in the file.
    pub file_offset: u64,
    /// Bytes.
    pub len: u64,
    /// The namespace.
    pub nsid: u32,
    /// First LBA on the namespace (partition offset added); 0 for a hole.
    pub lba: u64,
    /// What it holds.
    pub kind: ExtentKind,
}

impl Extent {
    /// One past the last byte.
    pub fn end(&self) -> u64 {
        self.file_offset + self.len
    }
}

/// A file map's state, from the map status page.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MapState {
    /// The map is true; I/O on it may go on.
    Live,
    /// The lease broke: issue no more I/O, wait for what is in flight, then unmap.
    Revoked,
    /// The holder did not acknowledge in time: the module destroyed this file's queue
    /// pairs and let the file system go on. Unmap to free the slot.
    Fenced,
}

impl MapState {
    /// From `HOMI_MAP_*`; anything but live or revoked counts as fenced (no I/O).
    pub fn from_raw(v: u32) -> Self {
        match v {
            HOMI_MAP_LIVE => MapState::Live,
            HOMI_MAP_REVOKED => MapState::Revoked,
            _ => MapState::Fenced,
        }
    }
}

impl std::fmt::Display for MapState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            MapState::Live => "live",
            MapState::Revoked => "revoked (its lease broke)",
            MapState::Fenced => "fenced (its holder was too slow to let go; its queue pairs were destroyed)",
        })
    }
}

/// What keeps a map true.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Lease {
    /// A layout lease (XFS): broken by writes, truncate, fallocate, reflink.
    Layout,
    /// Writes denied (ext4): opens for writing and truncates fail with `ETXTBSY` while
    /// the file is mapped; the map is never revoked.
    DenyWrite,
}

/// Extents the first `HOMI_IOCTL_MAP_FILE` call has room for.
const FIRST_CAPACITY: u32 = 256;
/// Retries of a map that fails with `EAGAIN` (the layout changed meanwhile).
const BUSY_RETRIES: u32 = 4;
/// The largest command `read_at` and `write_at` issue: one PRP list page covers it
/// from any 4-byte-aligned buffer offset.
const MAX_PIECE: u64 = (LIST_ENTRIES * PAGE) as u64;

/// Part of a file mapped through homi: its extents, under a lease, until unmapped
/// (by [`unmap`](Self::unmap) or on drop).
#[derive(Debug)]
pub struct FileMap {
    shared: Arc<Shared>,
    /// This map's slot in the map status page, which `shared` keeps mapped.
    state: *const u32,
    extents: Vec<Extent>,
    raw: Vec<HomiExtent>,
    offset: u64,
    len: u64,
    file_size: u64,
    block_size: u32,
    nsid: u32,
    lba_shift: u32,
    revoke_ms: u32,
    writable: bool,
    lease: Lease,
    id: u32,
    /// Not yet unmapped.
    held: bool,
}

// SAFETY: `state` points into the read-only map status page, which `shared` keeps
// mapped; it is only read with atomic loads.
unsafe impl Send for FileMap {}
// SAFETY: as above; every method takes `&self` to read.
unsafe impl Sync for FileMap {}

impl Controller {
    /// Maps `[offset, offset + len)` of `file` (`len` clipped to the file's end; `offset`
    /// a multiple of 4096) for reading, or with `write` for writing into its mapped
    /// extents (XFS only). Retries with a bigger extent array when the module's reply
    /// was cut short by capacity; one kernel map per [`FileMap`]. The file must be open
    /// for reading (and writing, for a writable map).
    pub fn map_file(&self, file: &File, offset: u64, len: u64, write: bool) -> Result<FileMap> {
        if offset % PAGE as u64 != 0 {
            return Err(Error::Invalid("a file map's offset must be a multiple of 4096"));
        }
        if len == 0 {
            return Err(Error::Invalid("a file map must cover at least one byte"));
        }
        let shared = self.shared().clone();
        let page = shared.map_status_page()?;
        let mut capacity = FIRST_CAPACITY;
        let mut busy = 0;
        loop {
            let mut raw = vec![HomiExtent::default(); capacity as usize];
            let mut req = HomiMapFile {
                fd: file.as_raw_fd(),
                flags: if write { HOMI_MAP_WRITE } else { 0 },
                offset,
                len,
                extents: raw.as_mut_ptr() as u64,
                capacity,
                ..Default::default()
            };
            // SAFETY: both fds are open; `req` names `capacity` writable extents.
            match unsafe { sys::homi_map_file(shared.fd().as_raw_fd(), &mut req) } {
                Ok(_) => {}
                Err(nix::Error::EAGAIN) if busy < BUSY_RETRIES => {
                    busy += 1;
                    std::thread::sleep(Duration::from_millis(1 << busy));
                    continue;
                }
                Err(e) => return Err(refusal(&shared, file, write, e)),
            }
            let map = FileMap::new(shared.clone(), page, req, raw, write)?;
            let want = len.min(req.file_size.next_multiple_of(u64::from(req.block_size.max(1))).saturating_sub(offset));
            if req.count == capacity && req.len < want && capacity < HOMI_MAP_MAX_EXTENTS {
                tracing::debug!(capacity, covered = req.len, want, "file map cut short; asking with more room");
                map.unmap()?;
                capacity = capacity.saturating_mul(8).min(HOMI_MAP_MAX_EXTENTS);
                continue;
            }
            tracing::debug!(id = map.id, extents = map.extents.len(), len = map.len, "file mapped");
            return Ok(map);
        }
    }
}

/// The error for a refused `HOMI_IOCTL_MAP_FILE`, with its reason named.
fn refusal(shared: &Shared, file: &File, write: bool, e: nix::Error) -> Error {
    let reason = match e {
        nix::Error::EXDEV => {
            MapRefusal::OtherDevice { device: describe_device(file), controller: format!("nvme{}", shared.instance) }
        }
        nix::Error::ETXTBSY => MapRefusal::SharedBlocks,
        nix::Error::EOPNOTSUPP if write => MapRefusal::WriteUnsupported,
        nix::Error::EOPNOTSUPP => MapRefusal::Unsupported,
        nix::Error::EINVAL => MapRefusal::Unmappable,
        nix::Error::EAGAIN => MapRefusal::Busy,
        nix::Error::EBADF => MapRefusal::BadFile,
        source => return Error::Ioctl { op: "HOMI_IOCTL_MAP_FILE", source },
    };
    Error::MapRefused { file: path_of(file), reason }
}

/// The module's extents in bytes, checked: in file order, without gaps, covering
/// `[offset, offset + len)`, of known kinds, and on the map's namespace.
fn extents_from_raw(raw: &[HomiExtent], offset: u64, len: u64, lba_shift: u32) -> Result<Vec<Extent>> {
    let bad = Error::Invalid("the module's file map reply is malformed");
    let mut out = Vec::with_capacity(raw.len());
    let mut at = raw.first().map_or(offset, |e| e.file_offset);
    if at > offset {
        return Err(bad);
    }
    for r in raw {
        let kind = match r.kind {
            HOMI_EXTENT_MAPPED => ExtentKind::Mapped,
            HOMI_EXTENT_UNWRITTEN => ExtentKind::Unwritten,
            HOMI_EXTENT_HOLE => ExtentKind::Hole,
            _ => return Err(bad),
        };
        let bytes = r.blocks.checked_shl(lba_shift).filter(|b| b >> lba_shift == r.blocks && *b > 0);
        let (Some(bytes), true) = (bytes, r.file_offset == at) else { return Err(bad) };
        out.push(Extent { file_offset: at, len: bytes, nsid: r.nsid, lba: r.lba, kind });
        at = at.checked_add(bytes).ok_or(Error::Invalid("the module's file map reply is malformed"))?;
    }
    if len > 0 && at < offset + len {
        return Err(bad);
    }
    Ok(out)
}

/// The extent that holds byte `offset`, by binary search.
fn locate(extents: &[Extent], offset: u64) -> Option<&Extent> {
    let i = extents.partition_point(|e| e.end() <= offset);
    extents.get(i).filter(|e| e.file_offset <= offset)
}

/// Fails unless `[offset, offset + len)` lies inside the map `[map_off, map_off + map_len)`.
fn check_range(map_off: u64, map_len: u64, offset: u64, len: u64) -> Result<()> {
    let inside = offset >= map_off && offset.checked_add(len).is_some_and(|end| end <= map_off + map_len);
    if inside {
        Ok(())
    } else {
        Err(Error::OutsideMap { offset, len })
    }
}

/// For a read of `len` bytes at `offset` of a file of `file_size` bytes on blocks of
/// `block` bytes: the file bytes there are (short at the end of the file), and the
/// bytes to move (those, rounded up to whole blocks).
fn clip_to_eof(file_size: u64, offset: u64, len: u64, block: u64) -> (u64, u64) {
    let data = file_size.saturating_sub(offset).min(len);
    (data, data.next_multiple_of(block))
}

/// One command's worth of a transfer, or a stretch to zero-fill.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Piece {
    /// File offset.
    offset: u64,
    /// Bytes.
    len: u64,
    /// Offset in the caller's buffer.
    buf_off: usize,
    nsid: u32,
    lba: u64,
    kind: ExtentKind,
}

/// Splits `[offset, offset + len)` (inside `extents`) at extent boundaries, and mapped
/// stretches into pieces of at most `max_piece` bytes (a multiple of the block size).
fn plan(extents: &[Extent], offset: u64, len: u64, buf_off: usize, max_piece: u64, lba_shift: u32) -> Vec<Piece> {
    let end = offset + len;
    let mut out = Vec::new();
    let first = extents.partition_point(|e| e.end() <= offset);
    for e in extents[first..].iter().take_while(|e| e.file_offset < end) {
        let (mut at, stop) = (offset.max(e.file_offset), end.min(e.end()));
        while at < stop {
            let n = if e.kind == ExtentKind::Mapped { (stop - at).min(max_piece) } else { stop - at };
            let lba = if e.kind == ExtentKind::Mapped { e.lba + ((at - e.file_offset) >> lba_shift) } else { 0 };
            let buf_off = buf_off + (at - offset) as usize;
            out.push(Piece { offset: at, len: n, buf_off, nsid: e.nsid, lba, kind: e.kind });
            at += n;
        }
    }
    out
}

impl FileMap {
    fn new(
        shared: Arc<Shared>,
        page: *const u8,
        r: HomiMapFile,
        mut raw: Vec<HomiExtent>,
        write: bool,
    ) -> Result<Self> {
        raw.truncate((r.count as usize).min(raw.len()));
        let lease = if r.flags & HOMI_MAP_LAYOUT_LEASE != 0 { Lease::Layout } else { Lease::DenyWrite };
        let slot = (r.status_slot as usize).min(HOMI_MAP_SLOTS - 1);
        let mut map = Self {
            shared,
            // SAFETY: `slot` is inside the one-page status array (clamped above; checked
            // below, before any use).
            state: unsafe { page.cast::<u32>().add(slot) },
            extents: Vec::new(),
            raw,
            offset: r.offset,
            len: r.len,
            file_size: r.file_size,
            block_size: r.block_size,
            nsid: r.nsid,
            lba_shift: r.lba_shift,
            revoke_ms: r.revoke_ms,
            writable: write,
            lease,
            id: r.id,
            held: true,
        };
        // From here on, dropping `map` unmaps.
        if r.status_slot as usize >= HOMI_MAP_SLOTS || !(9..=16).contains(&r.lba_shift) || r.len > MAX_REPLY_LEN {
            return Err(Error::Invalid("the module's file map reply is malformed"));
        }
        map.extents = extents_from_raw(&map.raw, r.offset, r.len, r.lba_shift)?;
        Ok(map)
    }

    /// The extents, in bytes, in file order, without gaps.
    pub fn extents(&self) -> &[Extent] {
        &self.extents
    }

    /// The extents as the module gave them (lengths in logical blocks), for device-side
    /// engines to upload.
    pub fn raw_extents(&self) -> &[HomiExtent] {
        &self.raw
    }

    /// The map's state: an acquire load of its slot in the map status page.
    pub fn state(&self) -> MapState {
        // SAFETY: `state` is a 4-aligned slot of the mapped status page (see `new`),
        // which the module writes atomically; we only load.
        MapState::from_raw(unsafe { AtomicU32::from_ptr(self.state.cast_mut()) }.load(Ordering::Acquire))
    }

    /// The map's slot in the map status page (`HOMI_MAP_*`, read-only memory), for
    /// device-side engines. Valid while `self` lives.
    pub fn state_ptr(&self) -> *const u32 {
        self.state
    }

    /// First file byte mapped.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Bytes mapped from [`offset`](Self::offset): up to the end of the file rounded
    /// up to its block size.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether nothing is mapped (the offset is at or past the end of the file).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The file's size when it was mapped.
    pub fn file_size(&self) -> u64 {
        self.file_size
    }

    /// The file system's block size.
    pub fn block_size(&self) -> u32 {
        self.block_size
    }

    /// The namespace that holds the file.
    pub fn nsid(&self) -> u32 {
        self.nsid
    }

    /// log2 of the namespace's logical block size.
    pub fn lba_shift(&self) -> u32 {
        self.lba_shift
    }

    /// How long, in ms, the holder has to acknowledge a revocation (stop I/O on the
    /// map, then [`unmap`](Self::unmap)) before the module fences it: destroys every
    /// queue pair of the controller handle.
    pub fn revoke_ms(&self) -> u32 {
        self.revoke_ms
    }

    /// Whether the map was made for writing.
    pub fn writable(&self) -> bool {
        self.writable
    }

    /// What keeps the map true.
    pub fn lease(&self) -> Lease {
        self.lease
    }

    /// The module's id of the map.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The extent that holds file byte `offset`.
    pub fn locate(&self, offset: u64) -> Option<&Extent> {
        locate(&self.extents, offset)
    }

    /// Fails with [`Error::MapRevoked`] unless the map is live.
    pub fn check_live(&self) -> Result<()> {
        match self.state() {
            MapState::Live => Ok(()),
            state => Err(Error::MapRevoked { state }),
        }
    }

    /// Lets the map go: for a revoked map, this is the acknowledgement that none of its
    /// I/O is in flight. A writable map's range is dropped from the page cache.
    pub fn unmap(mut self) -> Result<()> {
        self.held = false;
        unmap(&self.shared, self.id)
    }
}

fn unmap(shared: &Shared, id: u32) -> Result<()> {
    let req = HomiId { id, flags: 0 };
    // SAFETY: the fd is open and `req` is a valid `HomiId`.
    unsafe { sys::homi_unmap_file(shared.fd().as_raw_fd(), &req) }
        .map(drop)
        .map_err(|source| Error::Ioctl { op: "HOMI_IOCTL_UNMAP_FILE", source })
}

impl Drop for FileMap {
    fn drop(&mut self) {
        if self.held {
            if let Err(e) = unmap(&self.shared, self.id) {
                tracing::warn!(id = self.id, error = %e, "unmapping a file map failed");
            }
        }
    }
}

/// The largest `len` a reply may claim (anything more is a malformed reply).
const MAX_REPLY_LEN: u64 = 1 << 62;

impl QueuePair {
    /// Reads `len` bytes of the mapped file at `offset` into `buf[buf_off..]`.
    ///
    /// `offset` and `len` are multiples of the namespace's block size (`1 <<
    /// lba_shift`), and the range lies inside the map. The read is split at extent
    /// boundaries and into commands the controller takes, all submitted (bounded by the
    /// queue depth) and polled to completion; holes and unwritten extents are
    /// zero-filled on the host (the buffer needs a CPU mapping for them). Stops at the
    /// end of the file: returns the bytes read, short there (the rest of the last
    /// block is zeroed). The queue pair must have nothing else in flight.
    ///
    /// Fails with [`Error::MapRevoked`] when the map is not live before submitting
    /// (nothing more is submitted once it turns revoked; what is in flight is waited
    /// for), or when it turned fenced by the end (its queues were destroyed, so the
    /// data cannot be trusted). On [`Error::Timeout`] commands may still be writing
    /// into `buf`: keep it alive and unused until this queue pair is dropped.
    pub fn read_at(
        &mut self,
        map: &FileMap,
        offset: u64,
        buf: &DmaBuffer,
        buf_off: usize,
        len: usize,
        timeout: Duration,
    ) -> Result<usize> {
        map.check_live()?;
        let block = 1u64 << map.lba_shift;
        check_io(map, offset, buf, buf_off, len)?;
        let (data, io) = clip_to_eof(map.file_size, offset, len as u64, block);
        if io == 0 {
            return Ok(0);
        }
        check_range(map.offset, map.len, offset, io)?;
        let pieces = plan(&map.extents, offset, io, buf_off, self.piece_limit(block), map.lba_shift);
        let zeros = |p: &Piece| p.kind != ExtentKind::Mapped;
        if pieces.iter().any(zeros) && !buf.is_mapped() {
            return Err(Error::Invalid("a read of holes or unwritten extents needs a buffer with a CPU mapping"));
        }
        for p in pieces.iter().filter(|p| zeros(p)) {
            zero(buf, p.buf_off, p.len as usize);
        }
        self.transfer(map, &pieces, buf, false, timeout)?;
        if buf.is_mapped() {
            // The rest of the last block, past the end of the file.
            zero(buf, buf_off + data as usize, (io - data) as usize);
        }
        Ok(data as usize)
    }

    /// Writes `len` bytes from `buf[buf_off..]` into the mapped file at `offset`, into
    /// mapped extents only: a hole or unwritten extent anywhere in the range fails with
    /// [`Error::NotMapped`] before anything is submitted. The map must be writable, the
    /// range inside it, aligned as for [`read_at`](Self::read_at), and below the end of
    /// the file rounded up to its block size. The file system sees the data once the
    /// map is unmapped. Returns `len`. Errors and timeouts as for `read_at`.
    pub fn write_at(
        &mut self,
        map: &FileMap,
        offset: u64,
        buf: &DmaBuffer,
        buf_off: usize,
        len: usize,
        timeout: Duration,
    ) -> Result<usize> {
        if !map.writable {
            return Err(Error::Invalid("the file map is read-only: map the file with write = true"));
        }
        map.check_live()?;
        check_io(map, offset, buf, buf_off, len)?;
        if len == 0 {
            return Ok(0);
        }
        let limit = map.file_size.next_multiple_of(u64::from(map.block_size.max(1)));
        if offset.checked_add(len as u64).is_none_or(|end| end > limit) {
            return Err(Error::OutsideMap { offset, len: len as u64 });
        }
        check_range(map.offset, map.len, offset, len as u64)?;
        let block = 1u64 << map.lba_shift;
        let pieces = plan(&map.extents, offset, len as u64, buf_off, self.piece_limit(block), map.lba_shift);
        if let Some(p) = pieces.iter().find(|p| p.kind != ExtentKind::Mapped) {
            return Err(Error::NotMapped { offset: p.offset });
        }
        self.transfer(map, &pieces, buf, true, timeout)?;
        Ok(len)
    }

    /// The largest piece: the controller's limit and one PRP list page, in blocks.
    fn piece_limit(&self, block: u64) -> u64 {
        let limit = (self.max_transfer() as u64).min(MAX_PIECE);
        (limit / block * block).max(block)
    }

    /// Moves the mapped pieces, keeping the queue full, and waits for all of them.
    /// A map fenced meanwhile wins over any other outcome: the module destroyed the
    /// queue, so completions (or their absence) and data mean nothing.
    fn transfer(
        &mut self,
        map: &FileMap,
        pieces: &[Piece],
        buf: &DmaBuffer,
        write: bool,
        timeout: Duration,
    ) -> Result<()> {
        let r = self.transfer_pieces(map, pieces, buf, write, timeout);
        match map.state() {
            MapState::Fenced => Err(Error::MapRevoked { state: MapState::Fenced }),
            _ => r,
        }
    }

    fn transfer_pieces(
        &mut self,
        map: &FileMap,
        pieces: &[Piece],
        buf: &DmaBuffer,
        write: bool,
        timeout: Duration,
    ) -> Result<()> {
        if self.in_flight() != 0 {
            return Err(Error::Invalid("read_at and write_at need a queue pair with nothing in flight"));
        }
        let mut todo = pieces.iter().filter(|p| p.kind == ExtentKind::Mapped);
        let mut next = todo.next();
        let (mut submitted, mut done) = (0u64, 0u64);
        let mut failed: Option<Error> = None;
        let start = Instant::now();
        loop {
            if failed.is_none() && next.is_some() {
                // Nothing new goes out once the lease broke.
                if let Err(e) = map.check_live() {
                    failed = Some(e);
                }
            }
            while let (Some(p), None) = (next, &failed) {
                if self.free_slots() == 0 {
                    break;
                }
                let blocks = (p.len >> map.lba_shift) as u32;
                let cmd =
                    if write { Command::write(p.nsid, p.lba, blocks) } else { Command::read(p.nsid, p.lba, blocks) };
                // SAFETY: `buf` outlives every command: each is polled to completion
                // below, and on a timeout the caller keeps `buf` (documented).
                match unsafe { self.push_span(cmd, buf, p.buf_off, p.len as usize, submitted, None) } {
                    Ok(_) => {
                        submitted += 1;
                        next = todo.next();
                    }
                    // The PRP list pages ran out before the queue did: reap first.
                    Err(Error::QueueFull) if submitted > done => break,
                    Err(e) => failed = Some(e),
                }
            }
            self.ring();
            if done == submitted && (failed.is_some() || next.is_none()) {
                break;
            }
            let reaped = self.poll(|c| {
                if let Err(e) = c.ok() {
                    failed.get_or_insert(e);
                }
            })?;
            done += reaped as u64;
            if reaped == 0 {
                if map.state() == MapState::Fenced {
                    // The module destroyed this queue: nothing in flight completes.
                    return Err(Error::MapRevoked { state: MapState::Fenced });
                }
                if start.elapsed() > timeout {
                    self.check()?;
                    tracing::warn!(qid = self.qid(), in_flight = submitted - done, "file I/O timed out");
                    return Err(Error::Timeout(timeout));
                }
                std::hint::spin_loop();
            }
        }
        failed.map_or(Ok(()), Err)
    }
}

/// Checks what `read_at` and `write_at` share: alignment and the buffer's bounds.
fn check_io(map: &FileMap, offset: u64, buf: &DmaBuffer, buf_off: usize, len: usize) -> Result<()> {
    let block = 1u64 << map.lba_shift;
    if offset % block != 0 || len as u64 % block != 0 {
        return Err(Error::Invalid("file offset and length must be multiples of the namespace's block size"));
    }
    if buf_off.checked_add(len).is_none_or(|end| end > buf.len()) {
        return Err(Error::Invalid("range beyond the buffer"));
    }
    Ok(())
}

/// Zeroes `len` bytes at `off` of a CPU-mapped buffer that no command touches there.
fn zero(buf: &DmaBuffer, off: usize, len: usize) {
    debug_assert!(buf.is_mapped() && off + len <= buf.len());
    // SAFETY: inside the buffer's mapping (bounds checked by the callers); no command
    // reads or writes those bytes.
    unsafe { std::ptr::write_bytes(buf.as_ptr().add(off), 0, len) };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(file_offset: u64, lba: u64, blocks: u64, kind: u32) -> HomiExtent {
        HomiExtent { file_offset, lba, blocks, nsid: 1, kind }
    }

    fn sample() -> Vec<Extent> {
        // 8 KiB data, 4 KiB hole, 4 KiB unwritten, 1 MiB data; 512-byte LBAs.
        let r = [
            raw(0, 1000, 16, HOMI_EXTENT_MAPPED),
            raw(8192, 0, 8, HOMI_EXTENT_HOLE),
            raw(12288, 5000, 8, HOMI_EXTENT_UNWRITTEN),
            raw(16384, 9000, 2048, HOMI_EXTENT_MAPPED),
        ];
        extents_from_raw(&r, 0, 16384 + (1 << 20), 9).unwrap()
    }

    #[test]
    fn raw_extents_become_byte_extents() {
        let e = sample();
        assert_eq!(e.len(), 4);
        assert_eq!(e[0], Extent { file_offset: 0, len: 8192, nsid: 1, lba: 1000, kind: ExtentKind::Mapped });
        assert_eq!(e[1].kind, ExtentKind::Hole);
        assert_eq!(e[2].kind, ExtentKind::Unwritten);
        assert_eq!(e[3].end(), 16384 + (1 << 20));
    }

    #[test]
    fn malformed_replies_are_refused() {
        let gap = [raw(0, 1, 8, HOMI_EXTENT_MAPPED), raw(8192, 2, 8, HOMI_EXTENT_MAPPED)];
        assert!(extents_from_raw(&gap, 0, 8192, 9).is_err());
        assert!(extents_from_raw(&[raw(0, 1, 8, 7)], 0, 4096, 9).is_err());
        assert!(extents_from_raw(&[raw(0, 1, 0, HOMI_EXTENT_MAPPED)], 0, 0, 9).is_err());
        // Short of the length claimed.
        assert!(extents_from_raw(&[raw(0, 1, 8, HOMI_EXTENT_MAPPED)], 0, 8192, 9).is_err());
        // Starting after the offset asked for.
        assert!(extents_from_raw(&[raw(8192, 1, 8, HOMI_EXTENT_MAPPED)], 4096, 4096, 9).is_err());
        assert!(extents_from_raw(&[raw(0, 1, u64::MAX, HOMI_EXTENT_MAPPED)], 0, 4096, 9).is_err());
        assert_eq!(extents_from_raw(&[], 0, 0, 9).unwrap(), vec![]);
    }

    #[test]
    fn locate_finds_the_extent_by_binary_search() {
        let e = sample();
        assert_eq!(locate(&e, 0).unwrap().lba, 1000);
        assert_eq!(locate(&e, 8191).unwrap().lba, 1000);
        assert_eq!(locate(&e, 8192).unwrap().kind, ExtentKind::Hole);
        assert_eq!(locate(&e, 16384 + 5).unwrap().lba, 9000);
        assert!(locate(&e, 16384 + (1 << 20)).is_none());
        assert!(locate(&[], 0).is_none());
    }

    #[test]
    fn plans_split_at_extents_and_at_the_largest_command() {
        let e = sample();
        let p = plan(&e, 4096, 16384 + 300 * 1024 - 4096, 512, 128 * 1024, 9);
        let kinds: Vec<_> = p.iter().map(|p| (p.offset, p.len, p.kind)).collect();
        assert_eq!(
            kinds,
            vec![
                (4096, 4096, ExtentKind::Mapped),
                (8192, 4096, ExtentKind::Hole),
                (12288, 4096, ExtentKind::Unwritten),
                (16384, 131072, ExtentKind::Mapped),
                (16384 + 131072, 131072, ExtentKind::Mapped),
                (16384 + 262144, 45056, ExtentKind::Mapped),
            ]
        );
        // LBAs advance inside an extent; buffer offsets follow file offsets.
        assert_eq!(p[0].lba, 1000 + 8);
        assert_eq!(p[4].lba, 9000 + 256);
        assert_eq!(p[0].buf_off, 512);
        assert_eq!(p[4].buf_off, 512 + 16384 + 131072 - 4096);
        assert_eq!(p.iter().map(|p| p.len).sum::<u64>(), 16384 + 300 * 1024 - 4096);
    }

    #[test]
    fn plan_inside_one_extent_is_one_piece() {
        let p = plan(&sample(), 16384 + 4096, 8192, 0, MAX_PIECE, 9);
        assert_eq!(
            p,
            vec![Piece { offset: 20480, len: 8192, buf_off: 0, nsid: 1, lba: 9008, kind: ExtentKind::Mapped }]
        );
    }

    #[test]
    fn reads_stop_at_the_end_of_the_file() {
        assert_eq!(clip_to_eof(10_000, 0, 16384, 512), (10_000, 10_240));
        assert_eq!(clip_to_eof(10_000, 8192, 8192, 4096), (1808, 4096));
        assert_eq!(clip_to_eof(10_000, 12288, 4096, 512), (0, 0));
        assert_eq!(clip_to_eof(1 << 20, 4096, 8192, 512), (8192, 8192));
    }

    #[test]
    fn ranges_must_lie_inside_the_map() {
        assert!(check_range(4096, 8192, 4096, 8192).is_ok());
        assert!(check_range(4096, 8192, 8192, 4096).is_ok());
        assert!(matches!(check_range(4096, 8192, 0, 4096), Err(Error::OutsideMap { offset: 0, len: 4096 })));
        assert!(check_range(4096, 8192, 8192, 8192).is_err());
        assert!(check_range(0, 8192, u64::MAX - 1, 2).is_err());
    }

    #[test]
    fn map_states_decode() {
        assert_eq!(MapState::from_raw(HOMI_MAP_LIVE), MapState::Live);
        assert_eq!(MapState::from_raw(HOMI_MAP_REVOKED), MapState::Revoked);
        assert_eq!(MapState::from_raw(HOMI_MAP_FENCED), MapState::Fenced);
        assert_eq!(MapState::from_raw(HOMI_MAP_NONE), MapState::Fenced);
        let e = Error::MapRevoked { state: MapState::Revoked };
        assert!(e.to_string().contains("revoked"));
    }

    #[test]
    fn refusals_name_their_reason() {
        let e = Error::MapRefused {
            file: "/mnt/f".into(),
            reason: MapRefusal::OtherDevice { device: "dm-0".into(), controller: "nvme0".into() },
        };
        let s = e.to_string();
        assert!(s.contains("/mnt/f") && s.contains("dm-0") && s.contains("nvme0") && s.contains("loop"), "{s}");
        let s = Error::MapRefused { file: "f".into(), reason: MapRefusal::SharedBlocks }.to_string();
        assert!(s.contains("reflink"), "{s}");
        let s = Error::MapRefused { file: "f".into(), reason: MapRefusal::WriteUnsupported }.to_string();
        assert!(s.contains("XFS"), "{s}");
    }
}
