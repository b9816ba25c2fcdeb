//! Helpers the kmod suites share: raw ioctls, patterns, the kernel's O_DIRECT view,
//! homi I/O, and waiting.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use homi::uapi::*;
use homi::{Command, Controller, DmaBuffer, Error, HomiDevice, QueuePair};
use nix::errno::Errno;

pub(crate) const NVME: &str = "/dev/nvme0";
pub(crate) const NS: &str = "/dev/nvme0n1";
pub(crate) const TIMEOUT: Duration = Duration::from_secs(10);
pub(crate) const LBA: u64 = 512;

/// What the VM was booted with, beyond what the guest can read for itself.
pub(crate) struct Shape {
    /// The controllers have shadow doorbells (`dbcs=on`).
    pub(crate) dbcs: bool,
    /// A homi.ko built as for a stock kernel.
    pub(crate) stock_kmod: Option<PathBuf>,
}

pub(crate) static SHAPE: OnceLock<Shape> = OnceLock::new();

/// Records the VM's shape, once, before any suite runs.
pub fn set_shape(dbcs: bool, stock_kmod: Option<PathBuf>) {
    let _ = SHAPE.set(Shape { dbcs, stock_kmod });
}

pub(crate) fn shape() -> &'static Shape {
    SHAPE.get_or_init(|| Shape { dbcs: false, stock_kmod: None })
}

