//! The fuzz suite: random ioctls, mmaps, forks and closes against `/dev/homi` from
//! several threads at once for a fixed time, then a check that nothing is left held.
//!
//! Most calls look valid, so queue pairs, buffers and registrations really exist and
//! get mapped, touched, released twice and released through the wrong file; the rest
//! carry bad pointers, must-be-zero fields that are not, sizes and depths past the
//! limits, ioctl numbers of homi's type that the ABI does not define, and numbers of no
//! type at all. An error return is an expected outcome and only counted. What fails:
//! the module accepting input the ABI says it refuses, the status page becoming
//! writable, a process dying of a signal nobody sent, or anything still held at the end.
//!
//! A seed makes each thread take the same decisions; how the threads interleave, and
//! so which calls succeed, is up to the scheduler.

use std::collections::BTreeMap;
use std::ffi::c_void;
use std::fmt::Debug;
use std::fs::{File, OpenOptions};
use std::os::fd::{AsRawFd, IntoRawFd};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use homi::uapi::*;
use homi::HomiDevice;
use nix::errno::Errno;
use nix::libc::{self, MAP_POPULATE, MAP_PRIVATE, MAP_SHARED, PROT_EXEC, PROT_NONE, PROT_READ, PROT_WRITE};
use nix::sys::signal::{self, Signal};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{fork, ForkResult};

use crate::harness::Harness;

#[path = "fuzz_import.rs"]
mod import;

const NVME: &str = "/dev/nvme0";
const THREADS: usize = 4;
const FILES: usize = 6;
/// Objects tracked at most, so DMA memory, pins and qids stay bounded.
const MAX_OBJS: usize = 48;
const PAGE: usize = 4096;
const RW: i32 = PROT_READ | PROT_WRITE;
/// Object kinds, as indices of their release ioctls.
const QPAIR: usize = 0;
const BUFFER: usize = 1;
const REG: usize = 2;
const RELEASE: [(&str, u32); 3] =
    [("DESTROY_QPAIR", HOMI_IOCTL_DESTROY_QPAIR), ("FREE", HOMI_IOCTL_FREE), ("UNREGISTER", HOMI_IOCTL_UNREGISTER)];

/// splitmix64: small, seedable, and good enough to pick among cases.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let z = (self.0 ^ (self.0 >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        let z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn one_in(&mut self, n: u64) -> bool {
        self.below(n) == 0
    }

    fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len() as u64) as usize]
    }

    /// A field that must be zero: usually is, sometimes has one bit or any bits set.
    fn zeroish(&mut self) -> u32 {
        let (bit, any) = (1 << self.below(32), self.next() as u32);
        self.pick(&[bit, any, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0])
    }

    /// A size, id or count at and past the limits the ABI names, or any value at all.
    fn odd(&mut self) -> u64 {
        let any = self.next();
        self.pick(&[0, 1, 2, 4095, 4097, 65536, HOMI_ALLOC_MAX, HOMI_ALLOC_MAX + 4096, 1 << 40, !0, any, any, any])
    }

    /// An address the module must refuse: null, unreadable, kernel space, the very top.
    fn bad(&mut self, none_page: usize) -> usize {
        self.pick(&[0, 0x10, none_page, none_page + 13, 0xffff_8880_0000_0000, usize::MAX - 4095])
    }
}

/// One ioctl; 0 or the errno.
fn ioctl(fd: i32, cmd: u32, arg: *mut c_void) -> i32 {
    // SAFETY: homi's ioctls touch at most the size their number encodes at `arg`, which
    // callers back with that much memory of their own or aim where the module must
    // refuse; `random_cmd` avoids the VFS's own numbers, which act on the inode.
    code(unsafe { libc::ioctl(fd, cmd as _, arg) })
}

/// 0, or the errno of a syscall that returned `rc`.
fn code(rc: i32) -> i32 {
    Errno::result(rc).map_or_else(|e| e as i32, |_| 0)
}

fn ioctl_on<T>(fd: i32, cmd: u32, arg: &mut T) -> i32 {
    ioctl(fd, cmd, (arg as *mut T).cast())
}

/// A random ioctl number, but none of the VFS's own (`FIOCLEX`, `FS_IOC_SETFLAGS`, ...):
/// those act on the device node's inode, and some would make `/dev/homi` immutable.
fn random_cmd(rng: &mut Rng) -> u32 {
    let vfs = [0, b'T', b'X', b'f', 0x94, 0x15];
    std::iter::repeat_with(|| rng.next() as u32).find(|cmd| !vfs.contains(&((cmd >> 8) as u8))).unwrap()
}

/// A mapping of ours, unmapped on drop. The first `touch` bytes belong to an object
/// homi handed out and may be touched; `write` says writing them is harmless: buffers
/// and rings, never doorbells or shadow slots, which would make the controller fetch
/// garbage commands, or ring the admin queue on a shared doorbell page.
struct Mapping {
    addr: usize,
    len: usize,
    touch: usize,
    prot: i32,
    write: bool,
    /// The ABI says it is read-only (the status page, an event index page).
    ro: bool,
}

