//! File maps that the file system takes back: every layout-changing operation on XFS
//! revokes a map while a reader holds it, waits for the reader's acknowledgement and
//! then completes; the blocks a truncate frees, once another file holds them, never
//! reach the reader; a holder that never acknowledges is fenced after
//! `map_revoke_ms`. ext4 maps deny writes instead (`ETXTBSY`) and are never revoked.
//! A SIGKILLed holder leaves nothing behind.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command as Proc, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use homi::uapi::*;
use homi::{Error, Extent, ExtentKind, MapRefusal, MapState};
use nix::errno::Errno;

use crate::common::*;
use crate::files::*;
use crate::harness::Harness;

/// What a reader thread saw, shared with the test.
#[derive(Default)]
struct Seen {
    stop: AtomicBool,
    /// Whole passes over the file.
    passes: AtomicU64,
    /// When each pass ended.
    pass_ends: Mutex<Vec<Instant>>,
    /// When each revocation was noticed (before the acknowledgement).
    revoked_at: Mutex<Vec<Instant>>,
    /// Maps refused as busy (ext4: a writer has the file open).
    busy: AtomicU64,
    /// Maps refused because the file shares blocks (after a reflink onto it).
    shared: AtomicU64,
    /// Blocks read that held [`FORBIDDEN`].
    forbidden: AtomicU64,
    /// The extents of the first map, and its LBA shift.
    first: Mutex<(Vec<Extent>, u32)>,
    /// What stopped the reader, if anything did.
    error: Mutex<Option<String>>,
}

