//! File maps for GPU kernels: a map's extent table in GPU memory, and its state word
//! where the GPU can read it (`struct homi_file_map` of `homi.cuh`).
//!
//! # Where the GPU reads the map's state
//!
//! The module publishes each map's `HOMI_MAP_*` state in the map status page, a
//! read-only `MAP_SHARED` mapping of `/dev/homi` that its fault handler fills with
//! `vmf_insert_pfn` (a `VM_PFNMAP` mapping). Registering that page with CUDA is not
//! something to build on: `cuMemHostRegister` pins pages with `pin_user_pages`, which
//! refuses `VM_PFNMAP` mappings, and NVIDIA's fallback for them walks the page tables
//! with `follow_pfn`, which Linux removed in 6.12 (whether the driver's replacement
//! works depends on its version and the kernel's exports), and needs the page already
//! faulted in. The GPU test machines cannot load homi.ko, so it cannot be tried there
//! either.
//!
//! So a host thread mirrors the state: it loads the module's word with acquire
//! ordering every poll period (default [`DEFAULT_POLL`]) and stores what it saw into a
//! word of pinned host memory mapped into the GPU (`cuMemHostRegister` of anonymous
//! memory, which works there), which `homi_read_file` loads with `ld.acquire.sys`
//! before every piece. A revocation reaches GPU threads within one poll period plus
//! the thread's wake-up delay (scheduler latency: tens of microseconds on an idle
//! machine, more under CPU contention) plus one bus read; `homi-gpucheck` measures it
//! (on an H100 with the default poll: a GPU thread refused 76 us after the host's
//! store, 256 reading threads all returned within 293 us).
//! That delay only lengthens the time before the GPU stops: the file system operation
//! that broke the lease waits for the holder's `UNMAP_FILE`, which the holder sends
//! after its kernels are done, within the module's `map_revoke_ms`.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use homi_uapi::{HomiExtent, HOMI_EXTENT_HOLE, HOMI_EXTENT_MAPPED, HOMI_EXTENT_UNWRITTEN, HOMI_MAP_LIVE};

use super::buffer::{DeviceMemory, HostMapping};
use super::Gpu;
use crate::{Error, HostPages, Result, PAGE};

/// How often the host looks at the module's state word unless told otherwise.
pub const DEFAULT_POLL: Duration = Duration::from_micros(100);

/// `struct homi_file_map` of `homi.cuh`, field for field.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FileMapDesc {
    /// GPU address of the extents.
    pub extents: u64,
    /// Extents in the table.
    pub count: u64,
    /// GPU address of the `HOMI_MAP_*` word.
    pub state: u64,
    /// File offset of the first extent.
    pub start: u64,
    /// Where the last extent ends.
    pub end: u64,
    /// Bytes from here on read as zeros.
    pub file_size: u64,
    /// log2 of the namespace's block size.
    pub lba_shift: u32,
    /// Zero.
    pub reserved: u32,
}

const _: () = assert!(std::mem::size_of::<FileMapDesc>() == 56);
const _: () = assert!(std::mem::size_of::<HomiExtent>() == 32);

/// What one piece of a file read becomes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PieceKind {
    /// A Read of `blocks` blocks at `lba` of namespace `nsid`.
    Read {
        /// The namespace.
        nsid: u32,
        /// First LBA.
        lba: u64,
        /// Blocks.
        blocks: u32,
    },
    /// Zeros written by the reading thread (a hole or an unwritten extent).
    Zero,
}

/// One piece of a file read: `len` bytes at file offset `file_offset`, landing at
/// `dst_offset` of the destination buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Piece {
    /// File offset.
    pub file_offset: u64,
    /// Bytes.
    pub len: u64,
    /// Offset in the destination buffer.
    pub dst_offset: u64,
    /// Read or zeros.
    pub kind: PieceKind,
}

/// A checked extent table: file order, no gaps, whole blocks, known kinds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExtentTable {
    extents: Vec<HomiExtent>,
    lba_shift: u32,
    file_size: u64,
}

