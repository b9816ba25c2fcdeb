//! The kmod suites: attach, info, queue pairs, buffers, registrations, I/O against the
//! kernel's view, bad input, crash cleanup, resets and unbind.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::path::PathBuf;
use std::process::{Command as Proc, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use homi::uapi::*;
use homi::{Command, Controller, DmaBuffer, Error, HomiDevice, QueuePair};
use nix::errno::Errno;

use crate::harness::Harness;
use crate::kmod;

const NVME: &str = "/dev/nvme0";
const NS: &str = "/dev/nvme0n1";
const TIMEOUT: Duration = Duration::from_secs(10);
const LBA: u64 = 512;

/// What the VM was booted with, beyond what the guest can read for itself.
struct Shape {
    /// The controllers have shadow doorbells (`dbcs=on`).
    dbcs: bool,
    /// A homi.ko built as for a stock kernel.
    stock_kmod: Option<PathBuf>,
}

static SHAPE: OnceLock<Shape> = OnceLock::new();

/// Records the VM's shape, once, before any suite runs.
pub fn set_shape(dbcs: bool, stock_kmod: Option<PathBuf>) {
    let _ = SHAPE.set(Shape { dbcs, stock_kmod });
}

fn shape() -> &'static Shape {
    SHAPE.get_or_init(|| Shape { dbcs: false, stock_kmod: None })
}

/// nvme-pci's `user_queues` parameter: 0 when unset or on a kernel without it.
fn user_queues_param() -> u32 {
    std::fs::read_to_string("/sys/module/nvme/parameters/user_queues")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// The qids homi may take, as INFO should report them: nvme-pci's reservation with
/// user queues, else everything above the driver's queues.
fn expected_spare(i: &HomiInfo) -> u32 {
    match user_queues_param() {
        0 => i.granted_io_queues - i.driver_io_queues,
        n => n.min(i.granted_io_queues - i.driver_io_queues),
    }
}

/// Issues a raw homi ioctl, for input the library would never build.
fn raw<T>(f: &File, req: u32, arg: &mut T) -> Result<(), Errno> {
    // SAFETY: `arg` is a valid, writable `T`, which is what `req` carries.
    let rc = unsafe { nix::libc::ioctl(f.as_raw_fd(), req as _, arg as *mut T) };
    Errno::result(rc).map(drop)
}

fn open_homi() -> anyhow::Result<File> {
    OpenOptions::new().read(true).write(true).open(HomiDevice::default_path()).context("open /dev/homi")
}

fn attach_raw(homi: &File, nvme: &File) -> Result<(), Errno> {
    raw(homi, HOMI_IOCTL_ATTACH, &mut HomiAttach { nvme_fd: nvme.as_raw_fd(), flags: 0 })
}

fn expect_errno(what: &str, got: Result<(), Errno>, want: Errno) -> anyhow::Result<()> {
    match got {
        Err(e) if e == want => Ok(()),
        other => bail!("{what}: expected {want}, got {other:?}"),
    }
}

/// The errno behind a library error, if it came from an ioctl.
fn errno_of(e: &Error) -> Option<Errno> {
    match e {
        Error::Ioctl { source, .. } => Some(*source),
        _ => None,
    }
}

/// A deterministic pattern for `len` bytes, different for each `seed`.
fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A namespace block device through the kernel, with O_DIRECT.
fn kernel_ns_at(path: &str) -> anyhow::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(nix::libc::O_DIRECT)
        .open(path)
        .with_context(|| format!("open {path} O_DIRECT"))
}

/// A 4 KiB-aligned heap buffer for O_DIRECT.
struct Aligned {
    ptr: *mut u8,
    len: usize,
}

impl Aligned {
    fn new(len: usize) -> Self {
        let layout = std::alloc::Layout::from_size_align(len, 4096).expect("layout");
        // SAFETY: a non-zero size layout.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        assert!(!ptr.is_null(), "out of memory");
        Self { ptr, len }
    }

    fn as_slice(&self) -> &[u8] {
        // SAFETY: `len` initialised bytes owned by `self`.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, uniquely borrowed.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Drop for Aligned {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { std::alloc::dealloc(self.ptr, std::alloc::Layout::from_size_align(self.len, 4096).unwrap()) };
    }
}

fn kernel_write(at: u64, data: &[u8]) -> anyhow::Result<()> {
    kernel_write_at(NS, at, data)
}

fn kernel_write_at(path: &str, at: u64, data: &[u8]) -> anyhow::Result<()> {
    let mut buf = Aligned::new(data.len());
    buf.as_mut_slice().copy_from_slice(data);
    kernel_ns_at(path)?.write_all_at(buf.as_slice(), at * 512).context("O_DIRECT write")
}

fn kernel_read(at: u64, len: usize) -> anyhow::Result<Vec<u8>> {
    kernel_read_at(NS, at, len)
}

fn kernel_read_at(path: &str, at: u64, len: usize) -> anyhow::Result<Vec<u8>> {
    let mut buf = Aligned::new(len);
    kernel_ns_at(path)?.read_exact_at(buf.as_mut_slice(), at * 512).context("O_DIRECT read")?;
    Ok(buf.as_slice().to_vec())
}

/// Writes `data` at `lba` through the queue pair from `buf`.
fn homi_write(qp: &mut QueuePair, buf: &DmaBuffer, lba: u64, data: &[u8]) -> anyhow::Result<()> {
    buf.write_at(0, data)?;
    let (p1, p2) = buf.prps(0, data.len())?;
    let cmd = Command::write(1, lba, (data.len() / 512) as u32).with_prps(p1, p2);
    // SAFETY: `buf` outlives the command and is not touched until it completes.
    unsafe { qp.execute(&cmd, TIMEOUT) }?;
    Ok(())
}

fn homi_read(qp: &mut QueuePair, buf: &DmaBuffer, lba: u64, len: usize) -> anyhow::Result<Vec<u8>> {
    let (p1, p2) = buf.prps(0, len)?;
    let cmd = Command::read(1, lba, (len / 512) as u32).with_prps(p1, p2);
    // SAFETY: as for `homi_write`.
    unsafe { qp.execute(&cmd, TIMEOUT) }?;
    let mut out = vec![0u8; len];
    buf.read_at(0, &mut out)?;
    Ok(out)
}

/// Round trips through one queue pair against the kernel's block device, both ways.
fn roundtrip(ctrl: &Controller, qp: &mut QueuePair, lba: u64, seed: u64) -> anyhow::Result<()> {
    let buf = ctrl.alloc(8192)?;
    let a = pattern(seed, 8192);
    homi_write(qp, &buf, lba, &a)?;
    ensure!(kernel_read(lba, 8192)? == a, "qid {}: kernel read differs from what homi wrote", qp.qid());
    let b = pattern(seed + 1, 8192);
    kernel_write(lba, &b)?;
    ensure!(homi_read(qp, &buf, lba, 8192)? == b, "qid {}: homi read differs from what the kernel wrote", qp.qid());
    Ok(())
}

