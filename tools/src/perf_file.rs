//! `homi perf --file`: one file read side by side, in one run, through
//! - `io_uring`: io_uring reads with `O_DIRECT` on the file itself;
//! - `passthru`: NVMe Read commands through io_uring `uring_cmd` on `/dev/ngXnY`, at
//!   the LBAs the file map gives;
//! - `homi`: a homi queue pair per thread at those LBAs, under the file map, which is
//!   checked to be live before every batch (as `QueuePair::read_at` does).
//!
//! Every path reads the same blocks: the `--bs`-sized, `--bs`-aligned blocks of the
//! file that lie whole inside one mapped extent and below the end of the file.

use std::fs::OpenOptions;
use std::io::IsTerminal;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;

use anyhow::{ensure, Context};
use homi::{Extent, ExtentKind, FileMap};

use crate::perf::{Bells, Engine, IoPath, PerfArgs, Report};

/// For every `bs`-aligned block of `bs` bytes that lies whole inside one mapped extent
/// and below `file_size`: its file offset, and its byte offset on the namespace.
fn readable_blocks(extents: &[Extent], file_size: u64, bs: u64, lba_shift: u32) -> (Vec<u64>, Vec<u64>) {
    let (mut file, mut ns) = (Vec::new(), Vec::new());
    for e in extents.iter().filter(|e| e.kind == ExtentKind::Mapped) {
        let end = e.end().min(file_size);
        let mut at = e.file_offset.next_multiple_of(bs);
        while at + bs <= end {
            file.push(at);
            ns.push((e.lba << lba_shift) + (at - e.file_offset));
            at += bs;
        }
    }
    (file, ns)
}

/// An engine whose offset `i * bs` stands for block `table[i]`; with a map, it
/// submits nothing once the map is no longer live.
struct Blocks {
    inner: Box<dyn Engine + Send>,
    table: Arc<Vec<u64>>,
    bs: u64,
    map: Option<Arc<FileMap>>,
}

impl Engine for Blocks {
    fn submit(&mut self, slot: usize, off: u64, write: bool) -> anyhow::Result<()> {
        self.inner.submit(slot, self.table[(off / self.bs) as usize], write)
    }
    fn flush(&mut self) -> anyhow::Result<()> {
        if let Some(m) = &self.map {
            m.check_live().context("the file map was revoked during the run")?;
        }
        self.inner.flush()
    }
    fn reap(&mut self, done: &mut dyn FnMut(usize)) -> anyhow::Result<()> {
        self.inner.reap(done)
    }
    fn doorbells(&self) -> Option<Bells> {
        self.inner.doorbells()
    }
}

/// The paths `--file` compares, in the order they run and print.
const PATHS: [IoPath; 3] = [IoPath::IoUring, IoPath::Passthru, IoPath::Homi];