/// A thread that maps `path` read-only and reads it whole through homi, again and
/// again; on revocation it acknowledges (unmap), waits a little, and maps again.
struct Reader {
    seen: Arc<Seen>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Reader {
    fn start(path: &Path) -> Self {
        let seen = Arc::new(Seen::default());
        let (s, p) = (seen.clone(), path.to_owned());
        let thread = std::thread::spawn(move || {
            if let Err(e) = read_loop(&p, &s) {
                *s.error.lock().unwrap() = Some(format!("{e:#}"));
            }
        });
        Self { seen, thread: Some(thread) }
    }

    fn passes(&self) -> u64 {
        self.seen.passes.load(Ordering::Acquire)
    }

    fn revocations(&self) -> usize {
        self.seen.revoked_at.lock().unwrap().len()
    }

    /// Waits until the reader finished `n` passes (at most 60 s).
    fn wait_passes(&self, n: u64) -> anyhow::Result<()> {
        let t = Instant::now();
        while self.passes() < n {
            if let Some(e) = self.seen.error.lock().unwrap().clone() {
                bail!("reader failed: {e}");
            }
            ensure!(t.elapsed() < Duration::from_secs(60), "reader made {} of {n} passes in 60 s", self.passes());
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    }

    /// Stops the reader; fails with what stopped it early, if anything did.
    fn stop(mut self) -> anyhow::Result<Arc<Seen>> {
        self.seen.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            t.join().map_err(|_| anyhow::anyhow!("reader panicked"))?;
        }
        if let Some(e) = self.seen.error.lock().unwrap().clone() {
            bail!("reader failed: {e}");
        }
        Ok(self.seen.clone())
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.seen.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn read_loop(path: &Path, seen: &Seen) -> anyhow::Result<()> {
    let ctrl = open_live()?;
    let mut qp = ctrl.create_qpair(32)?;
    let buf = ctrl.alloc(1 << 20)?;
    let mut block = vec![0u8; 1 << 20];
    'map: while !seen.stop.load(Ordering::Acquire) {
        let f = File::open(path)?;
        let size = f.metadata()?.len();
        if size == 0 {
            std::thread::sleep(Duration::from_millis(10));
            continue;
        }
        let map = match map_whole(&ctrl, &f, false) {
            Ok(m) => m,
            Err(Error::MapRefused { reason: MapRefusal::Busy, .. }) => {
                seen.busy.fetch_add(1, Ordering::AcqRel);
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
            Err(Error::MapRefused { reason: MapRefusal::SharedBlocks, .. }) => {
                seen.shared.fetch_add(1, Ordering::AcqRel);
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
            Err(e) => return Err(e).context("map_file"),
        };
        {
            let mut first = seen.first.lock().unwrap();
            if first.0.is_empty() {
                *first = (map.extents().to_vec(), map.lba_shift());
            }
        }
        while !seen.stop.load(Ordering::Acquire) {
            let mut off = 0;
            while off < map.file_size() {
                let n = round_up(map.file_size() - off, 4096).min(buf.len() as u64) as usize;
                match qp.read_at(&map, off, &buf, 0, n, TIMEOUT) {
                    Ok(got) => {
                        buf.read_at(0, &mut block[..n])?;
                        let bad = block[..got].chunks(16).filter(|c| *c == FORBIDDEN).count();
                        seen.forbidden.fetch_add(bad as u64, Ordering::AcqRel);
                        off += got.max(1) as u64;
                    }
                    Err(Error::MapRevoked { state }) => {
                        seen.revoked_at.lock().unwrap().push(Instant::now());
                        ensure!(state == MapState::Revoked, "the reader's map was {state} (it was acknowledging)");
                        map.unmap().context("acknowledge (unmap)")?;
                        // Give the operation that broke the lease room to run.
                        std::thread::sleep(Duration::from_millis(20));
                        continue 'map;
                    }
                    Err(e) => return Err(e).context(format!("read_at {off}")),
                }
            }
            seen.passes.fetch_add(1, Ordering::AcqRel);
            seen.pass_ends.lock().unwrap().push(Instant::now());
        }
        map.unmap()?;
    }
    Ok(())
}

/// Runs `f` in a thread and waits for it at most `limit`: a hung operation fails the
/// check instead of the whole run.
fn bounded<T: Send + 'static>(
    what: &str,
    limit: Duration,
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<(T, Instant, Instant)> {
    let (tx, rx) = mpsc::channel();
    let t0 = Instant::now();
    std::thread::spawn(move || {
        let r = f();
        let _ = tx.send((r, Instant::now()));
    });
    match rx.recv_timeout(limit) {
        Ok((r, t1)) => Ok((r.with_context(|| what.to_owned())?, t0, t1)),
        Err(_) => bail!("{what} did not complete within {limit:?}"),
    }
}

/// The module's `map_revoke_ms`, as a map's reply gives it (0 if mapping fails).
fn revoke_ms(fs: &Fs) -> u64 {
    let probe = fs.path("revoke-ms-probe");
    let ms = (|| -> anyhow::Result<u64> {
        new_file(&probe, 4096, 599)?;
        let ctrl = open_live()?;
        let m = map_whole(&ctrl, &File::open(&probe)?, false)?;
        let ms = m.revoke_ms();
        m.unmap()?;
        Ok(u64::from(ms))
    })();
    let _ = std::fs::remove_file(&probe);
    ms.unwrap_or(0)
}

fn new_file(path: &Path, size: u64, seed: u64) -> anyhow::Result<()> {
    let _ = std::fs::remove_file(path);
    let f = OpenOptions::new().write(true).create(true).truncate(true).open(path)?;
    f.write_all_at(&pattern(seed, size as usize), 0)?;
    f.sync_all()?;
    Ok(())
}

type Op = Box<dyn FnOnce(&Path) -> anyhow::Result<()> + Send>;

/// The reader holds the file; `op` runs; the map must have been revoked while `op`
/// ran, which must complete well before the holder would have been fenced, and the
/// reader must map and read the file again afterwards.
fn revoke_case(h: &mut Harness, fs: &Fs, what: &str, op: Op) {
    revoke_case_then(h, fs, what, false, op)
}

/// As [`revoke_case`]; with `shares`, the operation leaves the file sharing blocks, so
/// the reader's next map must be refused rather than read.
fn revoke_case_then(h: &mut Harness, fs: &Fs, what: &str, shares: bool, op: Op) {
    h.check(&format!("files: {}: {what} revokes the map, waits for the holder, completes", fs.label), || {
        let path = fs.path("revoked");
        new_file(&path, 8 * MIB, 500)?;
        let _ = new_file(&fs.path("clone-src"), MIB, 501);
        let reader = Reader::start(&path);
        reader.wait_passes(1)?;
        let before = reader.revocations();
        let p = path.clone();
        let ms = revoke_ms(fs);
        ensure!(ms > 0, "the map reply gives no revoke_ms");
        let limit = Duration::from_millis(ms) + Duration::from_secs(30);
        let ((), t0, t1) = bounded(what, limit, move || op(&p))?;
        if shares {
            // The file now shares blocks: mapping it again is refused (ETXTBSY).
            let t = Instant::now();
            while reader.seen.shared.load(Ordering::Acquire) == 0 {
                ensure!(t.elapsed() < Duration::from_secs(30), "the reflinked file was mapped again, or never tried");
                std::thread::sleep(Duration::from_millis(5));
            }
        } else {
            let passes = reader.passes();
            reader.wait_passes(passes + 2)?;
        }
        let seen = reader.stop()?;
        let revoked = seen.revoked_at.lock().unwrap().clone();
        ensure!(revoked.len() > before, "the reader's map was never revoked");
        ensure!(
            revoked.iter().any(|&r| r >= t0 && r <= t1),
            "no revocation while the operation ran ({} revocations, none in its {:?})",
            revoked.len(),
            t1 - t0
        );
        ensure!(
            t1 - t0 < Duration::from_millis(ms),
            "took {:?}, as long as fencing would (map_revoke_ms {ms})",
            t1 - t0
        );
        if !shares {
            // A new map shows the file as the operation left it.
            let want = std::fs::read(&path)?;
            let ctrl = open_live()?;
            let mut qp = ctrl.create_qpair(16)?;
            let buf = ctrl.alloc(MIB as usize)?;
            let map = map_whole(&ctrl, &File::open(&path)?, false)?;
            let got = homi_read_file(&mut qp, &buf, &map, 0, want.len());
            map.unmap()?;
            ensure!(got? == want, "after the {what}, homi reads other data than the kernel");
        }
        println!(
            "#   {what}: completed in {:?}; {} revocation(s), {} passes",
            t1 - t0,
            revoked.len(),
            seen.passes.load(Ordering::Acquire)
        );
        Ok(())
    });
}

fn falloc(mode: i32, off: u64, len: u64) -> Op {
    Box::new(move |p: &Path| fallocate(&OpenOptions::new().write(true).open(p)?, mode, off, len))
}

pub fn revoke(h: &mut Harness, fses: &[Fs]) {
    use nix::libc::{FALLOC_FL_COLLAPSE_RANGE, FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, FALLOC_FL_ZERO_RANGE};
    for fs in fses.iter().filter(|f| f.xfs) {
        revoke_case(h, fs, "truncate", Box::new(|p: &Path| Ok(OpenOptions::new().write(true).open(p)?.set_len(MIB)?)));
        revoke_case(h, fs, "hole punch", falloc(FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 2 * MIB, MIB));
        revoke_case(h, fs, "fallocate zero-range", falloc(FALLOC_FL_ZERO_RANGE, 2 * MIB, MIB));
        revoke_case(h, fs, "fallocate collapse-range", falloc(FALLOC_FL_COLLAPSE_RANGE, 2 * MIB, MIB));
        revoke_case(h, fs, "fallocate preallocation past the end", falloc(0, 8 * MIB, 4 * MIB));
        revoke_case_then(
            h,
            fs,
            "reflink onto the file (FICLONERANGE)",
            true,
            Box::new(|p: &Path| {
                let src = File::open(p.with_file_name("clone-src"))?;
                let dst = OpenOptions::new().write(true).open(p)?;
                // struct file_clone_range: src_fd, src_offset, src_length, dest_offset.
                let arg: [u64; 4] = [src.as_raw_fd() as u64, 0, MIB, 3 * MIB];
                // SAFETY: FICLONERANGE = _IOW(0x94, 13, struct file_clone_range) reads it.
                let rc =
                    unsafe { nix::libc::ioctl(dst.as_raw_fd(), nix::request_code_write!(0x94, 13, 32) as _, &arg) };
                Errno::result(rc).context("FICLONERANGE")?;
                Ok(())
            }),
        );
        revoke_case(
            h,
            fs,
            "an ordinary write",
            Box::new(|p: &Path| {
                Ok(OpenOptions::new().write(true).open(p)?.write_all_at(&pattern(502, 4096), 4 * MIB)?)
            }),
        );
        stale_blocks(h, fs);
    }
    for fs in fses.iter().filter(|f| !f.xfs) {
        deny_write(h, fs);
    }
    if let Some(fs) = fses.iter().find(|f| f.xfs) {
        fence(h, fs);
        unmount_after_ack(h, fs);
    }
    for fs in fses {
        crash(h, fs);
    }
    h.check("files: nothing held after the revocations", ensure_nothing_held_files);
}

/// LBA ranges (start, end) in 512-byte sectors of the mapped extents.
fn sectors(extents: &[Extent], shift: u32) -> Vec<(u64, u64)> {
    extents
        .iter()
        .filter(|e| e.kind == ExtentKind::Mapped)
        .map(|e| ((e.lba << shift) / 512, ((e.lba << shift) + e.len) / 512))
        .collect()
}

/// Truncates `path` to 1 MiB, then fills another file with [`FORBIDDEN`] until it
/// holds every block the truncate freed (`first` is the map from before). Returns when
/// the truncate started and ended, and when the blocks were all reused.
fn truncate_and_reuse(
    fs: &Fs,
    path: &Path,
    first: &[Extent],
    shift: u32,
) -> anyhow::Result<(Instant, Instant, Instant)> {
    let keep = MIB;
    let tail: Vec<Extent> = first
        .iter()
        .filter(|e| e.end() > keep)
        .map(|e| {
            let cut = keep.saturating_sub(e.file_offset);
            Extent { file_offset: e.file_offset + cut, len: e.len - cut, lba: e.lba + (cut >> shift), ..*e }
        })
        .collect();
    let freed = sectors(&tail, shift);
    let total: u64 = freed.iter().map(|(a, b)| b - a).sum();
    ensure!(total > 0, "premise: the truncate frees no mapped block ({first:?})");
    let p = path.to_owned();
    let ((), t0, t1) = bounded("truncate", Duration::from_secs(60), move || {
        Ok(OpenOptions::new().write(true).open(&p)?.set_len(keep)?)
    })?;
    // The log forced: XFS reuses no extent freed by an uncommitted transaction.
    nix::unistd::sync();
    let other = fs.path("reuser");
    // Buffered: delayed allocation with XFS's speculative preallocation reuses the
    // freed extents sooner than direct writes, which allocate onwards from the last.
    let f = OpenOptions::new().write(true).create(true).truncate(true).open(&other)?;
    let chunk: Vec<u8> = FORBIDDEN.iter().copied().cycle().take(MIB as usize).collect();
    let chunk = chunk.as_slice();
    let ctrl = open_live()?;
    let (mut covered, mut off) = (0, 0);
    // Bounded, so that a file system that never reuses them fails rather than fills.
    while covered < total && off < 512 * MIB {
        match f.write_all_at(chunk, off) {
            Err(e) if e.raw_os_error() == Some(nix::libc::ENOSPC) => break,
            r => r?,
        }
        off += MIB;
        f.sync_all()?;
        let m = map_whole(&ctrl, &File::open(&other)?, false)?;
        let have = sectors(m.extents(), m.lba_shift());
        m.unmap()?;
        covered =
            freed.iter().map(|&(a, b)| have.iter().map(|&(c, d)| b.min(d).saturating_sub(a.max(c))).sum::<u64>()).sum();
    }
    println!("#   {}: {covered} of {total} freed sectors now in a {off}-byte file of the forbidden pattern", fs.label);
    ensure!(covered == total, "only {covered} of {total} freed sectors were reused ({off} bytes written)");
    Ok((t0, t1, Instant::now()))
}

/// After a truncate, the freed blocks go to another file full of [`FORBIDDEN`]; the
/// reader of the first file, which remaps after the revocation, never returns it.
fn stale_blocks(h: &mut Harness, fs: &Fs) {
    h.check(
        &format!("files: {}: blocks freed by truncate, now another file's, never reach the reader", fs.label),
        || {
            let path = fs.path("victim");
            new_file(&path, 16 * MIB, 510)?;
            let reader = Reader::start(&path);
            reader.wait_passes(1)?;
            let (first, shift) = reader.seen.first.lock().unwrap().clone();
            let r = truncate_and_reuse(fs, &path, &first, shift);
            let _ = std::fs::remove_file(fs.path("reuser"));
            let (t0, t1, reused) = r?;
            let n = reader.passes();
            reader.wait_passes(n + 3)?;
            let seen = reader.stop()?;
            let revoked = seen.revoked_at.lock().unwrap().clone();
            ensure!(revoked.iter().any(|&r| r >= t0 && r <= t1), "the truncate did not revoke the map while it ran");
            let after = seen.pass_ends.lock().unwrap().iter().filter(|&&t| t > reused).count();
            ensure!(after >= 3, "only {after} passes after the blocks were reused");
            let bad = seen.forbidden.load(Ordering::Acquire);
            ensure!(bad == 0, "the reader returned {bad} 16-byte pieces of another file's data (stale LBAs)");
            Ok(())
        },
    );
    h.check(&format!("files: {}: the same with `homi cat --loop-secs --forbid` as the reader", fs.label), || {
        let path = fs.path("victim");
        new_file(&path, 16 * MIB, 511)?;
        let (first, shift) = {
            let ctrl = open_live()?;
            let m = map_whole(&ctrl, &File::open(&path)?, false)?;
            let r = (m.extents().to_vec(), m.lba_shift());
            m.unmap()?;
            r
        };
        let word: String = FORBIDDEN[..8].iter().map(|b| format!("{b:02x}")).collect();
        let cat = Proc::new(homi_cli()?)
            .args(["cat", "--loop-secs", "300", "--forbid", &word])
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?;
        // The reader holds its map (a lease in /proc/locks) before the truncate.
        let held = wait_for("homi cat to map the file", || {
            std::fs::read_to_string("/proc/locks").is_ok_and(|l| l.contains("LEASE"))
        });
        let r = held.and_then(|()| truncate_and_reuse(fs, &path, &first, shift));
        let _ = std::fs::remove_file(fs.path("reuser"));
        if r.is_ok() {
            std::thread::sleep(Duration::from_secs(2));
        }
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(cat.id() as i32), nix::sys::signal::Signal::SIGTERM);
        let out = cat.wait_with_output()?;
        r?;
        let err = String::from_utf8_lossy(&out.stderr);
        let last =
            err.lines().rfind(|l| l.starts_with("homi cat: passes=")).with_context(|| format!("no summary:\n{err}"))?;
        let field = |k: &str| -> u64 {
            last.split_whitespace().find_map(|w| w.strip_prefix(k)?.strip_prefix('=')?.parse().ok()).unwrap_or(u64::MAX)
        };
        println!("#   {last}");
        ensure!(out.status.success(), "homi cat failed ({}):\n{err}", out.status);
        ensure!(field("forbidden_blocks") == 0, "{last}");
        ensure!((1..u64::MAX).contains(&field("revocations")), "no revocation: {last}; stderr:\n{err}");
        ensure!(field("fenced") == 0, "fenced: {last}");
        ensure!((3..u64::MAX).contains(&field("passes")), "too few passes: {last}");
        Ok(())
    });
}

/// Whether `r` failed with `ETXTBSY`.
fn txtbsy<T>(r: std::io::Result<T>) -> bool {
    matches!(r, Err(e) if e.raw_os_error() == Some(nix::libc::ETXTBSY))
}

/// Every way to write or truncate `path`: each must fail with `ETXTBSY` while
/// `denied`, and succeed otherwise (the file is then truncated to 8 MiB again).
fn writers(path: &Path, denied: bool) -> anyhow::Result<()> {
    let tries: [(&str, std::io::Result<()>); 4] = [
        ("open O_WRONLY", OpenOptions::new().write(true).open(path).map(drop)),
        ("open O_RDWR", OpenOptions::new().read(true).write(true).open(path).map(drop)),
        ("open O_RDONLY|O_TRUNC", OpenOptions::new().read(true).custom_flags(nix::libc::O_TRUNC).open(path).map(drop)),
        ("truncate(2)", nix::unistd::truncate(path, 8 * MIB as i64).map_err(std::io::Error::from)),
    ];
    for (what, r) in tries {
        if denied {
            ensure!(txtbsy(r), "{what} while mapped: expected ETXTBSY");
        } else {
            r.with_context(|| format!("{what} after the maps went"))?;
        }
    }
    Ok(())
}

/// ext4 maps deny writes instead of being revoked: while any map of the file lives,
/// every open for writing and every truncate fails with `ETXTBSY`, the map stays live
/// and reads go on; once the last map goes, they work again.
fn deny_write(h: &mut Harness, fs: &Fs) {
    let label = fs.label;
    h.check(
        &format!("files: {label}: while mapped, writes and truncates fail with ETXTBSY; nothing is revoked"),
        || {
            let path = fs.path("denied");
            new_file(&path, 8 * MIB, 540)?;
            let reader = Reader::start(&path);
            reader.wait_passes(1)?;
            let r = writers(&path, true);
            let n = reader.passes();
            let w = reader.wait_passes(n + 2);
            let seen = reader.stop()?;
            r?;
            w?;
            ensure!(seen.revoked_at.lock().unwrap().is_empty(), "the ext4 map was revoked");
            writers(&path, false)?;
            ensure!(
                std::fs::metadata(&path)?.len() == 8 * MIB,
                "truncate(2) to 8 MiB after the maps went had no effect"
            );
            Ok(())
        },
    );
    h.check(&format!("files: {label}: writes stay denied until the last of two maps goes"), || {
        let path = fs.path("denied");
        let ctrl = open_live()?;
        let other = open_live()?;
        let (f, g) = (File::open(&path)?, File::open(&path)?);
        let a = map_whole(&ctrl, &f, false)?;
        let b = map_whole(&other, &g, false)?;
        ensure!(a.lease() == homi::Lease::DenyWrite, "ext4 map kept by {:?}", a.lease());
        let first = writers(&path, true);
        a.unmap()?;
        let second = writers(&path, true);
        b.unmap()?;
        first.context("both maps live")?;
        second.context("one map left")?;
        writers(&path, false)
    });
    h.check(&format!("files: {label}: a file open for writing is not mapped (EAGAIN), and is once closed"), || {
        let path = fs.path("denied");
        let w = OpenOptions::new().write(true).open(&path)?;
        let ctrl = open_live()?;
        let f = File::open(&path)?;
        let r = map_whole(&ctrl, &f, false);
        drop(w);
        match r {
            Err(Error::MapRefused { reason: MapRefusal::Busy, .. }) => {}
            Err(e) => bail!("with a writer: {e}, not busy"),
            Ok(m) => {
                m.unmap()?;
                bail!("mapped while a writer had the file open");
            }
        }
        map_whole(&ctrl, &f, false).context("map after the writer closed")?.unmap()?;
        Ok(())
    });
}

/// A holder that never acknowledges: the truncate waits `map_revoke_ms`, then the
/// holder's queue pairs are destroyed and its map is fenced.
fn fence(h: &mut Harness, fs: &Fs) {
    let ms = revoke_ms(fs);
    if LOADED_HERE.load(Ordering::Acquire) {
        h.check("files: a map's reply gives the map_revoke_ms the module was loaded with", || {
            ensure!(ms == REVOKE_MS, "revoke_ms {ms}, loaded with map_revoke_ms={REVOKE_MS}");
            Ok(())
        });
    }
    if ms == 0 {
        h.skip("files: a holder that never acknowledges is fenced", "no map gives revoke_ms");
        return;
    }
    h.check(
        &format!("files: {}: a holder that never acknowledges is fenced after map_revoke_ms ({ms})", fs.label),
        || {
            let path = fs.path("fenced");
            new_file(&path, 4 * MIB, 520)?;
            let ctrl = open_live()?;
            let mut qp = ctrl.create_qpair(16)?;
            let mut other = ctrl.create_qpair(16)?;
            let buf = ctrl.alloc(MIB as usize)?;
            let f = File::open(&path)?;
            let map = map_whole(&ctrl, &f, false)?;
            qp.read_at(&map, 0, &buf, 0, MIB as usize, TIMEOUT).context("read before the truncate")?;
            let p = path.clone();
            let r = bounded("truncate", Duration::from_millis(ms) + Duration::from_secs(30), move || {
                Ok(OpenOptions::new().write(true).open(&p)?.set_len(MIB)?)
            });
            let ((), t0, t1) = match r {
                Ok(x) => x,
                Err(e) => {
                    let state = map.state();
                    map.unmap()?;
                    bail!("{e:#} (map {state})");
                }
            };
            let took = t1 - t0;
            ensure!(
                took >= Duration::from_millis(ms * 9 / 10),
                "the truncate completed after {took:?}, before map_revoke_ms"
            );
            ensure!(map.state() == MapState::Fenced, "map {} after the truncate", map.state());
            for q in [&qp, &other] {
                ensure!(
                    q.queue_state() == Some(HOMI_QUEUE_DEAD),
                    "qid {} state {:?}, not dead",
                    q.qid(),
                    q.queue_state()
                );
            }
            let r = qp.read_at(&map, 0, &buf, 0, 4096, TIMEOUT);
            ensure!(matches!(r, Err(Error::MapRevoked { state: MapState::Fenced })), "read on the fenced map: {r:?}");
            let raw = homi_read(&mut other, &buf, 0, 4096);
            ensure!(raw.is_err(), "a plain read on a fenced holder's other queue pair succeeded");
            ensure!(f.metadata()?.len() == MIB, "the truncate did not happen");
            map.unmap().context("unmap the fenced map")?;
            println!("#   fenced: the truncate took {took:?}");
            drop((qp, other, buf, f, ctrl));
            ensure_nothing_held_files()
        },
    );
}

/// Once the holder acknowledged a revocation (UNMAP_FILE returned) and closed the file,
/// nothing keeps the file open: its file system unmounts at once.
fn unmount_after_ack(h: &mut Harness, fs: &Fs) {
    h.check(&format!("files: {}: right after an acknowledged revocation the file system unmounts", fs.label), || {
        let path = fs.path("acked");
        new_file(&path, MIB, 550)?;
        let ctrl = open_live()?;
        let f = File::open(&path)?;
        let map = map_whole(&ctrl, &f, false)?;
        let p = path.clone();
        let truncate = std::thread::spawn(move || -> std::io::Result<()> {
            OpenOptions::new().write(true).open(&p)?.set_len(4096)
        });
        let revoked = wait_for("the truncate to revoke the map", || map.state() != MapState::Live);
        map.unmap()?;
        truncate.join().map_err(|_| anyhow::anyhow!("truncate panicked"))??;
        revoked?;
        drop((f, ctrl));
        let late = unmount(fs);
        sh(&format!("mount -t xfs {} {}", fs.dev, fs.mnt.display()))?;
        if let Some(after) = late? {
            bail!(
                "umount failed with EBUSY for {after:?} after UNMAP_FILE acknowledged the revocation and every fd \
                 was closed (map_revoke_ms {} ms): the module still held the file",
                revoke_ms(fs)
            );
        }
        Ok(())
    });
}

/// A SIGKILLed holder leaves nothing held, and the file's truncate completes at once.
fn crash(h: &mut Harness, fs: &Fs) {
    h.check(
        &format!("files: {}: a SIGKILLed holder leaves nothing held; a truncate then completes at once", fs.label),
        || {
            let path: PathBuf = fs.path("crashed");
            new_file(&path, 4 * MIB, 530)?;
            let mut child = Proc::new(std::env::current_exe()?)
                .args(["helper", "files-holder"])
                .arg(&path)
                .stdout(Stdio::piped())
                .spawn()?;
            let mut line = String::new();
            BufReader::new(child.stdout.take().context("stdout")?).read_line(&mut line)?;
            if !line.starts_with("mapped") {
                let _ = child.kill();
                let _ = child.wait();
                bail!("the holder did not map the file: {line:?}");
            }
            // The premise: the map holds (a layout lease on XFS, writes denied on ext4).
            let premise = if fs.xfs {
                let locks = std::fs::read_to_string("/proc/locks")?;
                ensure!(locks.contains("LEASE"), "premise: no lease in /proc/locks while the holder runs:\n{locks}");
                Ok(())
            } else {
                writers(&path, true)
            };
            child.kill()?;
            child.wait()?;
            wait_for("the holder's queue pairs and leases to go", || ensure_nothing_held_files().is_ok())?;
            let p = path.clone();
            let (_, t0, t1) = bounded("truncate", Duration::from_secs(30), move || {
                Ok(OpenOptions::new().write(true).open(&p)?.set_len(MIB)?)
            })?;
            premise?;
            ensure!(t1 - t0 < Duration::from_millis(500), "the truncate took {:?}", t1 - t0);
            Ok(())
        },
    );
}