impl ExtentTable {
    /// Checks `extents` (as `HOMI_IOCTL_MAP_FILE` returns them) for a namespace of
    /// `1 << lba_shift`-byte blocks and a file of `file_size` bytes.
    pub fn new(extents: &[HomiExtent], lba_shift: u32, file_size: u64) -> Result<Self> {
        if !(9..=16).contains(&lba_shift) {
            return Err(Error::Invalid("file map: block size outside 512 B..64 KiB"));
        }
        let first = extents.first().ok_or(Error::Invalid("file map: no extents"))?;
        let bs = 1u64 << lba_shift;
        let mut at = first.file_offset;
        for e in extents {
            if e.file_offset != at || e.file_offset % bs != 0 {
                return Err(Error::Invalid("file map: extents out of order, with gaps or not block-aligned"));
            }
            if e.blocks == 0 || e.blocks > u64::MAX >> lba_shift {
                return Err(Error::Invalid("file map: an extent of no blocks or too many"));
            }
            match e.kind {
                HOMI_EXTENT_MAPPED if e.nsid != 0 && e.lba.checked_add(e.blocks).is_some() => {}
                HOMI_EXTENT_HOLE | HOMI_EXTENT_UNWRITTEN => {}
                _ => return Err(Error::Invalid("file map: an extent of unknown kind or outside its namespace")),
            }
            at = at.checked_add(e.blocks << lba_shift).ok_or(Error::Invalid("file map: extents past 2^64 bytes"))?;
        }
        Ok(Self { extents: extents.to_vec(), lba_shift, file_size })
    }

    /// The extents.
    pub fn extents(&self) -> &[HomiExtent] {
        &self.extents
    }

    /// File offset of the first extent.
    pub fn start(&self) -> u64 {
        self.extents[0].file_offset
    }

    /// Where the last extent ends.
    pub fn end(&self) -> u64 {
        let e = self.extents[self.extents.len() - 1];
        e.file_offset + (e.blocks << self.lba_shift)
    }

    /// log2 of the block size.
    pub fn lba_shift(&self) -> u32 {
        self.lba_shift
    }

    /// The file's size in bytes.
    pub fn file_size(&self) -> u64 {
        self.file_size
    }

    /// The index of the extent that holds file byte `off`.
    pub fn find(&self, off: u64) -> Option<usize> {
        if off < self.start() || off >= self.end() {
            return None;
        }
        Some(self.extents.partition_point(|e| e.file_offset <= off) - 1)
    }

    /// The pieces `homi_read_file` makes of `len` bytes at file offset `off` into
    /// offset `dst_offset` of a buffer, on a queue whose largest transfer is
    /// `max_transfer` bytes: the device's rule, for checks. Refused as the device
    /// refuses: ranges not of whole blocks or outside the map, a destination not
    /// 4-aligned.
    pub fn plan(&self, off: u64, len: u64, dst_offset: u64, max_transfer: u32) -> Result<Vec<Piece>> {
        let bs = 1u64 << self.lba_shift;
        if len == 0 || (off | len) % bs != 0 || off < self.start() || off > self.end() || len > self.end() - off {
            return Err(Error::Invalid("file read: whole blocks inside the map"));
        }
        if dst_offset % 4 != 0 {
            return Err(Error::Invalid("file read: destination not 4-aligned"));
        }
        let list = (PAGE / 8 * PAGE) as u64;
        let chunk = |mo: u64| {
            let mut c = u64::from(max_transfer);
            if mo % PAGE as u64 != 0 {
                c = c.min(list);
            }
            c.min(65536 << self.lba_shift) & !(bs - 1)
        };
        let mut out = Vec::new();
        let mut at = off;
        let mut i = self.find(off).ok_or(Error::Invalid("file read: outside the map"))?;
        while at < off + len {
            let e = self.extents[i];
            i += 1;
            let piece_end = (e.file_offset + (e.blocks << self.lba_shift)).min(off + len);
            if e.kind != HOMI_EXTENT_MAPPED {
                out.push(Piece {
                    file_offset: at,
                    len: piece_end - at,
                    dst_offset: dst_offset + at - off,
                    kind: PieceKind::Zero,
                });
                at = piece_end;
                continue;
            }
            while at < piece_end {
                let c = chunk(dst_offset + at - off);
                if c == 0 {
                    return Err(Error::Invalid("file read: the queue's largest transfer is under a block"));
                }
                let n = (piece_end - at).min(c);
                out.push(Piece {
                    file_offset: at,
                    len: n,
                    dst_offset: dst_offset + at - off,
                    kind: PieceKind::Read {
                        nsid: e.nsid,
                        lba: e.lba + ((at - e.file_offset) >> self.lba_shift),
                        blocks: (n >> self.lba_shift) as u32,
                    },
                });
                at += n;
            }
        }
        Ok(out)
    }
}

/// The module's state word, read from the mirror thread.
struct StateSource(*const u32);

// SAFETY: the word is only loaded atomically; `DeviceFileMap::new`'s caller keeps it
// mapped until the map, which joins the thread, is dropped.
unsafe impl Send for StateSource {}

impl StateSource {
    fn load(&self) -> u32 {
        // SAFETY: a live, 4-aligned word (the caller of `DeviceFileMap::new`); the
        // module writes it with atomic stores, so atomic loads are sound.
        unsafe { AtomicU32::from_ptr(self.0.cast_mut()) }.load(Ordering::Acquire)
    }
}

