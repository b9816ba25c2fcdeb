//! `homi map`, `homi cat` and `homi write-file`: a file's extents, and its bytes read
//! and written through a homi queue pair at those extents.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use homi::{Controller, DmaBuffer, ExtentKind, FileMap, Lease, MapState, QueuePair};
use serde::Serialize;

/// Which file, which part of it, and (optionally) which controller.
#[derive(clap::Args, Clone, Debug)]
pub struct FileTarget {
    /// The file (on an NVMe namespace of the controller).
    pub file: PathBuf,
    /// The controller's char device (default: the controller of the NVMe namespace
    /// that holds FILE, found through sysfs).
    #[arg(long, visible_alias = "ctrl")]
    pub nvme: Option<PathBuf>,
    /// First byte (a multiple of 4096).
    #[arg(long, default_value_t = 0)]
    pub offset: u64,
    /// Bytes from --offset (default: to the end of the file).
    #[arg(long)]
    pub len: Option<u64>,
}

/// An open file and the controller it is on.
pub struct Opened {
    /// The file.
    pub file: File,
    /// The controller, attached.
    pub ctrl: Controller,
    /// Its char device.
    pub nvme: PathBuf,
}

/// Opens the target's file (for writing too with `write`) and attaches its controller.
pub fn open(t: &FileTarget, write: bool) -> anyhow::Result<Opened> {
    let file = OpenOptions::new()
        .read(true)
        .write(write)
        .open(&t.file)
        .with_context(|| format!("open {}", t.file.display()))?;
    ensure!(file.metadata()?.is_file(), "{} is not a regular file", t.file.display());
    let nvme = match &t.nvme {
        Some(p) => p.clone(),
        None => homi::nvme_controller_of(&file).with_context(|| {
            format!(
                "{} is on {}, not on an NVMe namespace: homi maps files on NVMe namespaces only",
                t.file.display(),
                homi::block_device_of(&file).unwrap_or_else(|| "no block device".into())
            )
        })?,
    };
    let ctrl =
        crate::io::while_resetting(|| Controller::open(&nvme)).with_context(|| format!("attach {}", nvme.display()))?;
    Ok(Opened { file, ctrl, nvme })
}

/// Bytes to map from `offset`: `len`, or to the end of the file, rounded up to 4096
/// (the module clips at the end of the file). Zero for nothing to map.
fn map_len(file: &File, offset: u64, len: Option<u64>) -> anyhow::Result<u64> {
    let size = file.metadata()?.len();
    Ok(len.unwrap_or(size.saturating_sub(offset)).next_multiple_of(4096))
}

/// Maps, retrying until `until` (or SIGINT/SIGTERM in `homi cat --loop-secs`) while
/// the module says the file is busy (open for writing elsewhere, or changing).
fn map_retrying(o: &Opened, offset: u64, len: u64, write: bool, until: Instant) -> homi::Result<FileMap> {
    loop {
        match o.ctrl.map_file(&o.file, offset, len, write) {
            Err(homi::Error::MapRefused { reason: homi::MapRefusal::Busy, .. })
                if Instant::now() < until && !STOP.load(Ordering::Relaxed) =>
            {
                std::thread::sleep(Duration::from_millis(10));
            }
            other => return other,
        }
    }
}

/// Arguments of `homi map`.
#[derive(clap::Args, Debug)]
pub struct MapArgs {
    #[command(flatten)]
    target: FileTarget,
    /// Ask for a writable map (XFS only).
    #[arg(long)]
    write: bool,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

/// `homi map --json`: one object.
#[derive(Serialize)]
struct MapJson {
    file: String,
    /// The file's block device (`nvme0n1p1`).
    device: Option<String>,
    /// The controller's char device.
    controller: String,
    nsid: u32,
    /// `layout` (XFS) or `read` (ext4).
    lease: &'static str,
    writable: bool,
    file_size: u64,
    block_size: u32,
    lba_size: u32,
    id: u32,
    offset: u64,
    len: u64,
    extents: Vec<ExtentJson>,
}

#[derive(Serialize)]
struct ExtentJson {
    file_offset: u64,
    len: u64,
    /// `mapped`, `unwritten` or `hole`.
    kind: &'static str,
    nsid: u32,
    lba: u64,
}

fn kind_name(k: ExtentKind) -> &'static str {
    match k {
        ExtentKind::Mapped => "mapped",
        ExtentKind::Unwritten => "unwritten",
        ExtentKind::Hole => "hole",
    }
}