fn info_counters(ctrl: &Controller) -> anyhow::Result<(u64, u64, u32)> {
    let i = ctrl.info()?;
    Ok((i.pinned_pages, i.dma_bytes, i.qpairs))
}

/// The stock-kernel suite on a `dbcs=off` controller.
pub fn queues(kmod_path: &Path, h: &mut Harness) -> anyhow::Result<()> {
    if !kmod::loaded("homi") {
        kmod::load(kmod_path, "").context("load homi.ko")?;
    }

    h.check("queues: ATTACH rejects bad fds, flags and read-only controllers", || {
        let homi = open_homi()?;
        let devnull = File::open("/dev/null")?;
        expect_errno("not an nvme fd", attach_raw(&homi, &devnull), Errno::ENODEV)?;
        let ro = File::open(NVME)?;
        expect_errno("read-only nvme fd", attach_raw(&homi, &ro), Errno::EACCES)?;
        let mut bad = HomiAttach { nvme_fd: -1, flags: 0 };
        expect_errno("fd -1", raw(&homi, HOMI_IOCTL_ATTACH, &mut bad), Errno::EBADF)?;
        bad.nvme_fd = 999;
        expect_errno("closed fd", raw(&homi, HOMI_IOCTL_ATTACH, &mut bad), Errno::EBADF)?;
        let nvme = OpenOptions::new().read(true).write(true).open(NVME)?;
        let mut flags = HomiAttach { nvme_fd: nvme.as_raw_fd(), flags: 1 };
        expect_errno("flags", raw(&homi, HOMI_IOCTL_ATTACH, &mut flags), Errno::EINVAL)?;
        let mut info = HomiInfo::default();
        expect_errno("INFO before ATTACH", raw(&homi, HOMI_IOCTL_INFO, &mut info), Errno::ENOTCONN)?;
        attach_raw(&homi, &nvme).context("good attach")?;
        expect_errno("second ATTACH", attach_raw(&homi, &nvme), Errno::EBUSY)?;
        Ok(())
    });

    h.check("queues: ATTACH needs CAP_SYS_RAWIO", || {
        // A child drops to an unprivileged uid, which clears its capabilities, while
        // keeping the fds root opened.
        let out = Proc::new(std::env::current_exe()?).arg("helper").arg("attach-unprivileged").output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        ensure!(out.status.success() && text.contains("EPERM"), "child said {text:?} ({})", out.status);
        Ok(())
    });

    let ctrl = match Controller::open(NVME) {
        Ok(c) => c,
        Err(e) => bail!("attach /dev/nvme0: {e}"),
    };
    let base = info_counters(&ctrl)?;

    h.check("queues: every ioctl: EFAULT for unmapped arguments, ENOTTY for wrong sizes", || {
        let fresh = open_homi()?;
        let all = [
            HOMI_IOCTL_VERSION,
            HOMI_IOCTL_ATTACH,
            HOMI_IOCTL_INFO,
            HOMI_IOCTL_CREATE_QPAIR,
            HOMI_IOCTL_DESTROY_QPAIR,
            HOMI_IOCTL_REARM_QPAIR,
            HOMI_IOCTL_ALLOC,
            HOMI_IOCTL_FREE,
            HOMI_IOCTL_REGISTER,
            HOMI_IOCTL_UNREGISTER,
            HOMI_IOCTL_LIST_QPAIRS,
        ];
        for req in all {
            let f = if req == HOMI_IOCTL_ATTACH { &fresh } else { ctrl.homi_fd() };
            for bad in [0usize, 0x10, usize::MAX - 4095] {
                // SAFETY: the module must reject the pointer; nothing here dereferences it.
                let rc = unsafe { nix::libc::ioctl(f.as_raw_fd(), req as _, bad) };
                expect_errno(&format!("ioctl {req:#x} at {bad:#x}"), Errno::result(rc).map(drop), Errno::EFAULT)?;
            }
            // The same number with a size one byte off is not an ioctl of ours.
            let size = (req >> 16) & 0x3fff;
            let wrong = (req & !(0x3fff << 16)) | ((size + 1) << 16);
            let mut junk = [0u8; 1024];
            expect_errno(&format!("ioctl {req:#x} with size {}", size + 1), raw(f, wrong, &mut junk), Errno::ENOTTY)?;
        }
        // Unaligned argument pointers are fine: the module copies bytes.
        let mut bytes = vec![0u8; std::mem::size_of::<HomiInfo>() + 1];
        // SAFETY: `bytes` has room for a `HomiInfo` at offset 1.
        let rc =
            unsafe { nix::libc::ioctl(ctrl.homi_fd().as_raw_fd(), HOMI_IOCTL_INFO as _, bytes.as_mut_ptr().add(1)) };
        Errno::result(rc).context("INFO into an unaligned buffer")?;
        let instance = u32::from_ne_bytes(bytes[1..5].try_into()?);
        ensure!(instance == ctrl.info()?.instance, "unaligned INFO differs");
        Ok(())
    });

    h.check("queues: INFO reports the driver's queues, spare qids and the namespace", || {
        let i = ctrl.info()?;
        let driver = std::fs::read_dir("/sys/block/nvme0n1/mq")?.count() as u32;
        ensure!(i.driver_io_queues == driver, "driver_io_queues {} but blk-mq has {driver}", i.driver_io_queues);
        ensure!(i.granted_io_queues == 64, "granted {} (QEMU max_ioqpairs=64)", i.granted_io_queues);
        // 64 queues is less than a doorbell page holds, so user queues follow the driver's.
        ensure!(i.first_spare_qid == driver + 1, "first spare {}", i.first_spare_qid);
        ensure!(i.spare_free == expected_spare(&i), "spare_free {}", i.spare_free);
        let user = user_queues_param() > 0;
        ensure!((i.flags & HOMI_INFO_USER_QUEUES != 0) == user, "user queues flag in {:#x}", i.flags);
        let shadow = shape().dbcs;
        ensure!((i.flags & HOMI_INFO_SHADOW_DOORBELLS != 0) == shadow, "shadow doorbells flag in {:#x}", i.flags);
        ensure!(i.max_queue_entries == 2048, "MQES+1 {}", i.max_queue_entries);
        ensure!(
            i.doorbell_stride == 4 && i.min_page_size == 4096,
            "stride/page {:?}",
            (i.doorbell_stride, i.min_page_size)
        );
        ensure!(i.flags & HOMI_INFO_LIVE != 0, "flags {:#x}", i.flags);
        ensure!(i.nr_namespaces == 1, "{} namespaces", i.nr_namespaces);
        let ns = i.namespaces[0];
        let sectors: u64 = std::fs::read_to_string("/sys/block/nvme0n1/size")?.trim().parse()?;
        ensure!(
            ns.nsid == 1 && ns.lba_shift == 9 && ns.blocks == sectors,
            "namespace {ns:?}, kernel says {sectors} sectors"
        );
        ensure!(i.max_transfer >= 4096, "max transfer {}", i.max_transfer);
        Ok(())
    });

    h.check("queues: CREATE_QPAIR rejects bad depths and flags", || {
        let f = ctrl.homi_fd();
        for depth in [0, 1, 2049, u32::MAX] {
            let mut q = HomiQpair { depth, ..Default::default() };
            expect_errno(&format!("depth {depth}"), raw(f, HOMI_IOCTL_CREATE_QPAIR, &mut q), Errno::EINVAL)?;
        }
        let mut q = HomiQpair { depth: 8, flags: 2, ..Default::default() };
        expect_errno("flags", raw(f, HOMI_IOCTL_CREATE_QPAIR, &mut q), Errno::EINVAL)?;
        for (req, name) in
            [(HOMI_IOCTL_DESTROY_QPAIR, "DESTROY"), (HOMI_IOCTL_FREE, "FREE"), (HOMI_IOCTL_UNREGISTER, "UNREGISTER")]
        {
            let mut id = HomiId { id: 4000, flags: 0 };
            expect_errno(&format!("{name} of an unknown id"), raw(f, req, &mut id), Errno::ENOENT)?;
            let mut id = HomiId { id: 1, flags: 1 };
            expect_errno(&format!("{name} with flags"), raw(f, req, &mut id), Errno::EINVAL)?;
        }
        let mut rearm = HomiQpair { qid: 4000, ..Default::default() };
        expect_errno("REARM of an unknown qid", raw(f, HOMI_IOCTL_REARM_QPAIR, &mut rearm), Errno::ENOENT)?;
        Ok(())
    });

    h.check("queues: ALLOC and REGISTER reject bad sizes and pointers", || {
        let f = ctrl.homi_fd();
        for size in [0, 100, 4097, (HOMI_ALLOC_MAX + 4096)] {
            let mut a = HomiAlloc { size, ..Default::default() };
            expect_errno(&format!("ALLOC {size}"), raw(f, HOMI_IOCTL_ALLOC, &mut a), Errno::EINVAL)?;
        }
        let mut addrs = [0u64; 4];
        let mem = Aligned::new(16384);
        let good =
            HomiRegister { addr: mem.ptr as u64, len: 16384, dma_addrs: addrs.as_mut_ptr() as u64, flags: 0, id: 0 };
        for (what, mut r, want) in [
            ("unaligned address", HomiRegister { addr: good.addr + 8, ..good }, Errno::EINVAL),
            ("zero length", HomiRegister { len: 0, ..good }, Errno::EINVAL),
            ("unaligned length", HomiRegister { len: 5000, ..good }, Errno::EINVAL),
            ("flags", HomiRegister { flags: 1, ..good }, Errno::EINVAL),
            ("unmapped memory", HomiRegister { addr: 0x1000, ..good }, Errno::EFAULT),
            ("bad address array", HomiRegister { dma_addrs: 8, ..good }, Errno::EFAULT),
        ] {
            expect_errno(what, raw(f, HOMI_IOCTL_REGISTER, &mut r), want)?;
        }
        ensure!(info_counters(&ctrl)? == base, "failed calls left something behind: {:?}", info_counters(&ctrl)?);
        Ok(())
    });

    h.check("queues: mmap rejects unknown offsets, private and writable status maps", || {
        use nix::sys::mman::{mmap, MapFlags, ProtFlags};
        use std::num::NonZeroUsize;
        let f = ctrl.homi_fd();
        let len = NonZeroUsize::new(4096).unwrap();
        let rw = ProtFlags::PROT_READ | ProtFlags::PROT_WRITE;
        // SAFETY: each call asks for a fresh mapping; failures map nothing.
        let tries = unsafe {
            [
                (
                    "unknown offset",
                    mmap(None, len, ProtFlags::PROT_READ, MapFlags::MAP_SHARED, f, 1 << 40).err(),
                    Errno::EINVAL,
                ),
                ("writable status page", mmap(None, len, rw, MapFlags::MAP_SHARED, f, 0).err(), Errno::EACCES),
                (
                    "private status page",
                    mmap(None, len, ProtFlags::PROT_READ, MapFlags::MAP_PRIVATE, f, 0).err(),
                    Errno::EINVAL,
                ),
            ]
        };
        for (what, got, want) in tries {
            ensure!(got == Some(want), "{what}: expected {want}, got {got:?}");
        }
        Ok(())
    });

    h.check("queues: several files, several depths, data identical to the kernel's view", || {
        let other = Controller::open(NVME)?;
        let mut qps = Vec::new();
        for (c, depth) in [(&ctrl, 2), (&ctrl, 64), (&other, 1024), (&other, 2048)] {
            qps.push((c.clone(), c.create_qpair(depth).with_context(|| format!("depth {depth}"))?));
        }
        let mut qids: Vec<u16> = qps.iter().map(|(_, q)| q.qid()).collect();
        let first = ctrl.info()?.first_spare_qid as u16;
        ensure!(qids.iter().all(|&q| q >= first), "qids {qids:?} below the first spare {first}");
        qids.sort();
        qids.dedup();
        ensure!(qids.len() == 4, "qids not unique");
        for (i, (c, qp)) in qps.iter_mut().enumerate() {
            ensure!(c.queue_state(qp.qid()) == HOMI_QUEUE_LIVE, "status page: qid {} not live", qp.qid());
            roundtrip(c, qp, LBA + 64 * i as u64, i as u64)?;
        }
        drop(qps);
        ensure!(ctrl.info()?.qpairs == base.2, "queues left after destroy");
        Ok(())
    });

    h.check("queues: registered user memory reads what the kernel wrote", || {
        let data = pattern(77, 16384);
        kernel_write(LBA + 512, &data)?;
        let mem = Aligned::new(16384);
        let mut addrs = [0u64; 4];
        let mut r =
            HomiRegister { addr: mem.ptr as u64, len: 16384, dma_addrs: addrs.as_mut_ptr() as u64, flags: 0, id: 0 };
        raw(ctrl.homi_fd(), HOMI_IOCTL_REGISTER, &mut r).context("REGISTER")?;
        ensure!(ctrl.info()?.pinned_pages == base.0 + 4, "pin counter did not rise by 4");
        let mut qp = ctrl.create_qpair(16)?;
        for (i, &a) in addrs.iter().enumerate() {
            let cmd = Command::read(1, LBA + 512 + 8 * i as u64, 8).with_prps(a, 0);
            // SAFETY: the page stays pinned and untouched until the command completes.
            unsafe { qp.execute(&cmd, TIMEOUT) }?;
        }
        ensure!(mem.as_slice() == &data[..], "registered memory differs from the kernel's data");
        let mut id = HomiId { id: r.id, flags: 0 };
        raw(ctrl.homi_fd(), HOMI_IOCTL_UNREGISTER, &mut id).context("UNREGISTER")?;
        expect_errno("double UNREGISTER", raw(ctrl.homi_fd(), HOMI_IOCTL_UNREGISTER, &mut id), Errno::ENOENT)?;
        ensure!(ctrl.info()?.pinned_pages == base.0, "pages still pinned after UNREGISTER");
        Ok(())
    });

    h.check("queues: library-registered memory, 64 KiB through one PRP list, matches the kernel", || {
        let mut qp = ctrl.create_qpair(8)?;
        let buf = Arc::new(ctrl.register(65536)?);
        ensure!(buf.page_addrs().is_some_and(|p| p.len() == 16), "expected 16 page addresses");
        let data = pattern(99, 65536);
        buf.write_at(0, &data)?;
        qp.execute_io(Command::write(1, LBA + 768, 128), &buf, 0, 65536, TIMEOUT)?;
        ensure!(kernel_read(LBA + 768, 65536)? == data, "kernel reads other data than homi wrote");
        let other = pattern(100, 65536);
        kernel_write(LBA + 768, &other)?;
        qp.execute_io(Command::read(1, LBA + 768, 128), &buf, 0, 65536, TIMEOUT)?;
        let mut got = vec![0u8; 65536];
        buf.read_at(0, &mut got)?;
        ensure!(got == other, "homi read other data than the kernel wrote");
        let pinned = ctrl.info()?.pinned_pages;
        drop(qp);
        drop(buf);
        ensure!(ctrl.info()?.pinned_pages == pinned - 16, "dropping the buffer did not unpin it");
        Ok(())
    });

    h.check("queues: double DESTROY answers ENOENT", || {
        let mut q = HomiQpair { depth: 8, ..Default::default() };
        raw(ctrl.homi_fd(), HOMI_IOCTL_CREATE_QPAIR, &mut q).context("CREATE")?;
        let mut id = HomiId { id: q.qid, flags: 0 };
        raw(ctrl.homi_fd(), HOMI_IOCTL_DESTROY_QPAIR, &mut id).context("DESTROY")?;
        expect_errno("second DESTROY", raw(ctrl.homi_fd(), HOMI_IOCTL_DESTROY_QPAIR, &mut id), Errno::ENOENT)?;
        Ok(())
    });

    h.check("queues: kernel I/O on the same namespace runs beside homi I/O", || {
        let stop = Arc::new(AtomicBool::new(false));
        let kernel_side = {
            let stop = stop.clone();
            std::thread::spawn(move || -> anyhow::Result<u64> {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    let lba = 8192 + (n % 64) * 16;
                    let data = pattern(1000 + n, 8192);
                    kernel_write(lba, &data)?;
                    ensure!(kernel_read(lba, 8192)? == data, "kernel I/O mismatch at {lba}");
                    n += 1;
                }
                Ok(n)
            })
        };
        let mut qp = ctrl.create_qpair(32)?;
        let buf = ctrl.alloc(8192)?;
        let start = Instant::now();
        let mut n = 0u64;
        while start.elapsed() < Duration::from_secs(3) {
            let lba = 16384 + (n % 64) * 16;
            let data = pattern(5000 + n, 8192);
            homi_write(&mut qp, &buf, lba, &data)?;
            ensure!(homi_read(&mut qp, &buf, lba, 8192)? == data, "homi I/O mismatch at {lba}");
            n += 1;
        }
        stop.store(true, Ordering::Relaxed);
        let k = kernel_side.join().map_err(|_| anyhow::anyhow!("kernel I/O thread panicked"))??;
        ensure!(n > 0 && k > 0, "no overlap: homi {n}, kernel {k} round trips");
        println!("# concurrent round trips: homi {n}, kernel {k}");
        Ok(())
    });

    h.check("queues: SIGKILLed holder leaves no queue, pin or DMA memory", || {
        let mut child = Proc::new(std::env::current_exe()?).args(["helper", "hold"]).stdout(Stdio::piped()).spawn()?;
        let mut line = [0u8; 6];
        child.stdout.take().unwrap().read_exact(&mut line)?;
        ensure!(&line == b"ready\n", "holder said {:?}", String::from_utf8_lossy(&line));
        let held = info_counters(&ctrl)?;
        ensure!(held.0 > base.0 && held.1 > base.1 && held.2 > base.2, "holder holds nothing: {held:?}");
        let listed = HomiDevice::open()?.list_qpairs()?;
        let mine: Vec<_> = listed.iter().filter(|e| e.pid == child.id()).collect();
        ensure!(
            mine.len() == 2 && mine.iter().all(|e| e.state == HOMI_QUEUE_LIVE && e.instance == 0),
            "LIST_QPAIRS does not show the holder's two queues: {listed:?}"
        );
        child.kill()?;
        child.wait()?;
        // The file is released when the dead process's last reference goes.
        let deadline = Instant::now() + Duration::from_secs(5);
        while info_counters(&ctrl)? != base && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        ensure!(info_counters(&ctrl)? == base, "left behind: {:?} (before: {base:?})", info_counters(&ctrl)?);
        Ok(())
    });

    h.check("queues: unload is refused while a file is open", || match kmod::unload("homi") {
        Err(Errno::EWOULDBLOCK) | Err(Errno::EBUSY) => Ok(()),
        other => bail!("delete_module with an open file: {other:?}"),
    });

    h.check("queues: reset with an idle queue, then rearm restores I/O", || {
        let mut qp = ctrl.create_qpair(16)?;
        let buf = ctrl.alloc(8192)?;
        roundtrip(&ctrl, &mut qp, LBA + 1024, 10)?;
        let g = ctrl.generation();
        reset_controller()?;
        wait_for("generation change", || ctrl.generation() != g)?;
        wait_for("queue marked dead", || ctrl.queue_state(qp.qid()) == HOMI_QUEUE_DEAD)?;
        wait_for("controller live", || ctrl.state() == HOMI_CTRL_LIVE)?;
        let (p1, p2) = buf.prps(0, 4096)?;
        // SAFETY: `buf` outlives the queue.
        match unsafe { qp.execute(&Command::read(1, LBA, 8).with_prps(p1, p2), TIMEOUT) } {
            Err(Error::Reset { .. }) => {}
            other => bail!("I/O on a reset queue: {other:?}"),
        }
        qp.rearm()?;
        ensure!(ctrl.queue_state(qp.qid()) == HOMI_QUEUE_LIVE, "not live after rearm");
        roundtrip(&ctrl, &mut qp, LBA + 1024, 11)
    });

    h.check("queues: reset with a busy queue: typed error, rearm, I/O again", || {
        let mut qp = ctrl.create_qpair(64)?;
        let buf = ctrl.alloc(4096 * 32)?;
        let g = ctrl.generation();
        let resetter = std::thread::spawn(|| {
            std::thread::sleep(Duration::from_millis(300));
            reset_controller()
        });
        let start = Instant::now();
        let mut submitted = 0u64;
        let err = loop {
            while qp.free_slots() > 0 {
                let slot = submitted % 32;
                let cmd = Command::read(1, LBA + slot * 8, 8).with_prps(buf.dma_addr() + slot * 4096, 0);
                // SAFETY: `buf` outlives the queue pair.
                if unsafe { qp.push(&cmd, submitted) }.is_err() {
                    break;
                }
                submitted += 1;
            }
            qp.ring();
            if let Err(e) = qp.poll(|c| assert!(c.status.is_success(), "{c:?}")) {
                break e;
            }
            if ctrl.generation() != g && start.elapsed() > Duration::from_secs(1) {
                // Commands caught by the reset never complete; the status page says why.
                break Error::Reset { old: g, new: ctrl.generation() };
            }
            ensure!(start.elapsed() < Duration::from_secs(20), "no reset observed");
        };
        resetter.join().map_err(|_| anyhow::anyhow!("reset thread panicked"))??;
        ensure!(matches!(err, Error::Reset { .. }), "expected a reset error, got {err}");
        ensure!(submitted > 0, "nothing was submitted before the reset");
        wait_for("controller live", || ctrl.state() == HOMI_CTRL_LIVE)?;
        qp.rearm()?;
        roundtrip(&ctrl, &mut qp, LBA + 2048, 12)
    });

    drop(ctrl);
    h.check("queues: everything released once the files are closed", || {
        let c = Controller::open(NVME)?;
        let i = c.info()?;
        ensure!(
            (i.pinned_pages, i.dma_bytes, i.qpairs) == (0, 0, 0),
            "left: {:?}",
            (i.pinned_pages, i.dma_bytes, i.qpairs)
        );
        ensure!(i.spare_free == expected_spare(&i), "qids still reserved");
        Ok(())
    });
    h.check("queues: after a crashed holder and all closes, the module unloads and reloads", || {
        kmod::unload("homi").context("delete_module(homi)")?;
        ensure!(!kmod::loaded("homi"), "still loaded");
        kmod::load(kmod_path, "")?;
        ensure!(Controller::open(NVME)?.info()?.qpairs == 0, "a fresh module sees queues");
        Ok(())
    });
    Ok(())
}