/// The pinned word the GPU reads, and the thread that keeps it equal to the module's.
struct Mirror {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Mirror {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A file map for GPU kernels: the extent table in GPU memory and a mirror of the
/// map's state word in pinned host memory, described by one `struct homi_file_map`
/// at [`desc`](Self::desc). Build it before launching kernels that run for as long as
/// a GPU-resident controller: registering host memory may wait for running kernels.
pub struct DeviceFileMap {
    // Field order is drop order: the thread stops before its word goes away.
    _mirror: Mirror,
    word: (HostMapping, HostPages),
    table: DeviceMemory,
    extents: ExtentTable,
}

impl std::fmt::Debug for DeviceFileMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceFileMap")
            .field("extents", &self.extents.extents.len())
            .field("state", &self.state())
            .finish_non_exhaustive()
    }
}

impl DeviceFileMap {
    /// Copies `extents` (a map's extents, as `FileMap::raw_extents` gives them) to GPU
    /// memory and mirrors the map's state word `state` (`FileMap::state_ptr`) every
    /// [`DEFAULT_POLL`].
    ///
    /// # Safety
    ///
    /// `state` must point to a 4-aligned word that stays mapped, and is written only
    /// with atomic stores, until the returned map is dropped.
    pub unsafe fn new(
        gpu: &Gpu,
        extents: &[HomiExtent],
        state: *const u32,
        lba_shift: u32,
        file_size: u64,
    ) -> Result<Self> {
        // SAFETY: the caller's contract.
        unsafe { Self::with_poll(gpu, extents, state, lba_shift, file_size, DEFAULT_POLL) }
    }

    /// As [`new`](Self::new), looking at `state` every `poll`.
    ///
    /// # Safety
    ///
    /// As for [`new`](Self::new).
    pub unsafe fn with_poll(
        gpu: &Gpu,
        extents: &[HomiExtent],
        state: *const u32,
        lba_shift: u32,
        file_size: u64,
        poll: Duration,
    ) -> Result<Self> {
        if state.is_null() || !state.is_aligned() {
            return Err(Error::Invalid("file map: the state word must be a 4-aligned pointer"));
        }
        let table = ExtentTable::new(extents, lba_shift, file_size)?;
        let source = StateSource(state);
        let page = HostPages::new(PAGE);
        let word = page.ptr().cast::<u32>();
        // SAFETY: a live, 4-aligned word of `page`; only atomics touch it from here on.
        let mirror_word = unsafe { AtomicU32::from_ptr(word) };
        mirror_word.store(source.load(), Ordering::Release);
        // SAFETY: `page` lives beside the mapping in `word` and drops after it.
        let map = unsafe { HostMapping::new(gpu, page.ptr(), PAGE, 0)? };
        let n = extents.len();
        let mem = DeviceMemory::zeroed(gpu, std::mem::size_of_val(extents) + std::mem::size_of::<FileMapDesc>())?;
        mem.write(0, extents)?;
        let desc = FileMapDesc {
            extents: mem.dev_ptr(),
            count: n as u64,
            state: map.dev_ptr(),
            start: table.start(),
            end: table.end(),
            file_size,
            lba_shift,
            reserved: 0,
        };
        mem.write(std::mem::size_of_val(extents), &[desc])?;
        let stop = Arc::new(AtomicBool::new(false));
        let halt = stop.clone();
        let target = word as usize;
        let thread = std::thread::Builder::new()
            .name("homi-map-state".into())
            .spawn(move || {
                // SAFETY: the word lives in the map's `HostPages`, which outlive this
                // thread (`Mirror` joins it first).
                let mirror = unsafe { AtomicU32::from_ptr(target as *mut u32) };
                while !halt.load(Ordering::Relaxed) {
                    let v = source.load();
                    if mirror.load(Ordering::Relaxed) != v {
                        mirror.store(v, Ordering::Release);
                        tracing::debug!(state = v, "file map state changed");
                    }
                    std::thread::sleep(poll);
                }
            })
            .map_err(|e| Error::Io { op: "spawning the map state thread", source: e })?;
        Ok(Self { _mirror: Mirror { stop, thread: Some(thread) }, word: (map, page), table: mem, extents: table })
    }

    /// GPU address of the map's `struct homi_file_map`, for kernels.
    pub fn desc(&self) -> u64 {
        self.table.dev_ptr() + (self.extents.extents.len() * std::mem::size_of::<HomiExtent>()) as u64
    }

    /// The checked extent table.
    pub fn table(&self) -> &ExtentTable {
        &self.extents
    }

    /// The state GPU threads see now (`HOMI_MAP_*`).
    pub fn state(&self) -> u32 {
        // SAFETY: the mirror word lives in `self.word`; only atomics touch it.
        unsafe { AtomicU32::from_ptr(self.word.1.ptr().cast()) }.load(Ordering::Acquire)
    }