/// `homi map`.
pub fn map(a: &MapArgs) -> anyhow::Result<()> {
    let o = open(&a.target, a.write)?;
    let len = map_len(&o.file, a.target.offset, a.target.len)?;
    ensure!(len > 0, "nothing to map: {} has no bytes at offset {}", a.target.file.display(), a.target.offset);
    let m = o.ctrl.map_file(&o.file, a.target.offset, len, a.write)?;
    let out = MapJson {
        file: a.target.file.display().to_string(),
        device: homi::block_device_of(&o.file),
        controller: o.nvme.display().to_string(),
        nsid: m.nsid(),
        lease: match m.lease() {
            Lease::Layout => "layout",
            Lease::DenyWrite => "deny-write",
        },
        writable: m.writable(),
        file_size: m.file_size(),
        block_size: m.block_size(),
        lba_size: 1 << m.lba_shift(),
        id: m.id(),
        offset: m.offset(),
        len: m.len(),
        extents: m
            .extents()
            .iter()
            .map(|e| ExtentJson {
                file_offset: e.file_offset,
                len: e.len,
                kind: kind_name(e.kind),
                nsid: e.nsid,
                lba: e.lba,
            })
            .collect(),
    };
    m.unmap()?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    let kept_by = if out.lease == "layout" { "layout lease" } else { "writes denied while mapped" };
    println!(
        "{}: on {} ({} ns {}), {kept_by}, {} map",
        out.file,
        out.device.as_deref().unwrap_or("?"),
        out.controller,
        out.nsid,
        if out.writable { "writable" } else { "read-only" }
    );
    println!(
        "  file size {} B, block size {} B, LBA size {} B; bytes {}..{} in {} extents",
        out.file_size,
        out.block_size,
        out.lba_size,
        out.offset,
        out.offset + out.len,
        out.extents.len()
    );
    println!("{:>14} {:>14} {:<10} {:>5} {:>14}", "FILE_OFFSET", "LENGTH", "KIND", "NSID", "LBA");
    for e in &out.extents {
        let lba = if e.kind == "hole" { "-".to_string() } else { e.lba.to_string() };
        println!("{:>14} {:>14} {:<10} {:>5} {:>14}", e.file_offset, e.len, e.kind, e.nsid, lba);
    }
    Ok(())
}

/// Arguments of `homi cat`.
#[derive(clap::Args, Debug)]
#[command(after_long_help = "\
Copy FILE to stdout:
  homi cat FILE > copy
Stress a map under revocation: read FILE over and over for S seconds (or until SIGINT or \
SIGTERM), writing nothing to stdout, acknowledging each revocation (unmap) and mapping \
again, and fail if any block read ever held PATTERN:
  homi cat --loop-secs S --forbid 0123456789abcdef FILE
It ends with one line on stderr:
  homi cat: passes=P revocations=R fenced=F bytes=B forbidden_blocks=K seconds=T
and exits 1 if K > 0.")]
pub struct CatArgs {
    #[command(flatten)]
    target: FileTarget,
    /// Bytes per read (a multiple of 4096, at most 4 MiB).
    #[arg(long, default_value_t = 1 << 20)]
    chunk: usize,
    /// Read the range over and over for this many seconds (or until SIGINT or SIGTERM),
    /// writing nothing to stdout; report passes and revocations on stderr.
    #[arg(long)]
    loop_secs: Option<f64>,
    /// Exit 1 if any 4096-byte block read holds this 8-byte pattern (16 hex digits,
    /// bytes in file order) at an 8-byte-aligned offset.
    #[arg(long, value_parser = parse_pattern)]
    forbid: Option<u64>,
    /// Revocations survived per pass (each is acknowledged and the file mapped again).
    #[arg(long, default_value_t = 64)]
    max_remaps: u32,
}

