//! `homi perf`: one I/O workload through one path, in the idiom of fio and xnvmeperf.
//!
//! Paths, all on the same namespace:
//! - `pread`: `pread`/`pwrite` with `O_DIRECT` on the block device (synchronous, QD 1);
//! - `io_uring`: io_uring reads and writes with `O_DIRECT`, interrupt-driven;
//! - `io_uring-poll`: the same with `IORING_SETUP_IOPOLL` (polled completions);
//! - `passthru`: NVMe commands through io_uring `uring_cmd` on `/dev/ngXnY`;
//! - `homi`: a homi queue pair per thread, polled;
//! - `gpu`: homi queue pairs driven by CUDA threads (`perf_gpu`, feature `cuda`).
//!
//! The JSON report (`--json`) is one [`Report`] object; its fields are the schema.

use std::fs::{File, OpenOptions};
use std::io::IsTerminal;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use clap::builder::ArgPredicate;
use hdrhistogram::Histogram;
use homi::{Command, Controller};
use serde::{Deserialize, Serialize};

/// Which I/O path to drive.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum IoPath {
    /// pread/pwrite, O_DIRECT.
    Pread,
    /// io_uring, interrupt-driven.
    #[value(name = "io_uring")]
    #[serde(rename = "io_uring")]
    IoUring,
    /// io_uring with IOPOLL.
    #[value(name = "io_uring-poll")]
    #[serde(rename = "io_uring-poll")]
    IoUringPoll,
    /// NVMe passthrough through io_uring uring_cmd.
    Passthru,
    /// homi queue pairs.
    Homi,
    /// homi queue pairs driven from GPU kernels.
    Gpu,
}

/// Access pattern.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Rw {
    /// Sequential reads.
    Read,
    /// Sequential writes.
    Write,
    /// Random reads.
    Randread,
    /// Random writes.
    Randwrite,
}

impl Rw {
    fn write(self) -> bool {
        matches!(self, Rw::Write | Rw::Randwrite)
    }
    fn random(self) -> bool {
        matches!(self, Rw::Randread | Rw::Randwrite)
    }
}

/// `homi perf` arguments.
#[derive(clap::Args, Clone, Debug)]
pub struct PerfArgs {
    /// The I/O path.
    #[arg(
        long,
        value_enum,
        required = false,
        required_unless_present = "file",
        default_value_if("file", ArgPredicate::IsPresent, "homi")
    )]
    pub path: IoPath,
    /// Access pattern.
    #[arg(long, value_enum, default_value = "randread")]
    pub rw: Rw,
    /// Block size in bytes (a multiple of 512 and of the namespace's block size).
    #[arg(long, default_value_t = 4096)]
    pub bs: usize,
    /// Commands in flight per thread.
    #[arg(long, default_value_t = 1)]
    pub qd: u32,
    /// Threads, each with its own file, ring or queue pair.
    #[arg(long, default_value_t = 1)]
    pub threads: u32,
    /// Seconds to run (ignored when --ios is given).
    #[arg(long, default_value_t = 5.0)]
    pub runtime: f64,
    /// Stop after this many I/Os per thread instead of after --runtime.
    #[arg(long)]
    pub ios: Option<u64>,
    /// The controller's char device.
    #[arg(long, default_value = "/dev/nvme0")]
    pub nvme: PathBuf,
    /// Namespace ID.
    #[arg(long, default_value_t = 1)]
    pub nsid: u32,
    /// Bytes of the namespace to spread I/O over, from its start.
    #[arg(long, default_value_t = 256 << 20)]
    pub span: u64,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Options of `--path gpu`.
    #[command(flatten)]
    pub gpu: crate::perf_gpu::GpuOpts,
    /// Read this file side by side through io_uring (O_DIRECT on the file), io_uring
    /// passthrough and homi queues at its extents' LBAs (from a file map), instead of
    /// one path on the namespace: --path, --nvme, --nsid and --span come from the file;
    /// --json prints an array of reports, one per path.
    #[arg(long, conflicts_with = "path")]
    pub file: Option<PathBuf>,
}

/// Latency statistics in microseconds.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Latency {
    pub mean: f64,
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