/// nvme-pci's `user_queues` parameter: 0 when unset or on a kernel without it.
pub(crate) fn user_queues_param() -> u32 {
    std::fs::read_to_string("/sys/module/nvme/parameters/user_queues")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// The qids homi may take, as INFO should report them: nvme-pci's reservation with
/// user queues, else everything above the driver's queues.
pub(crate) fn expected_spare(i: &HomiInfo) -> u32 {
    match user_queues_param() {
        0 => i.granted_io_queues - i.driver_io_queues,
        n => n.min(i.granted_io_queues - i.driver_io_queues),
    }
}

/// Issues a raw homi ioctl, for input the library would never build.
pub(crate) fn raw<T>(f: &File, req: u32, arg: &mut T) -> Result<(), Errno> {
    // SAFETY: `arg` is a valid, writable `T`, which is what `req` carries.
    let rc = unsafe { nix::libc::ioctl(f.as_raw_fd(), req as _, arg as *mut T) };
    Errno::result(rc).map(drop)
}

pub(crate) fn open_homi() -> anyhow::Result<File> {
    OpenOptions::new().read(true).write(true).open(HomiDevice::default_path()).context("open /dev/homi")
}

pub(crate) fn attach_raw(homi: &File, nvme: &File) -> Result<(), Errno> {
    raw(homi, HOMI_IOCTL_ATTACH, &mut HomiAttach { nvme_fd: nvme.as_raw_fd(), flags: 0 })
}

pub(crate) fn expect_errno(what: &str, got: Result<(), Errno>, want: Errno) -> anyhow::Result<()> {
    match got {
        Err(e) if e == want => Ok(()),
        other => bail!("{what}: expected {want}, got {other:?}"),
    }
}

/// The errno behind a library error, if it came from an ioctl.
pub(crate) fn errno_of(e: &Error) -> Option<Errno> {
    match e {
        Error::Ioctl { source, .. } => Some(*source),
        _ => None,
    }
}

/// Opens the controller through homi, waiting out a reset in progress (the previous
/// check may have left one running): at most 60 s.
pub(crate) fn open_live() -> anyhow::Result<Controller> {
    let t = std::time::Instant::now();
    loop {
        match Controller::open(NVME) {
            Err(homi::Error::NotLive) if t.elapsed() < std::time::Duration::from_secs(60) => {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            r => return Ok(r?),
        }
    }
}

/// Fails unless homi holds no queue pair, pinned page, DMA memory or quarantined memory
/// on the controller (after the programs that used it exited).
pub(crate) fn ensure_nothing_held() -> anyhow::Result<()> {
    let i = open_live()?.info()?;
    anyhow::ensure!(
        i.qpairs == 0 && i.pinned_pages == 0 && i.dma_bytes == 0 && i.quarantined_bytes == 0,
        "homi holds {} queue pairs, {} pinned pages, {} DMA bytes, {} quarantined bytes",
        i.qpairs,
        i.pinned_pages,
        i.dma_bytes,
        i.quarantined_bytes
    );
    Ok(())
}

/// A deterministic pattern for `len` bytes, different for each `seed`.
pub(crate) use homi_instruments::pattern;

/// A namespace block device through the kernel, with O_DIRECT.
pub(crate) fn kernel_ns_at(path: &str) -> anyhow::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(nix::libc::O_DIRECT)
        .open(path)
        .with_context(|| format!("open {path} O_DIRECT"))
}

/// A 4 KiB-aligned heap buffer for O_DIRECT.
pub(crate) struct Aligned {
    pub(crate) ptr: *mut u8,
    len: usize,
}

impl Aligned {
    pub(crate) fn new(len: usize) -> Self {
        let layout = std::alloc::Layout::from_size_align(len, 4096).expect("layout");
        // SAFETY: a non-zero size layout.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        assert!(!ptr.is_null(), "out of memory");
        Self { ptr, len }
    }

    pub(crate) fn as_slice(&self) -> &[u8] {
        // SAFETY: `len` initialised bytes owned by `self`.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    pub(crate) fn as_mut_slice(&mut self) -> &mut [u8] {
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

pub(crate) fn kernel_write(at: u64, data: &[u8]) -> anyhow::Result<()> {
    kernel_write_at(NS, at, data)
}

pub(crate) fn kernel_write_at(path: &str, at: u64, data: &[u8]) -> anyhow::Result<()> {
    let mut buf = Aligned::new(data.len());
    buf.as_mut_slice().copy_from_slice(data);
    kernel_ns_at(path)?.write_all_at(buf.as_slice(), at * 512).context("O_DIRECT write")
}

pub(crate) fn kernel_read(at: u64, len: usize) -> anyhow::Result<Vec<u8>> {
    kernel_read_at(NS, at, len)
}

pub(crate) fn kernel_read_at(path: &str, at: u64, len: usize) -> anyhow::Result<Vec<u8>> {
    let mut buf = Aligned::new(len);
    kernel_ns_at(path)?.read_exact_at(buf.as_mut_slice(), at * 512).context("O_DIRECT read")?;
    Ok(buf.as_slice().to_vec())
}

/// Writes `data` at `lba` through the queue pair from `buf`.
pub(crate) fn homi_write(qp: &mut QueuePair, buf: &DmaBuffer, lba: u64, data: &[u8]) -> anyhow::Result<()> {
    buf.write_at(0, data)?;
    let (p1, p2) = buf.prps(0, data.len())?;
    let cmd = Command::write(1, lba, (data.len() / 512) as u32).with_prps(p1, p2);
    // SAFETY: `buf` outlives the command and is not touched until it completes.
    unsafe { qp.execute(&cmd, TIMEOUT) }?;
    Ok(())
}

pub(crate) fn homi_read(qp: &mut QueuePair, buf: &DmaBuffer, lba: u64, len: usize) -> anyhow::Result<Vec<u8>> {
    let (p1, p2) = buf.prps(0, len)?;
    let cmd = Command::read(1, lba, (len / 512) as u32).with_prps(p1, p2);
    // SAFETY: as for `homi_write`.
    unsafe { qp.execute(&cmd, TIMEOUT) }?;
    let mut out = vec![0u8; len];
    buf.read_at(0, &mut out)?;
    Ok(out)
}

/// Round trips through one queue pair against the kernel's block device, both ways.
pub(crate) fn roundtrip(ctrl: &Controller, qp: &mut QueuePair, lba: u64, seed: u64) -> anyhow::Result<()> {
    let buf = ctrl.alloc(8192)?;
    let a = pattern(seed, 8192);
    homi_write(qp, &buf, lba, &a)?;
    ensure!(kernel_read(lba, 8192)? == a, "qid {}: kernel read differs from what homi wrote", qp.qid());
    let b = pattern(seed + 1, 8192);
    kernel_write(lba, &b)?;
    ensure!(homi_read(qp, &buf, lba, 8192)? == b, "qid {}: homi read differs from what the kernel wrote", qp.qid());
    Ok(())
}

pub(crate) fn info_counters(ctrl: &Controller) -> anyhow::Result<(u64, u64, u32)> {
    let i = ctrl.info()?;
    Ok((i.pinned_pages, i.dma_bytes, i.qpairs))
}

pub(crate) fn reset_controller() -> anyhow::Result<()> {
    std::fs::write("/sys/class/nvme/nvme0/reset_controller", "1").context("reset_controller")
}

pub(crate) fn wait_for(what: &str, mut cond: impl FnMut() -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !cond() {
        ensure!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

/// A small, seedable generator for the stress check (xorshift64*).
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// FNV-1a: a checksum per block, so a mismatch names the block.
pub(crate) fn fnv(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
}

/// The block device of namespace `nsid` of `/dev/nvme{ctrl}`. Its `nvmeXnY` name says
/// nothing about the NSID: namespaces are scanned asynchronously and numbered in the
/// order they appear.
pub(crate) fn ns_path(ctrl: u32, nsid: u32) -> anyhow::Result<String> {
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
pub(crate) fn roundtrip_ns(ctrl: &Controller, nsid: u32, seed: u64) -> anyhow::Result<()> {
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

/// Creates a queue pair through the raw ioctl on an attached file of its own.
pub(crate) fn raw_qpair(depth: u32) -> anyhow::Result<(File, File, HomiQpair)> {
    let homi = open_homi()?;
    let nvme = OpenOptions::new().read(true).write(true).open(NVME)?;
    attach_raw(&homi, &nvme).context("ATTACH")?;
    let mut q = HomiQpair { depth, ..Default::default() };
    raw(&homi, HOMI_IOCTL_CREATE_QPAIR, &mut q).context("CREATE_QPAIR")?;
    Ok((homi, nvme, q))
}