impl Mapping {
    fn new(len: usize, prot: i32, flags: i32, fd: i32, off: u64) -> Result<Self, i32> {
        // SAFETY: a new mapping where the kernel likes; it replaces nothing of ours.
        let p = unsafe { libc::mmap(std::ptr::null_mut(), len, prot, flags, fd, off as libc::off_t) };
        if p == libc::MAP_FAILED {
            return Err(Errno::last_raw());
        }
        Ok(Self { addr: p as usize, len, touch: 0, prot, write: false, ro: false })
    }

    fn anon(pages: usize, prot: i32) -> anyhow::Result<Self> {
        Self::new(pages * PAGE, prot, MAP_PRIVATE | libc::MAP_ANONYMOUS, -1, 0)
            .map_err(|e| anyhow::anyhow!("anonymous mmap: {}", Errno::from_raw(e)))
    }

    /// Reads, and where harmless writes, the first, the last and a random page of what
    /// homi handed out: each fault goes through the module, revoked objects' included.
    fn touch(&self, rng: &mut Rng) {
        let pages = self.touch.div_ceil(PAGE);
        if pages == 0 {
            return;
        }
        for page in [0, pages - 1, rng.below(pages as u64) as usize] {
            let p = (self.addr + page * PAGE + 8 * rng.below(512) as usize) as *mut u64;
            if self.prot & PROT_READ != 0 {
                // SAFETY: inside the mapping (`touch <= len`) and readable; homi's fault
                // handler backs every page it handed out, with a dummy page once revoked.
                unsafe { std::ptr::read_volatile(p) };
            }
            if self.write && self.prot & PROT_WRITE != 0 {
                // SAFETY: as above, writable, and no Rust reference points into it.
                unsafe { std::ptr::write_volatile(p, rng.next()) };
            }
        }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: our mapping; nothing refers into it once it is dropped.
        unsafe { libc::munmap(self.addr as *mut c_void, self.len) };
    }
}

/// A handed-out mmap offset, kept after its object is gone, to map it again.
#[derive(Clone)]
struct Region {
    homi: Arc<File>,
    off: u64,
    len: u64,
    write: bool,
    ro: bool,
}

/// A queue pair, buffer or registration (`kind`) some thread made.
struct Obj {
    homi: Arc<File>,
    kind: usize,
    id: u32,
    /// A registration's memory.
    mem: Option<Mapping>,
}

/// Outcomes per call (0, an errno, or minus a signal number), and broken rules.
#[derive(Default)]
struct Stats {
    counts: BTreeMap<(&'static str, i32), u64>,
    broken: Vec<String>,
}

impl Stats {
    fn count(&mut self, name: &'static str, code: i32) -> bool {
        *self.counts.entry((name, code)).or_default() += 1;
        code == 0
    }

    fn bad(&mut self, what: String) {
        if self.broken.len() < 20 {
            self.broken.push(what);
        }
    }

    fn ok(&self, name: &str) -> u64 {
        self.counts.get(&(name, 0)).copied().unwrap_or(0)
    }

    fn merge(&mut self, other: Stats) {
        other.counts.into_iter().for_each(|(k, n)| *self.counts.entry(k).or_default() += n);
        other.broken.into_iter().for_each(|v| self.bad(v));
    }

    fn summary(&self) -> String {
        let outcome = |c: i32| match c {
            0 => "ok".to_string(),
            c if c < 0 => format!("killed by signal {}", -c),
            c => format!("{:?}", Errno::from_raw(c)),
        };
        let parts: Vec<String> =
            self.counts.iter().map(|(&(call, c), n)| format!("{call} {n} {}", outcome(c))).collect();
        parts.join(", ")
    }
}

/// What the threads share.
struct Shared {
    files: Mutex<Vec<Arc<File>>>,
    objs: Mutex<Vec<Obj>>,
    /// Handed-out mmap offsets (at most 128).
    regions: Mutex<Vec<Region>>,
    /// The controller, read-write: the one fd ATTACH should take.
    nvme: File,
    /// Forged ATTACH fds: -1, huge, closed, /dev/null, the namespace, the controller
    /// read-only (`_held` keeps them open).
    forged: Vec<i32>,
    _held: Vec<File>,
    /// One memfd page in two views: an argument written through `rw` is passed as `ro`,
    /// which the module can read but not write its reply to (it must undo the work).
    rw: Mapping,
    ro: Mapping,
    /// `PROT_NONE`: mapped, so nothing else lands there, yet unreadable.
    none: Mapping,
    max_depth: u32,
    /// What REGISTER_DMABUF is handed.
    import: import::ImportFds,
    deadline: Instant,
}

impl Shared {
    fn attach_fd(&self, rng: &mut Rng, good: bool) -> i32 {
        if good || rng.one_in(3) {
            self.nvme.as_raw_fd()
        } else if rng.one_in(5) {
            rng.below(64) as i32
        } else {
            rng.pick(&self.forged)
        }
    }