/// The result of one `homi perf` run: the `--json` schema.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Report {
    pub path: IoPath,
    pub rw: Rw,
    pub bs: usize,
    pub qd: u32,
    pub threads: u32,
    /// I/Os completed, all threads.
    pub ios: u64,
    pub seconds: f64,
    pub iops: f64,
    pub mib_per_s: f64,
    pub latency_us: Latency,
    /// Process CPU time (user + system) per I/O, from getrusage.
    pub cpu_ns_per_io: f64,
    /// The homi path's doorbell writes; `null` for the kernel's paths.
    pub doorbells: Option<Doorbells>,
}

/// Doorbell writes per I/O on the homi path, SQ tails and CQ heads together.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq)]
pub struct Doorbells {
    /// The queues rang through shadow doorbells with event index.
    pub shadow: bool,
    /// Doorbell values published per I/O.
    pub updates_per_io: f64,
    /// MMIO doorbell register writes per I/O (each one a VM exit under virtualization).
    pub mmio_per_io: f64,
}

/// Whether a queue pair rings through shadow doorbells, and its doorbell counts.
pub(crate) type Bells = (bool, homi::DoorbellStats);

/// What one worker needs from a path: submit up to `qd` commands, reap completions.
pub(crate) trait Engine {
    /// Submits an I/O of `bs` bytes at byte offset `off` into slot `slot`.
    fn submit(&mut self, slot: usize, off: u64, write: bool) -> anyhow::Result<()>;
    /// Makes submitted I/Os visible to the device.
    fn flush(&mut self) -> anyhow::Result<()>;
    /// Reaps completions, calling `done(slot)` for each.
    fn reap(&mut self, done: &mut dyn FnMut(usize)) -> anyhow::Result<()>;
    /// Doorbell writes so far, where the path rings doorbells itself.
    fn doorbells(&self) -> Option<Bells> {
        None
    }
}

/// Page-aligned memory for `n` slots of `bs` bytes, for the kernel paths.
struct Slots {
    ptr: *mut u8,
    layout: std::alloc::Layout,
    bs: usize,
}

// SAFETY: plain heap memory owned by one worker at a time.
unsafe impl Send for Slots {}

impl Slots {
    fn new(n: usize, bs: usize) -> Self {
        let layout = std::alloc::Layout::from_size_align(n * bs, 4096).expect("layout");
        // SAFETY: non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        assert!(!ptr.is_null(), "out of memory");
        Self { ptr, layout, bs }
    }
    fn at(&self, slot: usize) -> *mut u8 {
        self.ptr.wrapping_add(slot * self.bs)
    }
}

impl Drop for Slots {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with `layout`.
        unsafe { std::alloc::dealloc(self.ptr, self.layout) };
    }
}

fn ns_block_device(args: &PerfArgs, prefix: &str) -> anyhow::Result<PathBuf> {
    let ctrl = args.nvme.file_name().context("--nvme names no device")?.to_string_lossy().into_owned();
    for e in std::fs::read_dir(format!("/sys/class/nvme/{ctrl}"))? {
        let name = e?.file_name().to_string_lossy().into_owned();
        if name.starts_with(&format!("{ctrl}n")) {
            let id: u32 = std::fs::read_to_string(format!("/sys/block/{name}/nsid"))?.trim().parse()?;
            if id == args.nsid {
                return Ok(PathBuf::from(format!("/dev/{}", name.replacen("nvme", prefix, 1))));
            }
        }
    }
    bail!("{ctrl} has no namespace {}", args.nsid)
}

pub(crate) fn open_direct(path: &PathBuf) -> anyhow::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(nix::libc::O_DIRECT)
        .open(path)
        .with_context(|| format!("open {} O_DIRECT", path.display()))
}

struct Pread {
    file: File,
    slots: Slots,
    pending: Option<(usize, u64, bool)>,
}

impl Engine for Pread {
    fn submit(&mut self, slot: usize, off: u64, write: bool) -> anyhow::Result<()> {
        self.pending = Some((slot, off, write));
        Ok(())
    }
    fn flush(&mut self) -> anyhow::Result<()> {
        Ok(())
    }
    fn reap(&mut self, done: &mut dyn FnMut(usize)) -> anyhow::Result<()> {
        if let Some((slot, off, write)) = self.pending.take() {
            // SAFETY: the slot is `bs` bytes of our memory.
            let buf = unsafe { std::slice::from_raw_parts_mut(self.slots.at(slot), self.slots.bs) };
            if write {
                self.file.write_all_at(buf, off)?;
            } else {
                self.file.read_exact_at(buf, off)?;
            }
            done(slot);
        }
        Ok(())
    }
}