/// 16 hex digits, bytes in file order, as the native-endian word that memory holds.
fn parse_pattern(s: &str) -> anyhow::Result<u64> {
    let s = s.strip_prefix("0x").unwrap_or(s);
    ensure!(s.len() == 16 && s.bytes().all(|b| b.is_ascii_hexdigit()), "{s:?} is not 16 hex digits");
    let mut b = [0u8; 8];
    for (i, byte) in b.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16)?;
    }
    Ok(u64::from_ne_bytes(b))
}

/// 4096-byte blocks of `data` (which starts on a block boundary) that hold `word` at
/// an 8-byte-aligned offset: their offsets in `data`.
fn forbidden_blocks(data: &[u8], word: u64) -> Vec<usize> {
    data.chunks(4096)
        .enumerate()
        .filter(|(_, b)| b.chunks_exact(8).any(|w| u64::from_ne_bytes(w.try_into().expect("8 bytes")) == word))
        .map(|(i, _)| i * 4096)
        .collect()
}

/// What a `homi cat` run saw.
#[derive(Default, Debug)]
struct CatStats {
    passes: u64,
    revocations: u64,
    fenced: u64,
    bytes: u64,
    forbidden: u64,
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop(_: nix::libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

const QUEUE_DEPTH: u32 = 64;
const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// Reads a file's range through one queue pair, remapping on revocation.
struct Reader<'a> {
    o: &'a Opened,
    qp: QueuePair,
    buf: DmaBuffer,
    map: Option<FileMap>,
    stats: CatStats,
    max_remaps: u32,
    /// Until when to keep retrying a map while the file is busy.
    until: Instant,
    /// Reading over and over: a file still busy at `until` ends the pass, not the run.
    looping: bool,
}

impl Reader<'_> {
    /// One pass over `[offset, offset + len)` (or to the end of the file), handing
    /// each chunk read to `sink` with its file offset.
    fn pass(
        &mut self,
        offset: u64,
        len: Option<u64>,
        sink: &mut dyn FnMut(u64, &[u8]) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        let mut pos = offset;
        let mut remaps = 0;
        let mut chunk = vec![0u8; self.buf.len()];
        while !STOP.load(Ordering::Relaxed) {
            let map = match self.map.take() {
                Some(m) if pos >= m.offset() && pos < m.offset() + m.len() => m,
                old => {
                    if let Some(m) = old {
                        m.unmap()?;
                    }
                    let want = map_len(&self.o.file, pos, len.map(|l| (offset + l).saturating_sub(pos)))?;
                    if want == 0 {
                        break;
                    }
                    let m = match map_retrying(self.o, pos, want, false, self.until) {
                        Ok(m) => m,
                        Err(homi::Error::MapRefused { reason: homi::MapRefusal::Busy, .. }) if self.looping => break,
                        Err(e) => return Err(e.into()),
                    };
                    if m.is_empty() {
                        break;
                    }
                    m
                }
            };
            let end = len.map_or(map.file_size(), |l| (offset + l).min(map.file_size()));
            if pos >= end {
                self.map = Some(map);
                break;
            }
            let lba = 1u64 << map.lba_shift();
            let ask = (end - pos).min(self.buf.len() as u64).next_multiple_of(lba);
            let ask = ask.min(map.offset() + map.len() - pos) as usize;
            match self.qp.read_at(&map, pos, &self.buf, 0, ask, IO_TIMEOUT) {
                Ok(n) => {
                    let n = (n as u64).min(end - pos) as usize;
                    self.map = Some(map);
                    if n == 0 {
                        break;
                    }
                    self.buf.read_at(0, &mut chunk[..n])?;
                    sink(pos, &chunk[..n])?;
                    self.stats.bytes += n as u64;
                    pos += n as u64;
                }
                Err(homi::Error::MapRevoked { state }) => {
                    self.stats.revocations += 1;
                    remaps += 1;
                    eprintln!("homi cat: the map was {state} at offset {pos}; acknowledging and mapping again");
                    // Unmapping is the acknowledgement: nothing of ours is in flight.
                    map.unmap()?;
                    if state == MapState::Fenced {
                        self.stats.fenced += 1;
                        // The module destroyed this file's queue pairs.
                        self.qp = self.o.ctrl.create_qpair(QUEUE_DEPTH)?;
                    }
                    ensure!(remaps <= self.max_remaps, "revoked more than {} times in one pass", self.max_remaps);
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }
}

/// `homi cat`.
pub fn cat(a: &CatArgs) -> anyhow::Result<()> {
    ensure!(
        a.chunk > 0 && a.chunk % 4096 == 0 && a.chunk as u64 <= homi::uapi::HOMI_ALLOC_MAX,
        "--chunk must be a multiple of 4096, at most 4 MiB"
    );
    ensure!(a.target.offset % 4096 == 0, "--offset must be a multiple of 4096");
    let o = open(&a.target, false)?;
    let mut r = Reader {
        o: &o,
        qp: o.ctrl.create_qpair(QUEUE_DEPTH)?,
        buf: o.ctrl.alloc(a.chunk)?,
        map: None,
        stats: CatStats::default(),
        max_remaps: a.max_remaps,
        until: Instant::now() + Duration::from_secs(10),
        looping: a.loop_secs.is_some(),
    };
    let forbid = a.forbid;
    let check = |stats: &mut CatStats, pass: u64, pos: u64, data: &[u8]| {
        if let Some(word) = forbid {
            for at in forbidden_blocks(data, word) {
                if stats.forbidden < 16 {
                    eprintln!(
                        "homi cat: forbidden pattern in the block at file offset {} (pass {pass})",
                        pos + at as u64
                    );
                }
                stats.forbidden += 1;
            }
        }
    };
    let Some(secs) = a.loop_secs else {
        let mut out = std::io::stdout().lock();
        let mut stats = CatStats::default();
        r.pass(a.target.offset, a.target.len, &mut |pos, data| {
            check(&mut stats, 1, pos, data);
            out.write_all(data).context("write to stdout")
        })?;
        out.flush()?;
        if let Some(m) = r.map.take() {
            m.unmap()?;
        }
        ensure!(stats.forbidden == 0, "forbidden pattern seen in {} blocks", stats.forbidden);
        return Ok(());
    };
    ensure!(secs > 0.0, "--loop-secs must be positive");
    for sig in [nix::sys::signal::Signal::SIGINT, nix::sys::signal::Signal::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { nix::sys::signal::signal(sig, nix::sys::signal::SigHandler::Handler(on_stop)) }?;
    }
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(secs);
    r.until = deadline;
    let mut seen = CatStats::default();
    while Instant::now() < deadline && !STOP.load(Ordering::Relaxed) {
        let pass = r.stats.passes + 1;
        r.pass(a.target.offset, a.target.len, &mut |pos, data| {
            check(&mut seen, pass, pos, data);
            Ok(())
        })?;
        if !STOP.load(Ordering::Relaxed) {
            r.stats.passes += 1;
        }
    }
    if let Some(m) = r.map.take() {
        m.unmap()?;
    }
    let s = &r.stats;
    eprintln!(
        "homi cat: passes={} revocations={} fenced={} bytes={} forbidden_blocks={} seconds={:.1}",
        s.passes,
        s.revocations,
        s.fenced,
        s.bytes,
        seen.forbidden,
        start.elapsed().as_secs_f64()
    );
    if seen.forbidden > 0 {
        bail!("forbidden pattern seen in {} blocks", seen.forbidden);
    }
    Ok(())
}

/// Arguments of `homi write-file`.
#[derive(clap::Args, Debug)]
pub struct WriteFileArgs {
    #[command(flatten)]
    target: FileTarget,
    /// Write this byte (0xa5, or decimal) --len times instead of reading stdin.
    #[arg(long, value_parser = parse_byte)]
    pattern: Option<u8>,
}

fn parse_byte(s: &str) -> anyhow::Result<u8> {
    Ok(match s.strip_prefix("0x") {
        Some(h) => u8::from_str_radix(h, 16)?,
        None => s.parse()?,
    })
}

/// `homi write-file`.
pub fn write_file(a: &WriteFileArgs) -> anyhow::Result<()> {
    ensure!(a.target.offset % 4096 == 0, "--offset must be a multiple of 4096");
    let data = match (a.pattern, a.target.len) {
        (Some(p), Some(len)) => vec![p; usize::try_from(len)?],
        (Some(_), None) => bail!("--pattern needs --len"),
        (None, len) => {
            let mut d = Vec::new();
            std::io::stdin().lock().take(len.unwrap_or(u64::MAX)).read_to_end(&mut d).context("read stdin")?;
            d
        }
    };
    ensure!(!data.is_empty(), "nothing to write");
    let o = open(&a.target, true)?;
    let until = Instant::now() + Duration::from_secs(5);
    let map = map_retrying(&o, a.target.offset, (data.len() as u64).next_multiple_of(4096), true, until)?;
    let lba = 1usize << map.lba_shift();
    ensure!(data.len() % lba == 0, "the length must be a multiple of the namespace's {lba}-byte blocks");
    let mut qp = o.ctrl.create_qpair(QUEUE_DEPTH)?;
    let buf = o.ctrl.alloc((data.len().next_multiple_of(4096)).min(4 << 20))?;
    let mut pos = 0;
    while pos < data.len() {
        let n = (data.len() - pos).min(buf.len());
        buf.write_at(0, &data[pos..pos + n])?;
        let at = a.target.offset + pos as u64;
        qp.write_at(&map, at, &buf, 0, n, IO_TIMEOUT).map_err(|e| match e {
            homi::Error::NotMapped { .. } => anyhow::anyhow!(
                "{e} (write the range through the file system first, e.g. dd conv=notrunc and fsync, so it is allocated)"
            ),
            e => e.into(),
        })?;
        pos += n;
    }
    // Unmapping drops the range from the page cache, so the kernel reads what we wrote.
    map.unmap()?;
    eprintln!(
        "homi write-file: wrote {} bytes at offset {} of {} through {}",
        data.len(),
        a.target.offset,
        a.target.file.display(),
        o.nvme.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_are_bytes_in_file_order() {
        let w = parse_pattern("0123456789abcdef").unwrap();
        assert_eq!(w.to_ne_bytes(), [0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef]);
        assert_eq!(parse_pattern("0x0123456789abcdef").unwrap(), w);
        assert!(parse_pattern("0123").is_err());
        assert!(parse_pattern("0123456789abcdeg").is_err());
        assert_eq!(parse_byte("0xa5").unwrap(), 0xa5);
        assert_eq!(parse_byte("7").unwrap(), 7);
    }

    #[test]
    fn forbidden_blocks_are_found_at_aligned_words_only() {
        let w = parse_pattern("deadbeefcafef00d").unwrap();
        let mut d = vec![0u8; 3 * 4096 + 100];
        d[4096 + 64..4096 + 72].copy_from_slice(&w.to_ne_bytes());
        // Unaligned: not a match.
        d[2 * 4096 + 3..2 * 4096 + 11].copy_from_slice(&w.to_ne_bytes());
        assert_eq!(forbidden_blocks(&d, w), vec![4096]);
        d[3 * 4096 + 8..3 * 4096 + 16].copy_from_slice(&w.to_ne_bytes());
        assert_eq!(forbidden_blocks(&d, w), vec![4096, 3 * 4096]);
    }

    #[test]
    fn the_cli_parses_file_subcommands() {
        use clap::CommandFactory;
        crate::Cli::command().debug_assert();
    }
}