    /// Opens `/dev/homi` (now and then read-only) and attaches it to the controller
    /// (always when `good`), to a forged fd, or to nothing.
    fn open(&self, rng: &mut Rng, stats: &mut Stats, good: bool) -> Option<Arc<File>> {
        let opened = OpenOptions::new().read(true).write(good || !rng.one_in(6)).open(HomiDevice::default_path());
        let homi = opened.map_err(|e| stats.count("open", e.raw_os_error().unwrap_or(libc::EIO))).ok()?;
        if good || !rng.one_in(3) {
            let mut a = HomiAttach { nvme_fd: self.attach_fd(rng, good), flags: 0 };
            stats.count("ATTACH", ioctl_on(homi.as_raw_fd(), HOMI_IOCTL_ATTACH, &mut a));
        }
        Some(Arc::new(homi))
    }
}

/// One fuzzing thread.
struct Worker<'a> {
    sh: &'a Shared,
    rng: Rng,
    stats: Stats,
    maps: Vec<Mapping>,
    /// Misaligned arguments and arguments of made-up ioctl numbers (up to 16 KiB).
    scratch: Vec<u8>,
    /// This thread's 512 bytes of the memfd page.
    slot: usize,
}

impl Worker<'_> {
    fn run(mut self) -> Stats {
        while Instant::now() < self.sh.deadline {
            match self.rng.below(1000) {
                0..=89 => self.qpair(false),
                90..=109 => self.qpair(true),
                110..=199 => self.alloc(),
                200..=269 => self.register(),
                n @ 270..=409 => self.release(n as usize % 3),
                410..=419 => self.unmap_pinned(),
                420..=519 => self.query(),
                520..=599 => self.random_ioctl(),
                600..=749 => self.map(),
                750..=779 => self.register_dmabuf(),
                780..=809 => self.placed_qpair(),
                810..=992 => self.reshape(),
                993..=994 => self.map_file(),
                995..=996 => self.reopen(),
                _ => self.fork(),
            }
        }
        self.stats
    }

    fn file(&mut self) -> Arc<File> {
        let files = self.sh.files.lock().unwrap();
        files[self.rng.below(files.len() as u64) as usize].clone()
    }

    fn full(&self) -> bool {
        self.sh.objs.lock().unwrap().len() >= MAX_OBJS
    }

    /// Issues `cmd` with `arg`, or one time in eight with a bad pointer, a read-only
    /// copy or a misaligned copy instead. True when it succeeded and `arg` holds the
    /// reply; a success with `refuse` set breaks the ABI.
    fn call<T: Copy + Debug>(&mut self, name: &'static str, homi: &File, cmd: u32, arg: &mut T, refuse: bool) -> bool {
        let (input, how, at) = (*arg, self.rng.below(24), 1 + self.rng.below(7) as usize);
        let (copy, ptr) = match how {
            0 => (None, self.rng.bad(self.sh.none.addr)),
            1 => (Some(self.sh.rw.addr + self.slot), self.sh.ro.addr + self.slot),
            2 => (Some(self.scratch.as_mut_ptr() as usize + at), self.scratch.as_mut_ptr() as usize + at),
            _ => (None, arg as *mut T as usize),
        };
        if let Some(dst) = copy {
            // SAFETY: `dst` has room for a `T`: a 512-byte slot, or scratch past `at`.
            unsafe { std::ptr::copy_nonoverlapping((arg as *const T).cast::<u8>(), dst as *mut u8, size_of::<T>()) };
        }
        let code = ioctl(homi.as_raw_fd(), cmd, ptr as *mut c_void);
        if copy.is_some() {
            // SAFETY: `ptr` holds the copied `T` or the reply; the ABI's structs are integers.
            *arg = unsafe { std::ptr::read_unaligned(ptr as *const T) };
        }
        let ok = self.stats.count(name, code) && how != 0;
        if ok && refuse {
            self.stats.bad(format!("{name} accepted {input:?}"));
        }
        ok
    }

    fn add(&mut self, homi: &Arc<File>, kind: usize, id: u32, mem: Option<Mapping>) {
        self.sh.objs.lock().unwrap().push(Obj { homi: homi.clone(), kind, id, mem });
    }

    fn add_region(&mut self, homi: &Arc<File>, off: u64, len: u64, write: bool, ro: bool) {
        let r = Region { homi: homi.clone(), off, len, write, ro };
        let mut regions = self.sh.regions.lock().unwrap();
        regions.push(r);
        if regions.len() > 128 {
            regions.swap_remove(self.rng.below(128) as usize);
        }
    }

    /// CREATE_QPAIR, or REARM_QPAIR of a known queue pair (which only a reset would
    /// let succeed: the refusals are what it exercises).
    fn qpair(&mut self, rearm: bool) {
        if !rearm && self.full() {
            return self.release(QPAIR);
        }
        let (homi, qid) = if rearm { self.target(QPAIR) } else { (self.file(), 0) };
        let max = self.sh.max_depth;
        let depth = match self.rng.below(5) {
            0 => self.rng.pick(&[0, 1, 2, max, max + 1, u32::MAX]),
            1 => self.rng.odd() as u32,
            _ => 2 + self.rng.below(255) as u32,
        };
        // Out fields as input now and then: the ABI only asks flags and reserved be zero.
        let qid = if self.rng.one_in(8) { self.rng.next() as u32 } else { qid };
        let mut q =
            HomiQpair { depth, qid, flags: self.rng.zeroish(), reserved: self.rng.zeroish(), ..Default::default() };
        let refuse = q.flags != 0 || q.reserved != 0 || (!rearm && !(2..=max).contains(&depth));
        let (name, cmd) =
            if rearm { ("REARM_QPAIR", HOMI_IOCTL_REARM_QPAIR) } else { ("CREATE_QPAIR", HOMI_IOCTL_CREATE_QPAIR) };
        if !self.call(name, &homi, cmd, &mut q, refuse) {
            return;
        }
        if q.status_slot as usize >= HOMI_STATUS_SLOTS || q.reserved != 0 {
            self.stats.bad(format!("{name} replied {q:?}"));
        }
        if !rearm {
            self.add(&homi, QPAIR, q.qid, None);
        }
        self.add_region(&homi, q.sq_offset, q.sq_size, true, false);
        self.add_region(&homi, q.cq_offset, q.cq_size, true, false);
        self.add_region(&homi, q.doorbell_offset, PAGE as u64, false, false);
        if q.flags & HOMI_QPAIR_SHADOW != 0 {
            self.add_region(&homi, q.shadow_offset, PAGE as u64, false, false);
            self.add_region(&homi, q.eventidx_offset, PAGE as u64, false, true);
        }
    }

    fn alloc(&mut self) {
        if self.full() {
            return self.release(BUFFER);
        }
        let homi = self.file();
        let size = if self.rng.one_in(4) { self.rng.odd() } else { 4096 * (1 + self.rng.below(16)) };
        let mut a = HomiAlloc { size, flags: self.rng.zeroish(), ..Default::default() };
        let refuse = a.flags != 0 || size == 0 || size % 4096 != 0 || size > HOMI_ALLOC_MAX;
        if self.call("ALLOC", &homi, HOMI_IOCTL_ALLOC, &mut a, refuse) {
            self.add(&homi, BUFFER, a.id, None);
            self.add_region(&homi, a.offset, size, true, false);
        }
    }

    /// REGISTER of fresh anonymous memory, or of bad addresses, lengths and arrays.
    fn register(&mut self) {
        if self.full() {
            return self.release(REG);
        }
        let homi = self.file();
        let pages = 1 + self.rng.below(16) as usize;
        let Ok(mem) = Mapping::anon(pages, RW) else { return };
        // A spare entry for the misaligned array and the one-page-too-long length.
        let mut addrs = vec![0u64; pages + 1];
        let (len, bad) = ((pages * PAGE) as u64, self.rng.bad(self.sh.none.addr) as u64);
        let mut r = HomiRegister {
            addr: mem.addr as u64,
            len,
            dma_addrs: addrs.as_mut_ptr() as u64,
            flags: self.rng.zeroish(),
            id: 0,
        };
        match self.rng.below(12) {
            0 => r.addr += 1 + self.rng.below(4095),
            1 => r.addr = bad,
            2 => (r.addr, r.len) = (self.sh.ro.addr as u64, PAGE as u64),
            3 => r.len = self.rng.pick(&[0, 1, 4095, len - 1, len + 8, len + PAGE as u64]),
            // Lengths past the array only ever come with an array the module can't write.
            4 => (r.len, r.dma_addrs) = (self.rng.odd(), bad),
            5 => r.dma_addrs = self.rng.pick(&[bad, self.sh.ro.addr as u64]),
            6 => r.dma_addrs += 1,
            _ => {}
        }
        let refuse = r.flags != 0 || r.addr % 4096 != 0 || r.len == 0 || r.len % 4096 != 0;
        if self.call("REGISTER", &homi, HOMI_IOCTL_REGISTER, &mut r, refuse) {
            let ours = r.addr == mem.addr as u64;
            self.add(&homi, REG, r.id, ours.then_some(mem));
        }
    }

    /// An object of `kind`, usually through its own file; else an odd id.
    fn target(&mut self, kind: usize) -> (Arc<File>, u32) {
        let found = {
            let objs = self.sh.objs.lock().unwrap();
            let (n, start) = (objs.len(), self.rng.below(objs.len() as u64) as usize);
            (0..n).map(|i| &objs[(start + i) % n]).find(|o| o.kind == kind).map(|o| (o.homi.clone(), o.id))
        };
        match found {
            Some(found) if !self.rng.one_in(5) => found,
            Some((_, id)) => (self.file(), id),
            None => (self.file(), self.rng.odd() as u32),
        }
    }

    /// DESTROY_QPAIR, FREE or UNREGISTER. A success mostly forgets the object; now and
    /// then it stays known, to be released again.
    fn release(&mut self, kind: usize) {
        let (name, cmd) = RELEASE[kind];
        let (homi, id) = self.target(kind);
        let mut arg = HomiId { id, flags: self.rng.zeroish() };
        let refuse = arg.flags != 0;
        if self.call(name, &homi, cmd, &mut arg, refuse) && !self.rng.one_in(4) {
            let mut objs = self.sh.objs.lock().unwrap();
            let i = objs.iter().position(|o| o.kind == kind && o.id == id && Arc::ptr_eq(&o.homi, &homi));
            let gone = i.map(|i| objs.swap_remove(i));
            drop(objs);
            drop(gone);
        }
    }

    /// Unmaps a registration's memory while it stays pinned.
    fn unmap_pinned(&mut self) {
        let mut objs = self.sh.objs.lock().unwrap();
        let start = self.rng.below(objs.len() as u64) as usize;
        let mem = objs.iter_mut().skip(start).find_map(|o| o.mem.take());
        drop(objs);
        drop(mem);
    }

    /// VERSION, INFO, ATTACH (mostly forged, or a second time) and LIST_QPAIRS.
    fn query(&mut self) {
        let homi = self.file();
        match self.rng.below(4) {
            0 => {
                let mut v = HomiVersion::default();
                let ok = self.call("VERSION", &homi, HOMI_IOCTL_VERSION, &mut v, false);
                if ok && (v.abi_major, v.abi_minor) != (ABI_MAJOR, ABI_MINOR) {
                    self.stats.bad(format!("VERSION replied {v:?}"));
                }
            }
            1 => {
                self.call("INFO", &homi, HOMI_IOCTL_INFO, &mut HomiInfo::default(), false);
            }
            2 => {
                let mut a = HomiAttach { nvme_fd: self.sh.attach_fd(&mut self.rng, false), flags: self.rng.zeroish() };
                let refuse = a.flags != 0 || a.nvme_fd != self.sh.nvme.as_raw_fd();
                self.call("ATTACH", &homi, HOMI_IOCTL_ATTACH, &mut a, refuse);
            }
            _ => {
                let cap = self.rng.below(65) as u32;
                let mut entries = vec![HomiQpairEntry::default(); cap as usize];
                let mut l = HomiList { entries: entries.as_mut_ptr() as u64, capacity: cap, count: 0 };
                if self.rng.one_in(8) {
                    // Capacities past the array only ever come with an unwritable one.
                    (l.entries, l.capacity) = (self.rng.bad(self.sh.none.addr) as u64, self.rng.odd() as u32);
                }
                let real = l.entries == entries.as_ptr() as u64;
                if self.call("LIST_QPAIRS", &homi, HOMI_IOCTL_LIST_QPAIRS, &mut l, false) && real {
                    for e in &entries[..l.count.min(cap) as usize] {
                        if e.reserved != 0 || e.depth < 2 || ![HOMI_QUEUE_LIVE, HOMI_QUEUE_DEAD].contains(&e.state) {
                            self.stats.bad(format!("LIST_QPAIRS entry {e:?}"));
                        }
                    }
                }
            }
        }
    }

    /// MAP_FILE of what this VM offers, none of it a file on an NVMe namespace (forged
    /// fds, `/dev/homi` itself), with random fields: every call must fail. UNMAP_FILE
    /// of ids no map has.
    fn map_file(&mut self) {
        let homi = self.file();
        if self.rng.one_in(3) {
            let mut arg = HomiId { id: self.rng.odd() as u32, flags: self.rng.zeroish() };
            self.call("UNMAP_FILE", &homi, HOMI_IOCTL_UNMAP_FILE, &mut arg, true);
            return;
        }
        let mut extents = [HomiExtent::default(); 4];
        let fd = if self.rng.one_in(4) { homi.as_raw_fd() } else { self.rng.pick(&self.sh.forged) };
        let (odd_off, odd_len) = (self.rng.odd(), self.rng.odd());
        let mut m = HomiMapFile {
            fd,
            flags: self.rng.zeroish(),
            offset: self.rng.pick(&[0, 4096, 1, odd_off]),
            len: self.rng.pick(&[0, 4096, u64::MAX, odd_len]),
            extents: if self.rng.one_in(6) {
                self.rng.bad(self.sh.none.addr) as u64
            } else {
                extents.as_mut_ptr() as u64
            },
            capacity: self.rng.pick(&[0, 1, 4, HOMI_MAP_MAX_EXTENTS + 1]),
            revoke_ms: self.rng.zeroish(),
            ..Default::default()
        };
        if self.rng.one_in(8) {
            m.id = self.rng.odd() as u32;
        }
        self.call("MAP_FILE", &homi, HOMI_IOCTL_MAP_FILE, &mut m, true);
    }

    /// Numbers of homi's type with any direction, number and size, and numbers of any
    /// type, on random bytes.
    fn random_ioctl(&mut self) {
        let homi = self.file();
        // Fresh bytes where misaligned copies may have left pointers to freed memory.
        self.scratch[..1024].iter_mut().for_each(|b| *b = self.rng.next() as u8);
        let (name, cmd) = if self.rng.one_in(3) {
            ("random number", random_cmd(&mut self.rng))
        } else {
            let nr = if self.rng.one_in(4) { self.rng.below(256) } else { self.rng.below(16) } as u32;
            let sizes = [0, 8, 16, 24, 32, 96, size_of::<HomiInfo>() as u64, self.rng.below(0x4000)];
            let size = (self.rng.pick(&sizes) + self.rng.below(2)) as u32 & 0x3fff;
            ("0xB9 number", (self.rng.below(4) as u32) << 30 | size << 16 | IOCTL_TYPE << 8 | nr)
        };
        let arg = if self.rng.one_in(8) { self.rng.bad(self.sh.none.addr) } else { self.scratch.as_mut_ptr() as usize };
        let code = ioctl(homi.as_raw_fd(), cmd, arg as *mut c_void);
        self.stats.count(name, code);
    }

    /// mmap of a handed-out offset (its object possibly gone), the status page, or a
    /// random offset, with mostly the right length and protection; touched if handed out.
    fn map(&mut self) {
        let region = {
            let regions = self.sh.regions.lock().unwrap();
            let n = regions.len() as u64;
            (n > 0 && !self.rng.one_in(4)).then(|| regions[self.rng.below(n) as usize].clone())
        };
        let homi = self.file();
        let offs = [4096 * self.rng.below(1 << 20), 1 << 40, !4095 >> 1, 1 + self.rng.below(4095)];
        let (off, len) = (self.rng.pick(&offs), 4096 << self.rng.below(4));
        let (r, name) = match region {
            // Now and then through another file, whose objects these are not.
            Some(r) if self.rng.one_in(5) && !Arc::ptr_eq(&r.homi, &homi) => {
                (Region { homi, ..r }, "mmap (another file's offset)")
            }
            Some(r) => (r, "mmap"),
            None if self.rng.one_in(2) => {
                let off = if self.rng.one_in(2) { HOMI_STATUS_OFFSET } else { HOMI_MAP_STATUS_OFFSET };
                (Region { homi, off, len: PAGE as u64, write: false, ro: true }, "mmap")
            }
            None => (Region { homi, off, len, write: false, ro: false }, "mmap (random offset)"),
        };
        let handed = name == "mmap";
        let len = if handed && !self.rng.one_in(5) {
            r.len
        } else {
            self.rng.pick(&[0, 1, 8192, r.len.wrapping_add(4096), 1 << 30])
        };
        let prot = match self.rng.below(8) {
            0 => self.rng.pick(&[PROT_NONE, PROT_READ, PROT_WRITE, RW, PROT_READ | PROT_EXEC]),
            _ if r.ro => PROT_READ,
            _ => RW,
        };
        let flags = self.rng.pick(&[MAP_SHARED, MAP_SHARED, MAP_SHARED, MAP_SHARED | MAP_POPULATE, MAP_PRIVATE]);
        let mut m = match Mapping::new(len as usize, prot, flags, r.homi.as_raw_fd(), r.off) {
            Ok(m) => m,
            Err(e) => {
                self.stats.count(name, e);
                return;
            }
        };
        self.stats.count(name, 0);
        if handed {
            let vma = (len as usize).next_multiple_of(PAGE);
            if vma as u64 != r.len || (r.ro && prot & PROT_WRITE != 0 && flags & MAP_SHARED != 0) {
                self.stats.bad(format!("mmap of {} bytes at {:#x}: {len} bytes, prot {prot:#x}", r.len, r.off));
            }
            (m.touch, m.write, m.ro) = (vma.min(r.len as usize), r.write, r.ro);
        }
        m.touch(&mut self.rng);
        self.maps.push(m);
        if self.maps.len() > 32 {
            self.maps.swap_remove(self.rng.below(32) as usize);
        }
    }

    /// One of this thread's mappings: touch it, munmap it whole or its first page (a
    /// split), mremap it to grow or shrink, or mprotect it (never making the ABI's
    /// read-only pages writable).
    fn reshape(&mut self) {
        let (i, how, prot) = (
            self.rng.below(self.maps.len() as u64) as usize,
            self.rng.below(6),
            self.rng.pick(&[PROT_READ, RW, PROT_NONE]),
        );
        let Some(m) = self.maps.get_mut(i) else { return };
        let cur = m.len.next_multiple_of(PAGE);
        match how {
            0 | 1 => m.touch(&mut self.rng),
            2 => drop(self.maps.swap_remove(i)),
            3 if cur > PAGE => {
                // SAFETY: the first page of our own mapping, which nothing refers into.
                if self.stats.count("munmap (first page)", code(unsafe { libc::munmap(m.addr as *mut c_void, PAGE) })) {
                    (m.addr, m.len, m.touch) = (m.addr + PAGE, cur - PAGE, m.touch.saturating_sub(PAGE));
                }
            }
            3 | 4 => {
                let (name, new) = if how == 3 { ("mremap (grow)", cur * 2) } else { ("mremap (shrink)", PAGE) };
                // SAFETY: our own mapping, which nothing refers into; it may move.
                let p = unsafe { libc::mremap(m.addr as *mut c_void, cur, new, libc::MREMAP_MAYMOVE) };
                if self.stats.count(name, if p == libc::MAP_FAILED { Errno::last_raw() } else { 0 }) {
                    (m.addr, m.len, m.touch) = (p as usize, new, m.touch.min(new));
                }
            }
            _ => {
                // SAFETY: our own mapping; touches check `prot` first.
                if self.stats.count("mprotect", code(unsafe { libc::mprotect(m.addr as *mut c_void, m.len, prot) })) {
                    if m.ro && prot & PROT_WRITE != 0 {
                        self.stats.bad(format!("mprotect made a read-only page at {:#x} writable", m.addr));
                    }
                    m.prot = prot;
                }
            }
        }
    }

    /// Replaces a file. Its objects and offsets are forgotten, not released: the module
    /// frees what a closed file held. Threads using it, and its mappings, keep it open.
    fn reopen(&mut self) {
        let good = self.rng.one_in(2);
        let Some(fresh) = self.sh.open(&mut self.rng, &mut self.stats, good) else { return };
        let i = self.rng.below(FILES as u64) as usize;
        let old = std::mem::replace(&mut self.sh.files.lock().unwrap()[i], fresh);
        let gone: Vec<Obj> = {
            let mut objs = self.sh.objs.lock().unwrap();
            let (gone, keep) = std::mem::take(&mut *objs).into_iter().partition(|o| Arc::ptr_eq(&o.homi, &old));
            *objs = keep;
            gone
        };
        self.sh.regions.lock().unwrap().retain(|r| !Arc::ptr_eq(&r.homi, &old));
        drop((gone, old));
    }

    /// Forks a child that works on the inherited files; half the time it is SIGKILLed
    /// within 3 ms. Everything it needs is prepared before the fork.
    fn fork(&mut self) {
        let files: Vec<Arc<File>> = (0..4).map(|_| self.file()).collect();
        let fds: [i32; 4] = std::array::from_fn(|i| files[i].as_raw_fd());
        let regions: Vec<Region> = {
            let r = self.sh.regions.lock().unwrap();
            (0..r.len().min(8)).map(|_| r[self.rng.below(r.len() as u64) as usize].clone()).collect()
        };
        let mut targets = [(0, 0, 0, false, false); 8];
        for (t, r) in targets.iter_mut().zip(&regions) {
            *t = (r.homi.as_raw_fd(), r.off, r.len as usize, r.write, r.ro);
        }
        let (seed, kill, delay) = (self.rng.next(), self.rng.one_in(2), self.rng.below(3000));
        // SAFETY: the child only runs `child`, which makes raw syscalls on data prepared
        // here and never returns, allocates or takes a lock another thread may hold.
        match unsafe { fork() } {
            Ok(ForkResult::Child) => child(seed, &fds, &targets[..regions.len()]),
            Ok(ForkResult::Parent { child: pid }) => {
                if kill {
                    std::thread::sleep(Duration::from_micros(delay));
                    let _ = signal::kill(pid, Signal::SIGKILL);
                }
                let code = match waitpid(pid, None) {
                    Ok(WaitStatus::Exited(_, 0)) => 0,
                    Ok(WaitStatus::Signaled(_, Signal::SIGKILL, _)) if kill => -9,
                    other => return self.stats.bad(format!("forked child: {other:?}")),
                };
                self.stats.count("fork", code);
            }
            Err(e) => {
                self.stats.count("fork", e as i32);
            }
        }
    }
}