struct Uring {
    ring: io_uring::IoUring,
    file: File,
    slots: Slots,
    polled: bool,
}

/// An io_uring engine on `file` (opened with `O_DIRECT`), offsets in its bytes.
pub(crate) fn uring(args: &PerfArgs, file: File) -> anyhow::Result<Box<dyn Engine + Send>> {
    let polled = args.path == IoPath::IoUringPoll;
    let mut b = io_uring::IoUring::builder();
    if polled {
        b.setup_iopoll();
    }
    let ring = b.build((2 * args.qd).next_power_of_two()).context("create io_uring")?;
    Ok(Box::new(Uring { ring, file, slots: Slots::new(args.qd as usize, args.bs), polled }))
}

impl Engine for Uring {
    fn submit(&mut self, slot: usize, off: u64, write: bool) -> anyhow::Result<()> {
        use io_uring::{opcode, types};
        let fd = types::Fd(self.file.as_raw_fd());
        let (ptr, len) = (self.slots.at(slot), self.slots.bs as u32);
        let e = if write {
            opcode::Write::new(fd, ptr, len).offset(off).build()
        } else {
            opcode::Read::new(fd, ptr, len).offset(off).build()
        };
        // SAFETY: the slot's memory outlives the ring's use of it (reaped before reuse).
        unsafe { self.ring.submission().push(&e.user_data(slot as u64)) }.context("submission queue full")?;
        Ok(())
    }
    fn flush(&mut self) -> anyhow::Result<()> {
        self.ring.submit()?;
        Ok(())
    }
    fn reap(&mut self, done: &mut dyn FnMut(usize)) -> anyhow::Result<()> {
        let polled = self.polled;
        reap_ring(&mut self.ring, done, |result| {
            if result == -nix::libc::EOPNOTSUPP && polled {
                bail!("io_uring-poll needs polled queues in the nvme driver: load it with poll_queues=N (nvme.poll_queues=N on the kernel command line)");
            }
            ensure!(result >= 0, "io_uring I/O failed: {}", std::io::Error::from_raw_os_error(-result));
            Ok(())
        })
    }
}

/// Reaps every completion of `ring`: `check` judges each result, `done` gets each slot.
/// Entering the kernel first matters for polled rings, which find completions only
/// when asked to look.
fn reap_ring<S, C>(
    ring: &mut io_uring::IoUring<S, C>,
    done: &mut dyn FnMut(usize),
    mut check: impl FnMut(i32) -> anyhow::Result<()>,
) -> anyhow::Result<()>
where
    S: io_uring::squeue::EntryMarker,
    C: io_uring::cqueue::EntryMarker + Into<io_uring::cqueue::Entry>,
{
    ring.submit_and_wait(0)?;
    for c in ring.completion() {
        let c: io_uring::cqueue::Entry = c.into();
        check(c.result())?;
        done(c.user_data() as usize);
    }
    Ok(())
}

/// `struct nvme_uring_cmd` of `include/uapi/linux/nvme_ioctl.h`.
#[repr(C)]
#[derive(Default)]
struct NvmeUringCmd {
    opcode: u8,
    flags: u8,
    rsvd1: u16,
    nsid: u32,
    cdw2: u32,
    cdw3: u32,
    metadata: u64,
    addr: u64,
    metadata_len: u32,
    data_len: u32,
    cdw10: u32,
    cdw11: u32,
    cdw12: u32,
    cdw13: u32,
    cdw14: u32,
    cdw15: u32,
    timeout_ms: u32,
    rsvd2: u32,
}

const _: () = assert!(std::mem::size_of::<NvmeUringCmd>() == 72);

struct Passthru {
    ring: io_uring::IoUring<io_uring::squeue::Entry128, io_uring::cqueue::Entry32>,
    file: File,
    slots: Slots,
    nsid: u32,
    lba_shift: u32,
}