/// Unbind and rebind with a queue held: the holder gets ENODEV, the module lets go.
pub fn unbind(h: &mut Harness) -> anyhow::Result<()> {
    h.check("unbind: driver unbind revokes homi queues; rebind works again", || {
        let ctrl = Controller::open(NVME)?;
        let mut qp = ctrl.create_qpair(16)?;
        roundtrip(&ctrl, &mut qp, LBA + 4096, 20)?;
        let pci = std::fs::read_link("/sys/class/nvme/nvme0/device")?;
        let bdf = pci.file_name().context("pci address")?.to_string_lossy().into_owned();
        std::fs::write("/sys/bus/pci/drivers/nvme/unbind", &bdf).context("unbind")?;
        ensure!(ctrl.state() == HOMI_CTRL_GONE, "status page does not say gone");
        ensure!(ctrl.queue_state(qp.qid()) == HOMI_QUEUE_DEAD, "queue not marked dead");
        match ctrl.info() {
            Err(e) if errno_of(&e) == Some(Errno::ENODEV) => {}
            other => bail!("INFO after unbind: {other:?}"),
        }
        match ctrl.alloc(4096) {
            Err(e) if errno_of(&e) == Some(Errno::ENODEV) => {}
            other => bail!("ALLOC after unbind: {other:?}"),
        }
        drop(qp);
        drop(ctrl);
        std::fs::write("/sys/bus/pci/drivers/nvme/bind", &bdf).context("bind")?;
        wait_for("nvme0 live again", || {
            std::fs::read_to_string("/sys/class/nvme/nvme0/state").is_ok_and(|s| s.trim() == "live")
        })?;
        wait_for("nvme0n1 back", || Path::new(NS).exists())?;
        let ctrl = Controller::open(NVME)?;
        let mut qp = ctrl.create_qpair(16)?;
        roundtrip(&ctrl, &mut qp, LBA + 4096, 21)
    });
    Ok(())
}