/// A forked child: a few calls on the inherited files and mappings of handed-out
/// offsets, then `_exit`. What it creates belongs to the files and outlives it.
fn child(seed: u64, fds: &[i32; 4], targets: &[(i32, u64, usize, bool, bool)]) -> ! {
    let mut rng = Rng(seed);
    for _ in 0..1 + rng.below(16) {
        let fd = rng.pick(fds);
        let _ = match rng.below(6) {
            0 => ioctl_on(
                fd,
                HOMI_IOCTL_CREATE_QPAIR,
                &mut HomiQpair { depth: 2 + rng.below(62) as u32, ..Default::default() },
            ),
            1 => ioctl_on(fd, HOMI_IOCTL_ALLOC, &mut HomiAlloc { size: 4096 << rng.below(4), ..Default::default() }),
            2 => ioctl_on(fd, RELEASE[rng.below(3) as usize].1, &mut HomiId { id: rng.below(128) as u32, flags: 0 }),
            3 => ioctl_on(fd, HOMI_IOCTL_INFO, &mut HomiInfo::default()),
            _ if targets.is_empty() => 0,
            _ => {
                let (fd, off, len, write, ro) = rng.pick(targets);
                if let Ok(mut m) = Mapping::new(len, if ro { PROT_READ } else { RW }, MAP_SHARED, fd, off) {
                    (m.touch, m.write) = (len, write);
                    m.touch(&mut rng);
                    std::mem::forget(m); // for exit, or SIGKILL, to unmap
                }
                0
            }
        };
    }
    // SAFETY: ends the child without the parent's atexit handlers or destructors.
    unsafe { libc::_exit(0) }
}