impl Engine for Passthru {
    fn submit(&mut self, slot: usize, off: u64, write: bool) -> anyhow::Result<()> {
        use io_uring::{opcode, types};
        let slba = off >> self.lba_shift;
        let blocks = (self.slots.bs >> self.lba_shift) as u32;
        let cmd = NvmeUringCmd {
            // NVM command set: Write 0x01, Read 0x02.
            opcode: if write { 0x01 } else { 0x02 },
            nsid: self.nsid,
            addr: self.slots.at(slot) as u64,
            data_len: self.slots.bs as u32,
            cdw10: slba as u32,
            cdw11: (slba >> 32) as u32,
            cdw12: blocks - 1,
            ..Default::default()
        };
        let mut bytes = [0u8; 80];
        // SAFETY: `NvmeUringCmd` is 72 bytes of plain integers.
        let raw = unsafe { std::slice::from_raw_parts((&cmd as *const NvmeUringCmd).cast::<u8>(), 72) };
        bytes[..72].copy_from_slice(raw);
        let cmd_op = nix::request_code_readwrite!(b'N', 0x80, 72) as u32; // NVME_URING_CMD_IO
        let e = opcode::UringCmd80::new(types::Fd(self.file.as_raw_fd()), cmd_op).cmd(bytes).build();
        // SAFETY: as for io_uring: the slot outlives the command.
        unsafe { self.ring.submission().push(&e.user_data(slot as u64)) }.context("submission queue full")?;
        Ok(())
    }
    fn flush(&mut self) -> anyhow::Result<()> {
        self.ring.submit()?;
        Ok(())
    }
    fn reap(&mut self, done: &mut dyn FnMut(usize)) -> anyhow::Result<()> {
        reap_ring(&mut self.ring, done, |result| {
            ensure!(result == 0, "passthrough command failed: result {result}");
            Ok(())
        })
    }
}

struct HomiEngine {
    qp: homi::QueuePair,
    buf: Arc<homi::DmaBuffer>,
    bs: usize,
    nsid: u32,
    lba_shift: u32,
}

impl Engine for HomiEngine {
    fn submit(&mut self, slot: usize, off: u64, write: bool) -> anyhow::Result<()> {
        let slba = off >> self.lba_shift;
        let blocks = (self.bs >> self.lba_shift) as u32;
        let cmd = if write { Command::write(self.nsid, slba, blocks) } else { Command::read(self.nsid, slba, blocks) };
        self.qp.push_io(cmd, &self.buf, slot * self.bs, self.bs, slot as u64)?;
        Ok(())
    }
    fn flush(&mut self) -> anyhow::Result<()> {
        self.qp.ring();
        Ok(())
    }
    fn reap(&mut self, done: &mut dyn FnMut(usize)) -> anyhow::Result<()> {
        let mut failed = None;
        self.qp.poll(|c| {
            if let Err(e) = c.ok() {
                failed = Some(e);
            }
            done(c.token as usize);
        })?;
        if let Some(e) = failed {
            bail!("homi I/O failed: {e}");
        }
        Ok(())
    }
    fn doorbells(&self) -> Option<Bells> {
        Some((self.qp.shadow_doorbells(), self.qp.doorbell_stats()))
    }
}

/// log2 of the namespace's logical block size, from sysfs.
pub fn lba_shift(args: &PerfArgs) -> anyhow::Result<u32> {
    let dev = ns_block_device(args, "nvme")?;
    let name = dev.file_name().context("block device")?.to_string_lossy().into_owned();
    let lbs: u32 = std::fs::read_to_string(format!("/sys/block/{name}/queue/logical_block_size"))?.trim().parse()?;
    Ok(lbs.trailing_zeros())
}