/// On a controller with shadow doorbells on and no user queues reserved, homi refuses
/// queues by name: as built for a stock kernel, and as built with nvme-pci's user
/// queue API on a kernel booted without `nvme.user_queues`.
pub fn dbcs(kmod_path: &Path, h: &mut Harness) -> anyhow::Result<()> {
    let refused = |hint: &str| -> anyhow::Result<()> {
        let ctrl = Controller::open(NVME)?;
        let i = ctrl.info()?;
        ensure!(i.flags & HOMI_INFO_SHADOW_DOORBELLS != 0, "INFO does not flag shadow doorbells");
        ensure!(i.flags & HOMI_INFO_USER_QUEUES == 0, "INFO flags user queues");
        match ctrl.create_qpair(16) {
            Err(e @ Error::ShadowDoorbells) => {
                ensure!(e.to_string().contains("shadow doorbells"), "message: {e}")
            }
            other => bail!("expected a shadow-doorbell refusal, got {other:?}"),
        }
        let log = kmod::kernel_log()?;
        let line = log.lines().rev().find(|l| l.contains("shadow doorbells")).unwrap_or_default();
        ensure!(
            line.contains(hint),
            "the last kernel log line naming shadow doorbells does not say {hint:?}: {line:?}"
        );
        Ok(())
    };
    if let Some(stock) = &shape().stock_kmod {
        h.check("dbcs: built for a stock kernel, CREATE_QPAIR is refused naming shadow doorbells", || {
            kmod::load(stock, "").context("load the stock-built homi.ko")?;
            let features = HomiDevice::open()?.version()?.features;
            ensure!(features & HOMI_FEAT_USER_QUEUES == 0, "features {features:#x}");
            let r = refused("stock nvme-pci");
            kmod::unload("homi").context("unload the stock-built homi.ko")?;
            r
        });
    }
    kmod::load(kmod_path, "").context("load homi.ko")?;
    h.check("dbcs: with user queues built in but none reserved, the refusal names nvme.user_queues", || {
        let features = HomiDevice::open()?.version()?.features;
        ensure!(features & HOMI_FEAT_USER_QUEUES != 0, "features {features:#x}");
        refused("nvme.user_queues=N")
    });
    Ok(())
}