/// A fresh file attached to the controller, and its INFO.
fn fresh_info() -> anyhow::Result<HomiInfo> {
    let homi = OpenOptions::new().read(true).write(true).open(HomiDevice::default_path())?;
    let nvme = OpenOptions::new().read(true).write(true).open(NVME)?;
    let mut i = HomiInfo::default();
    // A reset the previous suite started may still be running: wait it out (60 s).
    let t = Instant::now();
    let attach = loop {
        let a = ioctl_on(homi.as_raw_fd(), HOMI_IOCTL_ATTACH, &mut HomiAttach { nvme_fd: nvme.as_raw_fd(), flags: 0 });
        if a != Errno::EAGAIN as i32 || t.elapsed() > Duration::from_secs(60) {
            break a;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    ensure!(attach == 0, "ATTACH: {}", Errno::from_raw(attach));
    let code = ioctl_on(homi.as_raw_fd(), HOMI_IOCTL_INFO, &mut i);
    ensure!(code == 0, "INFO: {}", Errno::from_raw(code));
    Ok(i)
}

/// Runs the threads until the deadline, then closes everything.
fn run_all(secs: u64, seed: u64, stats: &mut Stats) -> anyhow::Result<()> {
    let mut rng = Rng(seed);
    let max_depth = fresh_info()?.max_queue_entries;
    let memfd = nix::sys::memfd::memfd_create("homi-fuzz", nix::sys::memfd::MFdFlags::empty())?;
    nix::unistd::ftruncate(&memfd, PAGE as i64)?;
    let view = |prot| Mapping::new(PAGE, prot, MAP_SHARED, memfd.as_raw_fd(), 0).map_err(Errno::from_raw);
    let held: Vec<File> = [NVME, "/dev/null", "/dev/nvme0n1"].into_iter().filter_map(|p| File::open(p).ok()).collect();
    let nvme = OpenOptions::new().read(true).write(true).open(NVME).context("open /dev/nvme0")?;
    // After `nvme`, so the closed number is not the one the good fd takes.
    let closed = File::open("/dev/null")?.into_raw_fd();
    // SAFETY: we own `closed` and close it once; only its number is used after.
    unsafe { libc::close(closed) };
    let sh = Shared {
        files: Mutex::default(),
        objs: Mutex::default(),
        regions: Mutex::default(),
        nvme,
        forged: [-1, i32::MAX, closed].into_iter().chain(held.iter().map(|f| f.as_raw_fd())).collect(),
        _held: held,
        rw: view(RW)?,
        ro: view(PROT_READ)?,
        none: Mapping::anon(1, PROT_NONE)?,
        max_depth,
        import: import::ImportFds::new()?,
        deadline: Instant::now() + Duration::from_secs(secs),
    };
    // Attached to the controller, to forged fds, or never.
    for good in [true, true, false, false, true, false] {
        let homi = sh.open(&mut rng, stats, good).context("open /dev/homi")?;
        sh.files.lock().unwrap().push(homi);
    }
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..THREADS)
            .map(|t| {
                let (rng, maps, scratch) = (Rng(rng.next()), vec![], vec![0; 16384]);
                let w = Worker { sh: &sh, rng, stats: Stats::default(), maps, scratch, slot: 512 * t };
                s.spawn(move || w.run())
            })
            .collect();
        for w in workers {
            match w.join() {
                Ok(st) => stats.merge(st),
                Err(_) => stats.bad("a fuzz thread panicked".into()),
            }
        }
    });
    Ok(())
}