/// The engine of `args.path` on namespace `args.nsid`, offsets in its bytes.
pub(crate) fn engine(args: &PerfArgs, ctrl: Option<&Controller>, shift: u32) -> anyhow::Result<Box<dyn Engine + Send>> {
    let qd = args.qd as usize;
    Ok(match args.path {
        IoPath::Pread => Box::new(Pread {
            file: open_direct(&ns_block_device(args, "nvme")?)?,
            slots: Slots::new(1, args.bs),
            pending: None,
        }),
        IoPath::IoUring | IoPath::IoUringPoll => uring(args, open_direct(&ns_block_device(args, "nvme")?)?)?,
        IoPath::Passthru => {
            let ring = io_uring::IoUring::<io_uring::squeue::Entry128, io_uring::cqueue::Entry32>::builder()
                .build((2 * args.qd).next_power_of_two())
                .context("create io_uring with 128-byte entries")?;
            let ng = ns_block_device(args, "ng")?;
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&ng)
                .with_context(|| format!("open {} (NVMe generic char device)", ng.display()))?;
            Box::new(Passthru { ring, file, slots: Slots::new(qd, args.bs), nsid: args.nsid, lba_shift: shift })
        }
        IoPath::Gpu => bail!("--path gpu runs GPU kernels, not CPU workers"),
        IoPath::Homi => {
            let ctrl = ctrl.context("no controller")?;
            let qp = ctrl.create_qpair(args.qd + 1)?;
            let size = qd * args.bs;
            let buf = if size as u64 <= homi::uapi::HOMI_ALLOC_MAX { ctrl.alloc(size)? } else { ctrl.register(size)? };
            Box::new(HomiEngine { qp, buf: Arc::new(buf), bs: args.bs, nsid: args.nsid, lba_shift: shift })
        }
    })
}

struct Xorshift(u64);

impl Xorshift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Runs one worker until the deadline or its I/O budget; returns its latencies.
fn worker(
    mut e: Box<dyn Engine + Send>,
    args: PerfArgs,
    id: u32,
    done_ios: Arc<AtomicU64>,
) -> anyhow::Result<(Histogram<u64>, Option<Bells>)> {
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?;
    let blocks = args.span / args.bs as u64;
    let mut rng = Xorshift(0x9e37_79b9_7f4a_7c15 ^ ((u64::from(id) + 1) * 0x2545_f491_4f6c_dd1d));
    let mut seq = u64::from(id) * (blocks / u64::from(args.threads));
    let mut issued_at = vec![Instant::now(); args.qd as usize];
    let mut free: Vec<usize> = (0..args.qd as usize).collect();
    let deadline = Instant::now() + Duration::from_secs_f64(args.runtime);
    let budget = args.ios.unwrap_or(u64::MAX);
    let (mut submitted, mut completed) = (0u64, 0u64);
    loop {
        let stop = submitted >= budget || (args.ios.is_none() && Instant::now() >= deadline);
        if stop && completed == submitted {
            break;
        }
        if !stop {
            while let Some(slot) = free.pop() {
                if submitted >= budget {
                    free.push(slot);
                    break;
                }
                let block = if args.rw.random() {
                    rng.next() % blocks
                } else {
                    seq += 1;
                    seq % blocks
                };
                issued_at[slot] = Instant::now();
                e.submit(slot, block * args.bs as u64, args.rw.write())?;
                submitted += 1;
            }
            e.flush()?;
        }
        let mut reaped = 0;
        e.reap(&mut |slot| {
            let _ = hist.record(issued_at[slot].elapsed().as_nanos() as u64);
            free.push(slot);
            reaped += 1;
        })?;
        completed += reaped;
        done_ios.fetch_add(reaped, Ordering::Relaxed);
    }
    Ok((hist, e.doorbells()))
}

fn cpu_time() -> anyhow::Result<Duration> {
    let u = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF)?;
    let tv = |t: nix::sys::time::TimeVal| Duration::new(t.tv_sec() as u64, t.tv_usec() as u32 * 1000);
    Ok(tv(u.user_time()) + tv(u.system_time()))
}

/// The largest `--bs`.
pub const MAX_BS: usize = 1 << 20;
/// The largest `--qd`.
pub const MAX_QD: u32 = 1023;
/// The largest `--threads`.
pub const MAX_THREADS: u32 = 64;

/// Checks the arguments; every refusal names the argument.
pub fn validate(args: &PerfArgs) -> anyhow::Result<()> {
    ensure!(args.bs >= 512 && args.bs % 512 == 0, "--bs must be a multiple of 512, got {}", args.bs);
    ensure!(args.bs <= MAX_BS, "--bs must be at most 1 MiB, got {}", args.bs);
    ensure!((1..=MAX_QD).contains(&args.qd), "--qd must be 1..={MAX_QD}, got {}", args.qd);
    ensure!((1..=MAX_THREADS).contains(&args.threads), "--threads must be 1..={MAX_THREADS}, got {}", args.threads);
    ensure!(args.path != IoPath::Pread || args.qd == 1, "--path pread is synchronous: use --qd 1");
    ensure!(args.ios.is_some() || (args.runtime > 0.0 && args.runtime <= 3600.0), "--runtime must be in (0, 3600]");
    ensure!(args.ios != Some(0), "--ios must be positive");
    ensure!(args.span >= args.bs as u64 * u64::from(args.threads), "--span is smaller than one block per thread");
    Ok(())
}