/// `homi perf --file FILE`.
pub fn main(args: &PerfArgs, path: &Path) -> anyhow::Result<()> {
    ensure!(
        !matches!(args.rw, crate::perf::Rw::Write | crate::perf::Rw::Randwrite),
        "--file reads only: use --rw read or randread"
    );
    let target = crate::file::FileTarget { file: path.to_owned(), nvme: None, offset: 0, len: None };
    let o = crate::file::open(&target, false)?;
    let size = o.file.metadata()?.len();
    ensure!(size > 0, "{} is empty", path.display());
    let map = Arc::new(o.ctrl.map_file(&o.file, 0, size.next_multiple_of(4096), false)?);
    let shift = map.lba_shift();
    let bs = args.bs as u64;
    ensure!(bs % (1 << shift) == 0, "--bs must be a multiple of the namespace's {} B blocks", 1 << shift);
    let (file_blocks, ns_blocks) = readable_blocks(map.extents(), map.file_size(), bs, shift);
    ensure!(!file_blocks.is_empty(), "no {bs}-byte block of {} lies whole inside a mapped extent", path.display());
    let (file_blocks, ns_blocks) = (Arc::new(file_blocks), Arc::new(ns_blocks));
    let mut base = args.clone();
    base.file = None;
    base.nvme = o.nvme.clone();
    base.nsid = map.nsid();
    base.span = file_blocks.len() as u64 * bs;
    ensure!(
        base.span >= bs * u64::from(args.threads),
        "{} has {} readable blocks, fewer than --threads",
        path.display(),
        file_blocks.len()
    );
    let progress = !args.json && std::io::stderr().is_terminal();
    let mut reports = Vec::new();
    for p in PATHS {
        let a = PerfArgs { path: p, ..base.clone() };
        crate::perf::validate(&a)?;
        let engines = (0..a.threads)
            .map(|_| {
                let (inner, table, map) = match p {
                    IoPath::IoUring => {
                        // Read-only: a writer would break an ext4 map's lease.
                        let f = OpenOptions::new()
                            .read(true)
                            .custom_flags(nix::libc::O_DIRECT)
                            .open(path)
                            .with_context(|| format!("open {} O_DIRECT", path.display()))?;
                        (crate::perf::uring(&a, f)?, file_blocks.clone(), None)
                    }
                    _ => (crate::perf::engine(&a, Some(&o.ctrl), shift)?, ns_blocks.clone(), Some(map.clone())),
                };
                Ok(Box::new(Blocks { inner, table, bs, map }) as Box<dyn Engine + Send>)
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        reports.push(crate::perf::measure(&a, engines, progress)?);
    }
    if let Ok(m) = Arc::try_unwrap(map) {
        m.unmap()?;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
    } else {
        println!(
            "{} ({} bytes, {} blocks of {} B readable, on {} ns {}): {} bs={} qd={} threads={}",
            path.display(),
            size,
            file_blocks.len(),
            bs,
            o.nvme.display(),
            base.nsid,
            crate::bench::name(&args.rw),
            args.bs,
            args.qd,
            args.threads
        );
        print!("{}", table(&reports));
    }
    Ok(())
}

/// One row per path, with its IOPS as a multiple of io_uring's.
fn table(reports: &[Report]) -> String {
    let base = reports.iter().find(|r| r.path == IoPath::IoUring).map(|r| r.iops);
    let mut s = format!(
        "{:<10} {:>10} {:>9} {:>9} {:>9} {:>10} {:>11}\n",
        "path", "IOPS", "MiB/s", "p50 us", "p99 us", "CPU ns/IO", "vs io_uring"
    );
    for r in reports {
        let ratio = base.filter(|b| *b > 0.0).map_or("n/a".to_string(), |b| format!("{:.2}x", r.iops / b));
        s += &format!(
            "{:<10} {:>10.0} {:>9.1} {:>9.1} {:>9.1} {:>10.0} {:>11}\n",
            crate::bench::name(&r.path),
            r.iops,
            r.mib_per_s,
            r.latency_us.p50,
            r.latency_us.p99,
            r.cpu_ns_per_io,
            ratio
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ext(file_offset: u64, len: u64, lba: u64, kind: ExtentKind) -> Extent {
        Extent { file_offset, len, nsid: 1, lba, kind }
    }

    #[test]
    fn only_whole_blocks_inside_mapped_extents_are_read() {
        let e = [
            ext(0, 12288, 100, ExtentKind::Mapped),
            ext(12288, 4096, 0, ExtentKind::Hole),
            ext(16384, 6144, 200, ExtentKind::Mapped),
            ext(22528, 10240, 300, ExtentKind::Unwritten),
        ];
        let (file, ns) = readable_blocks(&e, 1 << 20, 8192, 9);
        // [0, 8192) fits; [8192, 16384) crosses into the hole; [16384, 24576) runs past
        // its extent.
        assert_eq!(file, vec![0]);
        assert_eq!(ns, vec![100 << 9]);
        let (file, ns) = readable_blocks(&e, 1 << 20, 4096, 9);
        assert_eq!(file, vec![0, 4096, 8192, 16384]);
        assert_eq!(ns, vec![100 << 9, (100 << 9) + 4096, (100 << 9) + 8192, 200 << 9]);
        // Nothing past the end of the file.
        assert_eq!(readable_blocks(&e, 6000, 4096, 9).0, vec![0]);
    }

    #[test]
    fn the_table_gives_ratios_to_io_uring() {
        let r = |path, iops| Report {
            path,
            rw: crate::perf::Rw::Randread,
            bs: 4096,
            qd: 1,
            threads: 1,
            ios: 1,
            seconds: 1.0,
            iops,
            mib_per_s: 1.0,
            latency_us: crate::perf::Latency { mean: 1.0, p50: 1.0, p99: 1.0, p999: 1.0, max: 1.0 },
            cpu_ns_per_io: 1.0,
            doorbells: None,
        };
        let t = table(&[r(IoPath::IoUring, 100.0), r(IoPath::Homi, 250.0)]);
        assert!(t.contains("1.00x") && t.contains("2.50x"), "{t}");
    }
}