/// Fuzzes `/dev/homi` for `secs` seconds from [`THREADS`] threads, seeded by `seed`,
/// then checks that the module kept the ABI's rules and holds nothing once every file
/// is closed. The caller has loaded homi.ko; `/dev/nvme0` is the controller.
pub fn fuzz(h: &mut Harness, secs: u64, seed: u64) -> anyhow::Result<()> {
    let mut stats = Stats::default();
    run_all(secs, seed, &mut stats)?;
    let calls: u64 = stats.counts.values().sum();
    println!("# fuzz: seed {seed:#x}, {THREADS} threads, {calls} calls in {secs} s: {}", stats.summary());

    h.check("fuzz: nothing held afterwards (INFO)", || {
        std::thread::sleep(Duration::from_secs(1));
        let deadline = Instant::now() + Duration::from_secs(4);
        loop {
            let i = fresh_info()?;
            let left = (i.qpairs, i.dma_bytes, i.pinned_pages, i.quarantined_bytes);
            if left == (0, 0, 0, 0) {
                return Ok(());
            }
            ensure!(Instant::now() < deadline, "left (qpairs, dma_bytes, pinned_pages, quarantined_bytes): {left:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    h.check(&format!("fuzz: ran {calls} calls for {secs} s"), || {
        ensure!(calls >= 2000, "only {calls} calls");
        let udmabuf = std::path::Path::new("/dev/udmabuf").exists();
        let names = ["CREATE_QPAIR", "ALLOC", "REGISTER", "CREATE_QPAIR(placed)", "REGISTER_DMABUF"];
        for name in names.into_iter().filter(|n| udmabuf || *n != "REGISTER_DMABUF") {
            ensure!(stats.ok(name) > 0, "no {name} succeeded: no live objects were exercised");
        }
        Ok(())
    });
    h.check("fuzz: the module kept the ABI's rules", || {
        ensure!(stats.broken.is_empty(), "{}", stats.broken.join("; "));
        Ok(())
    });
    Ok(())
}