/// Runs the workload and returns its report.
pub fn run(args: &PerfArgs, progress: bool) -> anyhow::Result<Report> {
    validate(args)?;
    let shift = lba_shift(args)?;
    ensure!(args.bs % (1 << shift) == 0, "--bs must be a multiple of the namespace's {} B blocks", 1 << shift);
    let ctrl = if args.path == IoPath::Homi { Some(Controller::open(&args.nvme)?) } else { None };
    let engines = (0..args.threads).map(|_| engine(args, ctrl.as_ref(), shift)).collect::<anyhow::Result<Vec<_>>>()?;
    measure(args, engines, progress)
}

/// Runs one worker per engine (`args.threads` of them) over offsets
/// `0..args.span` in steps of `args.bs`, and returns the report.
pub(crate) fn measure(args: &PerfArgs, engines: Vec<Box<dyn Engine + Send>>, progress: bool) -> anyhow::Result<Report> {
    let done = Arc::new(AtomicU64::new(0));
    let cpu0 = cpu_time()?;
    let start = Instant::now();
    let handles: Vec<_> = engines
        .into_iter()
        .enumerate()
        .map(|(i, e)| {
            let (a, d) = (args.clone(), done.clone());
            std::thread::spawn(move || worker(e, a, i as u32, d))
        })
        .collect();
    let bar = progress.then(|| {
        let bar = indicatif::ProgressBar::new(args.runtime as u64 * 10);
        bar.set_style(indicatif::ProgressStyle::with_template("{bar:40} {msg}").expect("template"));
        bar
    });
    while handles.iter().any(|h| !h.is_finished()) {
        std::thread::sleep(Duration::from_millis(100));
        if let Some(b) = &bar {
            let secs = start.elapsed().as_secs_f64();
            b.set_position((secs * 10.0) as u64);
            b.set_message(format!("{:.0} IOPS", done.load(Ordering::Relaxed) as f64 / secs));
        }
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?;
    let mut bells: Option<Bells> = None;
    for h in handles {
        let (h, b) = h.join().map_err(|_| anyhow::anyhow!("worker panicked"))??;
        hist.add(h)?;
        if let Some((shadow, s)) = b {
            let t = bells.get_or_insert((shadow, homi::DoorbellStats::default()));
            t.1.updates += s.updates;
            t.1.mmio += s.mmio;
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    let cpu = (cpu_time()? - cpu0).as_nanos() as f64;
    let ios = hist.len();
    ensure!(ios > 0, "no I/O completed");
    let us = |ns: u64| ns as f64 / 1000.0;
    Ok(Report {
        path: args.path,
        rw: args.rw,
        bs: args.bs,
        qd: args.qd,
        threads: args.threads,
        ios,
        seconds,
        iops: ios as f64 / seconds,
        mib_per_s: ios as f64 * args.bs as f64 / seconds / (1 << 20) as f64,
        latency_us: Latency {
            mean: hist.mean() / 1000.0,
            p50: us(hist.value_at_quantile(0.5)),
            p99: us(hist.value_at_quantile(0.99)),
            p999: us(hist.value_at_quantile(0.999)),
            max: us(hist.max()),
        },
        cpu_ns_per_io: cpu / ios as f64,
        doorbells: bells.map(|(shadow, s)| Doorbells {
            shadow,
            updates_per_io: s.updates as f64 / ios as f64,
            mmio_per_io: s.mmio as f64 / ios as f64,
        }),
    })
}

/// `homi perf`.
pub fn main(args: &PerfArgs) -> anyhow::Result<()> {
    if let Some(file) = &args.file {
        return crate::perf_file::main(args, file);
    }
    if args.path == IoPath::Gpu {
        return crate::perf_gpu::main(args);
    }
    let r = run(args, !args.json && std::io::stderr().is_terminal())?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        println!(
            "{} {} bs={} qd={} threads={}: {:.0} IOPS, {:.1} MiB/s, lat us mean {:.1} p50 {:.1} p99 {:.1} p99.9 {:.1} max {:.1}, CPU {:.0} ns/IO",
            crate::bench::name(&r.path),
            crate::bench::name(&r.rw),
            r.bs,
            r.qd,
            r.threads,
            r.iops,
            r.mib_per_s,
            r.latency_us.mean,
            r.latency_us.p50,
            r.latency_us.p99,
            r.latency_us.p999,
            r.latency_us.max,
            r.cpu_ns_per_io
        );
        if let Some(d) = r.doorbells {
            println!(
                "doorbells ({}): {:.3} updates/IO, {:.3} MMIO writes/IO",
                if d.shadow { "shadow, event index" } else { "MMIO" },
                d.updates_per_io,
                d.mmio_per_io
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The documented `--json` schema: these keys, these JSON types.
    #[test]
    fn json_report_matches_the_documented_schema() {
        let r = Report {
            path: IoPath::IoUringPoll,
            rw: Rw::Randread,
            bs: 4096,
            qd: 32,
            threads: 1,
            ios: 10,
            seconds: 1.0,
            iops: 10.0,
            mib_per_s: 0.04,
            latency_us: Latency { mean: 1.0, p50: 1.0, p99: 2.0, p999: 3.0, max: 4.0 },
            cpu_ns_per_io: 100.0,
            doorbells: Some(Doorbells { shadow: true, updates_per_io: 0.25, mmio_per_io: 0.05 }),
        };
        let v: serde_json::Value = serde_json::to_value(&r).unwrap();
        let schema = include_str!("../perf-schema.txt");
        let mut documented = Vec::new();
        for line in schema.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()) {
            let (key, ty) = line.split_once(':').unwrap();
            let (key, ty) = (key.trim(), ty.trim());
            let val = key.split('.').fold(&v, |v, k| &v[k]);
            let ok = match ty {
                "string" => val.is_string(),
                "integer" => val.is_u64(),
                "number" => val.is_number(),
                "object" => val.is_object(),
                "boolean" => val.is_boolean(),
                "object|null" => val.is_object() || val.is_null(),
                other => panic!("unknown type {other} in perf-schema.txt"),
            };
            assert!(ok, "{key}: expected {ty}, got {val}");
            documented.push(key.to_string());
        }
        fn keys(v: &serde_json::Value, prefix: &str, out: &mut Vec<String>) {
            if let Some(m) = v.as_object() {
                for (k, v) in m {
                    let k = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                    out.push(k.clone());
                    keys(v, &k, out);
                }
            }
        }
        let mut actual = Vec::new();
        keys(&v, "", &mut actual);
        documented.sort();
        actual.sort();
        assert_eq!(documented, actual, "perf-schema.txt and the report disagree");
        assert_eq!(v["path"], "io_uring-poll");
        assert_eq!(serde_json::from_value::<Report>(v).unwrap(), r);
    }

    #[test]
    fn bad_arguments_are_refused_by_name() {
        let base = PerfArgs {
            path: IoPath::Homi,
            rw: Rw::Randread,
            bs: 4096,
            qd: 32,
            threads: 1,
            runtime: 1.0,
            ios: None,
            nvme: "/dev/nvme0".into(),
            nsid: 1,
            span: 1 << 20,
            json: false,
            gpu: Default::default(),
            file: None,
        };
        let err = |a: PerfArgs| validate(&a).unwrap_err().to_string();
        assert!(err(PerfArgs { bs: 1000, ..base.clone() }).contains("--bs"));
        assert!(err(PerfArgs { qd: 0, ..base.clone() }).contains("--qd"));
        assert!(err(PerfArgs { threads: 0, ..base.clone() }).contains("--threads"));
        assert!(err(PerfArgs { path: IoPath::Pread, ..base.clone() }).contains("synchronous"));
        assert!(err(PerfArgs { runtime: 0.0, ..base.clone() }).contains("--runtime"));
        assert!(err(PerfArgs { ios: Some(0), ..base.clone() }).contains("--ios"));
        assert!(validate(&base).is_ok());
    }
}