/// With `max_ioqpairs` equal to the vCPU count, the driver takes every queue.
pub fn nospare(kmod_path: &Path, h: &mut Harness) -> anyhow::Result<()> {
    kmod::load(kmod_path, "").context("load homi.ko")?;
    h.check("nospare: CREATE_QPAIR says no spare queues", || {
        let ctrl = Controller::open(NVME)?;
        let i = ctrl.info()?;
        ensure!(i.spare_free == 0, "spare_free {}", i.spare_free);
        match ctrl.create_qpair(16) {
            Err(e @ Error::NoSpareQueues) => {
                ensure!(e.to_string().contains("no spare queues"), "message: {e}")
            }
            other => bail!("expected no spare queues, got {other:?}"),
        }
        ensure!(kmod::kernel_log()?.contains("no spare queues"), "no kernel log line says so");
        Ok(())
    });
    Ok(())
}

fn reset_controller() -> anyhow::Result<()> {
    std::fs::write("/sys/class/nvme/nvme0/reset_controller", "1").context("reset_controller")
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !cond() {
        ensure!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

/// Subprocess roles for the checks above.
pub fn helper(role: &str) -> anyhow::Result<()> {
    match role {
        "attach-unprivileged" => {
            let homi = open_homi()?;
            let nvme = OpenOptions::new().read(true).write(true).open(NVME)?;
            let nobody = nix::unistd::Uid::from_raw(65534);
            nix::unistd::setresuid(nobody, nobody, nobody)?;
            match attach_raw(&homi, &nvme) {
                Err(e) => println!("{e:?}"),
                Ok(()) => println!("attached"),
            }
            Ok(())
        }
        "hold" => {
            let ctrl = Controller::open(NVME)?;
            let qps = [ctrl.create_qpair(64)?, ctrl.create_qpair(256)?];
            let buf = ctrl.alloc(1 << 20)?;
            let mem = Aligned::new(1 << 20);
            let mut addrs = vec![0u64; 256];
            let mut r = HomiRegister {
                addr: mem.ptr as u64,
                len: 1 << 20,
                dma_addrs: addrs.as_mut_ptr() as u64,
                flags: 0,
                id: 0,
            };
            raw(ctrl.homi_fd(), HOMI_IOCTL_REGISTER, &mut r)?;
            std::io::stdout().write_all(b"ready\n")?;
            std::io::stdout().flush()?;
            std::thread::sleep(Duration::from_secs(600));
            drop((qps, buf, mem));
            Ok(())
        }
        other => bail!("unknown helper role {other:?}"),
    }
}

/// A small, seedable generator for the stress check (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// FNV-1a: a checksum per block, so a mismatch names the block.
fn fnv(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
}

/// Randomized verification: 4 threads, each with 4 queue pairs on its own LBA region,
/// random depths, queue depths 1..=depth-1 and transfer sizes up to 64 KiB (PRP lists
/// included); every read is checked against what that thread last wrote, then every
/// written block is checked once more through the kernel's O_DIRECT view.
pub fn stress(kmod_path: &Path, h: &mut Harness) -> anyhow::Result<()> {
    if !kmod::loaded("homi") {
        kmod::load(kmod_path, "").context("load homi.ko")?;
    }
    const THREADS: u64 = 4;
    const QPAIRS: usize = 4;
    const REGION: u64 = 16384; // blocks per thread (8 MiB)
    const BASE: u64 = 65536;
    const MAX_BLOCKS: u64 = 128; // 64 KiB
    h.check("stress: 4 threads x 4 queue pairs, random QD and sizes, 0 mismatches vs the kernel", || {
        let ctrl = Controller::open(NVME)?;
        let workers: Vec<_> = (0..THREADS)
            .map(|t| {
                let ctrl = ctrl.clone();
                std::thread::spawn(move || -> anyhow::Result<(u64, Vec<Option<u64>>)> {
                    let mut rng = Rng(0x5eed ^ (t + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
                    let start = BASE + t * REGION;
                    let mut shadow: Vec<Option<u64>> = vec![None; REGION as usize];
                    let mut qps = Vec::new();
                    for _ in 0..QPAIRS {
                        let depth = 2 + rng.below(255) as u32;
                        qps.push(ctrl.create_qpair(depth)?);
                    }
                    let mut ios = 0u64;
                    let deadline = Instant::now() + Duration::from_secs(4);
                    while Instant::now() < deadline {
                        let qp = &mut qps[rng.below(QPAIRS as u64) as usize];
                        let qd = 1 + rng.below(u64::from(qp.depth() - 1)) as usize;
                        // Distinct ranges within one batch, so a read's expected data is fixed.
                        let mut batch: Vec<(bool, u64, u64, Arc<DmaBuffer>)> = Vec::new();
                        for _ in 0..qd {
                            let blocks = 1 + rng.below(MAX_BLOCKS);
                            let lba = rng.below(REGION - blocks);
                            if batch.iter().any(|(_, l, b, _)| lba < l + b && *l < lba + blocks) {
                                continue;
                            }
                            let write = rng.below(2) == 0;
                            let len = (blocks * 512) as usize;
                            let buf = Arc::new(ctrl.alloc(len.next_multiple_of(4096))?);
                            if write {
                                buf.write_at(0, &pattern(rng.next(), len))?;
                            }
                            let cmd = if write {
                                Command::write(1, start + lba, blocks as u32)
                            } else {
                                Command::read(1, start + lba, blocks as u32)
                            };
                            qp.push_io(cmd, &buf, 0, len, batch.len() as u64)?;
                            batch.push((write, lba, blocks, buf));
                        }
                        qp.ring();
                        let mut done = 0;
                        let deadline = Instant::now() + TIMEOUT;
                        while done < batch.len() {
                            let mut failed = None;
                            done += qp.poll(|c| {
                                if let Err(e) = c.ok() {
                                    failed = Some(e);
                                }
                            })?;
                            if let Some(e) = failed {
                                bail!("I/O failed: {e}");
                            }
                            ensure!(Instant::now() < deadline, "completions stopped coming");
                        }
                        for (write, lba, blocks, buf) in &batch {
                            let mut data = vec![0u8; (*blocks * 512) as usize];
                            buf.read_at(0, &mut data)?;
                            for (i, block) in data.chunks(512).enumerate() {
                                let slot = &mut shadow[*lba as usize + i];
                                if *write {
                                    *slot = Some(fnv(block));
                                } else if let Some(want) = *slot {
                                    ensure!(
                                        fnv(block) == want,
                                        "thread {t}: block {} read back different",
                                        start + lba + i as u64
                                    );
                                }
                            }
                        }
                        ios += batch.len() as u64;
                    }
                    Ok((ios, shadow))
                })
            })
            .collect();
        let mut total = 0;
        let mut checked = 0;
        for (t, w) in workers.into_iter().enumerate() {
            let (ios, shadow) = w.join().map_err(|_| anyhow::anyhow!("worker panicked"))??;
            total += ios;
            // The kernel's view of every block this thread wrote, its region in one read.
            let start = BASE + t as u64 * REGION;
            let region = kernel_read(start, (REGION * 512) as usize)?;
            for (i, (sum, block)) in shadow.iter().zip(region.chunks(512)).enumerate() {
                if let Some(sum) = sum {
                    ensure!(
                        fnv(block) == *sum,
                        "block {}: the kernel reads other data than homi wrote",
                        start + i as u64
                    );
                    checked += 1;
                }
            }
        }
        ensure!(total > 0 && checked > 0, "nothing was exercised");
        println!("# stress: {total} commands, {checked} written blocks checked through the kernel");
        Ok(())
    });
    Ok(())
}

/// The block device of namespace `nsid` of `/dev/nvme{ctrl}`. Its `nvmeXnY` name says
/// nothing about the NSID: namespaces are scanned asynchronously and numbered in the
/// order they appear.
fn ns_path(ctrl: u32, nsid: u32) -> anyhow::Result<String> {
    for e in std::fs::read_dir(format!("/sys/class/nvme/nvme{ctrl}"))? {
        let name = e?.file_name().to_string_lossy().into_owned();
        if name.starts_with(&format!("nvme{ctrl}n")) {
            let id: u32 = std::fs::read_to_string(format!("/sys/block/{name}/nsid"))?.trim().parse()?;
            if id == nsid {
                return Ok(format!("/dev/{name}"));
            }
        }
    }
    bail!("nvme{ctrl} has no block device for nsid {nsid}")
}

/// Writes through homi on namespace `nsid` and reads it back through the kernel's
/// block device for it, then the reverse.
fn roundtrip_ns(ctrl: &Controller, nsid: u32, seed: u64) -> anyhow::Result<()> {
    let path = &ns_path(ctrl.info()?.instance, nsid)?;
    let mut qp = ctrl.create_qpair(16)?;
    let buf = Arc::new(ctrl.alloc(16384)?);
    let a = pattern(seed, 16384);
    buf.write_at(0, &a)?;
    qp.execute_io(Command::write(nsid, LBA, 32), &buf, 0, 16384, TIMEOUT)?;
    ensure!(kernel_read_at(path, LBA, 16384)? == a, "{path}: kernel reads other data than homi wrote");
    let b = pattern(seed + 1, 16384);
    kernel_write_at(path, LBA, &b)?;
    qp.execute_io(Command::read(nsid, LBA, 32), &buf, 0, 16384, TIMEOUT)?;
    let mut got = vec![0u8; 16384];
    buf.read_at(0, &mut got)?;
    ensure!(got == b, "{path}: homi read other data than the kernel wrote");
    Ok(())
}

/// Two controllers, two namespaces each, a CMB, all behind a strict Intel IOMMU.
pub fn shapes(kmod_path: &Path, h: &mut Harness) -> anyhow::Result<()> {
    kmod::load(kmod_path, "").context("load homi.ko")?;
    h.check("shapes: the IOMMU translates for the controllers", || {
        let group = Path::new("/sys/class/nvme/nvme0/device/iommu_group");
        ensure!(group.exists(), "nvme0 is in no IOMMU group: is intel_iommu on?");
        let domain = std::fs::read_to_string(group.join("type"))?;
        ensure!(domain.trim() == "DMA", "IOMMU domain type {domain:?}, expected translated DMA");
        Ok(())
    });
    h.check("shapes: INFO sees two namespaces and the CMB", || {
        let i = Controller::open(NVME)?.info()?;
        ensure!(i.nr_namespaces == 2, "{} namespaces", i.nr_namespaces);
        ensure!(i.flags & HOMI_INFO_CMB != 0, "no CMB flag: {:#x}", i.flags);
        Ok(())
    });
    h.check("shapes: both namespaces of both controllers match the kernel, through the IOMMU", || {
        let c0 = Controller::open(NVME)?;
        let c1 = Controller::open("/dev/nvme1")?;
        roundtrip_ns(&c0, 1, 30)?;
        roundtrip_ns(&c0, 2, 32)?;
        roundtrip_ns(&c1, 1, 34)?;
        roundtrip_ns(&c1, 2, 36)
    });
    h.check("shapes: a DMA address nobody registered neither hangs nor breaks the queue (IOMMU)", || {
        let ctrl = Controller::open(NVME)?;
        let mut qp = ctrl.create_qpair(4)?;
        let bogus = Command::read(1, LBA, 8).with_prps(0x7ead_0000, 0);
        // SAFETY: the address is no memory of ours; the IOMMU must stop the transfer.
        // QEMU's vIOMMU drops the write and records a fault, but its nvme model still
        // reports success, so any completion status is accepted; what matters is that
        // the command completes, nothing splats, and the queue keeps working.
        match unsafe { qp.execute(&bogus, TIMEOUT) } {
            Ok(c) => println!("# bogus DMA address: completed with {}", c.status),
            Err(Error::Nvme(s)) => println!("# bogus DMA address: failed with {s}"),
            Err(e) => bail!("the bogus command did not complete: {e}"),
        }
        // The queue and the controller carry on.
        let mut buf = vec![0u8; 4096];
        let dma = Arc::new(ctrl.alloc(4096)?);
        qp.execute_io(Command::read(1, LBA, 8), &dma, 0, 4096, TIMEOUT)?;
        dma.read_at(0, &mut buf)?;
        let path = ns_path(0, 1)?;
        ensure!(buf == kernel_read_at(&path, LBA, 4096)?, "the queue returned other data than the kernel reads");
        Ok(())
    });
    Ok(())
}

/// `homi perf` through every path, briefly, on a guest whose nvme driver has a poll
/// queue (for io_uring-poll): each run completes its I/Os and its JSON report parses.
pub fn paths(kmod_path: &Path, h: &mut Harness) -> anyhow::Result<()> {
    if !kmod::loaded("homi") {
        kmod::load(kmod_path, "").context("load homi.ko")?;
    }
    let homi = std::env::current_exe()?.with_file_name("homi");
    for (path, qd) in [("pread", 1), ("io_uring", 8), ("io_uring-poll", 8), ("passthru", 8), ("homi", 8)] {
        for rw in ["randread", "randwrite"] {
            h.check(&format!("paths: homi perf --path {path} --rw {rw} completes and reports JSON"), || {
                let out = Proc::new(&homi)
                    .args(["perf", "--path", path, "--rw", rw, "--qd", &qd.to_string(), "--ios", "300", "--json"])
                    .output()?;
                ensure!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
                let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
                ensure!(v["path"] == path && v["rw"] == rw, "report names {} {}", v["path"], v["rw"]);
                ensure!(v["ios"] == 300, "ios {}", v["ios"]);
                ensure!(v["iops"].as_f64().is_some_and(|x| x > 0.0), "iops {}", v["iops"]);
                Ok(())
            });
        }
    }
    h.check("paths: bad perf arguments are refused with the argument's name", || {
        for (args, name) in
            [(vec!["--qd", "0"], "--qd"), (vec!["--bs", "1000"], "--bs"), (vec!["--threads", "0"], "--threads")]
        {
            let out = Proc::new(&homi).args(["perf", "--path", "homi", "--ios", "10"]).args(&args).output()?;
            let err = String::from_utf8_lossy(&out.stderr);
            ensure!(!out.status.success() && err.contains(name), "{args:?}: {err}");
        }
        Ok(())
    });
    Ok(())
}

/// Creates a queue pair through the raw ioctl on an attached file of its own.
fn raw_qpair(depth: u32) -> anyhow::Result<(File, File, HomiQpair)> {
    let homi = open_homi()?;
    let nvme = OpenOptions::new().read(true).write(true).open(NVME)?;
    attach_raw(&homi, &nvme).context("ATTACH")?;
    let mut q = HomiQpair { depth, ..Default::default() };
    raw(&homi, HOMI_IOCTL_CREATE_QPAIR, &mut q).context("CREATE_QPAIR")?;
    Ok((homi, nvme, q))
}

/// With shadow doorbells on and nvme-pci's user queues reserved (`nvme.user_queues`),
/// homi queues live on reserved qids and ring through their shadow slots.
pub fn shadow(kmod_path: &Path, h: &mut Harness) -> anyhow::Result<()> {
    if !kmod::loaded("homi") {
        kmod::load(kmod_path, "").context("load homi.ko")?;
    }
    let ctrl = Controller::open(NVME)?;
    let reserved = user_queues_param();

    h.check("shadow: queues take reserved qids and use shadow doorbells", || {
        let i = ctrl.info()?;
        let want = HOMI_INFO_USER_QUEUES | HOMI_INFO_SHADOW_DOORBELLS;
        ensure!(i.flags & want == want, "flags {:#x}", i.flags);
        ensure!(reserved > 0 && i.spare_free == reserved, "spare_free {} of {reserved} reserved", i.spare_free);
        let range = i.first_spare_qid..i.first_spare_qid + reserved;
        ensure!(range.start > i.driver_io_queues, "reserved range {range:?} overlaps the driver's queues");
        let mut qp = ctrl.create_qpair(32)?;
        ensure!(range.contains(&u32::from(qp.qid())), "qid {} outside {range:?}", qp.qid());
        ensure!(qp.shadow_doorbells(), "qid {} rings MMIO only", qp.qid());
        roundtrip(&ctrl, &mut qp, LBA + 4096, 40)?;
        let st = qp.doorbell_stats();
        ensure!(st.updates >= 4 && st.mmio <= st.updates, "doorbell stats {st:?}");
        Ok(())
    });

    h.check("shadow: the event index page maps read-only, the shadow page read-write, one page each", || {
        use nix::sys::mman::{mmap, munmap, MapFlags, ProtFlags};
        use std::num::NonZeroUsize;
        let (homi, _nvme, q) = raw_qpair(16)?;
        ensure!(q.flags & HOMI_QPAIR_SHADOW != 0, "flags {:#x}", q.flags);
        ensure!(q.shadow_offset != 0 && q.eventidx_offset != 0, "offsets {q:?}");
        ensure!(q.shadow_cq == q.shadow_sq + 4, "slots {} {}", q.shadow_sq, q.shadow_cq);
        let page = NonZeroUsize::new(4096).unwrap();
        let two = NonZeroUsize::new(8192).unwrap();
        let rw = ProtFlags::PROT_READ | ProtFlags::PROT_WRITE;
        let shared = MapFlags::MAP_SHARED;
        // SAFETY: fresh mappings of homi's pages; each is unmapped before the file closes.
        unsafe {
            ensure!(
                mmap(None, page, rw, shared, &homi, q.eventidx_offset as i64).err() == Some(Errno::EPERM),
                "writable event index page"
            );
            ensure!(
                mmap(None, two, rw, shared, &homi, q.shadow_offset as i64).err() == Some(Errno::EINVAL),
                "two-page shadow mapping"
            );
            let ei = mmap(None, page, ProtFlags::PROT_READ, shared, &homi, q.eventidx_offset as i64)
                .context("read-only event index page")?;
            let sh = mmap(None, page, rw, shared, &homi, q.shadow_offset as i64).context("shadow page")?;
            let tail = std::ptr::read_volatile(sh.as_ptr().cast::<u8>().add(q.shadow_sq as usize).cast::<u32>());
            munmap(ei, 4096)?;
            munmap(sh, 4096)?;
            ensure!(tail == 0, "a new queue's shadow tail is {tail}");
        }
        Ok(())
    });

    h.check("shadow: a queue created again on the same qid starts from zeroed slots", || {
        let mut qp = ctrl.create_qpair(16)?;
        let qid = qp.qid();
        for k in 0..5 {
            roundtrip(&ctrl, &mut qp, LBA + 4096 + 16 * k, 50 + k)?;
        }
        drop(qp);
        let mut again = ctrl.create_qpair(16)?;
        ensure!(again.qid() == qid, "got qid {} instead of {qid}", again.qid());
        // Stale tails would make the controller run old SQ slots, or wait for ever.
        roundtrip(&ctrl, &mut again, LBA + 4096, 60)
    });
    Ok(())
}

/// With more queues than a doorbell page holds (`max_ioqpairs=600`), nvme-pci puts its
/// user queues on a page of their own: qid 512 on, with 4-byte doorbells.
pub fn placement(kmod_path: &Path, h: &mut Harness) -> anyhow::Result<()> {
    kmod::load(kmod_path, "").context("load homi.ko")?;
    let ctrl = Controller::open(NVME)?;
    h.check("placement: user queues start at qid 512, on a doorbell page of their own", || {
        let i = ctrl.info()?;
        ensure!(i.flags & HOMI_INFO_USER_QUEUES != 0, "flags {:#x}", i.flags);
        ensure!(i.first_spare_qid == 512, "first reserved qid {}", i.first_spare_qid);
        ensure!(i.spare_free == user_queues_param(), "spare_free {}", i.spare_free);
        let log = kmod::kernel_log()?;
        ensure!(log.contains("user queues from qid 512"), "nvme-pci did not log the reservation");
        Ok(())
    });
    h.check("placement: I/O on the first qid of the page matches the kernel's view", || {
        let mut qp = ctrl.create_qpair(64)?;
        ensure!(qp.qid() >= 512, "qid {}", qp.qid());
        ensure!(qp.shadow_doorbells() == shape().dbcs, "shadow doorbells {}", qp.shadow_doorbells());
        roundtrip(&ctrl, &mut qp, LBA + 8192, 70)
    });
    h.check("placement: past the reservation, CREATE_QPAIR says no spare queues and names it", || {
        let n = user_queues_param();
        let qps = (0..n).map(|_| ctrl.create_qpair(16)).collect::<Result<Vec<_>, _>>()?;
        ensure!(qps.iter().all(|q| (512..512 + n).contains(&u32::from(q.qid()))), "qids outside the reservation");
        match ctrl.create_qpair(16) {
            Err(Error::NoSpareQueues) => {}
            other => bail!("expected no spare queues, got {other:?}"),
        }
        let log = kmod::kernel_log()?;
        ensure!(log.contains("homi holds all of nvme-pci's user queues"), "no kernel log line names the reservation");
        Ok(())
    });
    h.check("placement: its doorbell sits at the start of its page", || {
        let (_homi, _nvme, q) = raw_qpair(16)?;
        ensure!(q.sq_doorbell == 8 * (q.qid % 512), "qid {} doorbell at {:#x}", q.qid, q.sq_doorbell);
        ensure!(q.flags & HOMI_QPAIR_SHADOW == 0 || q.shadow_sq == q.sq_doorbell, "shadow slot {}", q.shadow_sq);
        Ok(())
    });
    Ok(())
}