    /// Whether GPU threads see the map live.
    pub fn live(&self) -> bool {
        self.state() == HOMI_MAP_LIVE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ext(file_offset: u64, lba: u64, blocks: u64, kind: u32) -> HomiExtent {
        HomiExtent { file_offset, lba, blocks, nsid: 1, kind }
    }

    fn table() -> ExtentTable {
        ExtentTable::new(
            &[
                ext(0, 100, 8, HOMI_EXTENT_MAPPED),
                ext(4096, 0, 16, HOMI_EXTENT_HOLE),
                ext(12288, 500, 8, HOMI_EXTENT_UNWRITTEN),
                ext(16384, 9000, 8192, HOMI_EXTENT_MAPPED),
            ],
            9,
            16384 + 4096 * 1024 - 100,
        )
        .unwrap()
    }

    #[test]
    fn the_layout_is_shared_with_the_header() {
        assert!(super::super::HOMI_CUH.contains("sizeof(struct homi_file_map) == 56"));
        assert!(super::super::HOMI_CUH.contains("sizeof(struct homi_extent) == 32"));
    }

    #[test]
    fn tables_with_gaps_or_odd_pieces_are_refused() {
        let ok = ext(0, 1, 8, HOMI_EXTENT_MAPPED);
        assert!(ExtentTable::new(&[], 9, 0).is_err());
        assert!(ExtentTable::new(&[ok, ext(8192, 1, 8, HOMI_EXTENT_MAPPED)], 9, 0).is_err());
        assert!(ExtentTable::new(&[ok, ext(4096, 1, 0, HOMI_EXTENT_MAPPED)], 9, 0).is_err());
        assert!(ExtentTable::new(&[ok, ext(4096, 1, 8, 7)], 9, 0).is_err());
        assert!(ExtentTable::new(&[ext(100, 1, 8, HOMI_EXTENT_MAPPED)], 9, 0).is_err());
        assert!(ExtentTable::new(&[HomiExtent { nsid: 0, ..ok }], 9, 0).is_err());
        assert!(ExtentTable::new(&[ext(4096, u64::MAX, 8, HOMI_EXTENT_MAPPED)], 9, 0).is_err());
        assert!(ExtentTable::new(&[ok], 8, 0).is_err());
        assert!(
            ExtentTable::new(&[ext(8192, 0, 8, HOMI_EXTENT_HOLE), ext(12288, 1, 8, HOMI_EXTENT_MAPPED)], 9, 0).is_ok()
        );
    }

    #[test]
    fn find_is_the_extent_holding_the_byte() {
        let t = table();
        assert_eq!(t.find(0), Some(0));
        assert_eq!(t.find(4095), Some(0));
        assert_eq!(t.find(4096), Some(1));
        assert_eq!(t.find(12287), Some(1));
        assert_eq!(t.find(12288), Some(2));
        assert_eq!(t.find(t.end() - 1), Some(3));
        assert_eq!(t.find(t.end()), None);
    }

    #[test]
    fn plan_splits_at_extents_and_transfers() {
        let t = table();
        let p = t.plan(2048, 16384, 0, 1 << 20).unwrap();
        assert_eq!(
            p,
            vec![
                Piece {
                    file_offset: 2048,
                    len: 2048,
                    dst_offset: 0,
                    kind: PieceKind::Read { nsid: 1, lba: 104, blocks: 4 }
                },
                Piece { file_offset: 4096, len: 8192, dst_offset: 2048, kind: PieceKind::Zero },
                Piece { file_offset: 12288, len: 4096, dst_offset: 10240, kind: PieceKind::Zero },
                Piece {
                    file_offset: 16384,
                    len: 2048,
                    dst_offset: 14336,
                    kind: PieceKind::Read { nsid: 1, lba: 9000, blocks: 4 }
                },
            ]
        );
        // 4 MiB of one extent at a page-aligned destination: transfers of the queue's
        // largest size; at an unaligned one, of one PRP list page at most.
        let big = |dst| t.plan(16384, 4 << 20, dst, (4096 * 513) as u32).unwrap();
        let lens = |p: Vec<Piece>| p.iter().map(|p| p.len).collect::<Vec<_>>();
        assert_eq!(lens(big(0)), vec![4096 * 513, 4096 * 511]);
        assert_eq!(lens(big(512)), vec![4096 * 512, 4096 * 512]);
        assert!(t.plan(100, 512, 0, 1 << 20).is_err());
        assert!(t.plan(0, 1000, 0, 1 << 20).is_err());
        assert!(t.plan(t.end() - 512, 1024, 0, 1 << 20).is_err());
        assert!(t.plan(0, 512, 2, 1 << 20).is_err());
    }
}
