//! File-backed I/O (MAP_FILE, issue 12): XFS on a whole namespace, ext4 and XFS on
//! partitions that start at odd offsets, files with holes, unwritten extents and many
//! small extents read through homi and `homi cat` and compared with the kernel's view,
//! and `homi perf --file`. Writes through writable maps are in `files_write`, the
//! refusals in `files_refuse`, revocation, fencing and crashed holders in
//! `files_revoke`.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::Command as Proc;
use std::time::Duration;

use anyhow::{bail, ensure, Context};
use homi::uapi::*;
use homi::{Controller, DmaBuffer, ExtentKind, FileMap, QueuePair};
use nix::errno::Errno;

use crate::common::*;
use crate::harness::Harness;
use crate::kmod;

/// Where the suite mounts its file systems (the guest's root is read-only).
pub(crate) const MNT: &str = "/run/homi-files";
/// The pattern of the file that takes over the blocks a truncate freed: a reader of the
/// truncated file that ever returns it read stale LBAs.
pub(crate) const FORBIDDEN: &[u8; 16] = b"HOMI-STALE-LBAS!";
/// `map_revoke_ms` the suite loads the module with: short, so that fencing is quick.
pub(crate) const REVOKE_MS: u64 = 1500;

/// One file system under test.
pub(crate) struct Fs {
    /// Short name for check names.
    pub(crate) label: &'static str,
    /// XFS (layout lease, writable maps) rather than ext4 (read lease).
    pub(crate) xfs: bool,
    /// The block device it was made on.
    pub(crate) dev: String,
    /// The namespace's block device (the partition's disk).
    pub(crate) disk: String,
    /// Mount point.
    pub(crate) mnt: PathBuf,
    /// The namespace it lives on.
    pub(crate) nsid: u32,
    /// First and end 512-byte sector of the device on the namespace.
    pub(crate) sectors: (u64, u64),
}

impl Fs {
    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.mnt.join(name)
    }
}

/// Partitions of nsid 2, in 512-byte sectors: (start, length). The starts are 4 KiB
/// aligned (the file system block) and nothing rounder.
const PARTS: [(u64, u64); 3] = [
    (2048 + 8 * 37, 300 << 11),                                              // ext4
    (2048 + 8 * 37 + (300 << 11) + 8 * 13, 320 << 11),                       // XFS
    (2048 + 8 * 37 + (300 << 11) + 8 * 13 + (320 << 11) + 8 * 5, 128 << 11), // scratch ext4
];

/// The `files` suite.
pub fn files(kmod_path: &Path, h: &mut Harness) -> anyhow::Result<()> {
    if !kmod::loaded("homi") {
        // A short bound, so that fencing is quick (a module without the parameter
        // ignores it, and the fence check reports itself skipped).
        kmod::load(kmod_path, &format!("map_revoke_ms={REVOKE_MS}")).context("load homi.ko")?;
        LOADED_HERE.store(true, std::sync::atomic::Ordering::Release);
    }
    let mut fses = Vec::new();
    let ok = h.check("files: XFS on nvme0 nsid 1, ext4 and XFS on partitions of nsid 2 at odd offsets", || {
        fses = make_file_systems()?;
        Ok(())
    });
    if !ok {
        bail!("no file systems to test on");
    }
    for fs in &fses {
        layouts(h, fs);
    }
    // ext4 with 1 KiB blocks, smaller than a page, on the scratch partition (which the
    // refusals make again afterwards).
    let mut small = None;
    h.check("files: ext4 with 1 KiB blocks on partition 3 of nsid 2", || {
        let dev = scratch_dev()?;
        let mnt = Path::new(MNT).join("ext4-1k-part3");
        std::fs::create_dir_all(&mnt)?;
        sh(&format!("mkfs.ext4 -q -F -b 1024 {dev} && mount {dev} {}", mnt.display()))?;
        let end = PARTS[2].0 + PARTS[2].1;
        small = Some(Fs {
            label: "ext4-1k-part3",
            xfs: false,
            dev,
            disk: ns_path(0, 2)?,
            mnt,
            nsid: 2,
            sectors: (PARTS[2].0, end),
        });
        Ok(())
    });
    if let Some(fs) = small {
        layouts(h, &fs);
        h.check("files: ext4-1k-part3: unmounts", || sh(&format!("umount {}", fs.mnt.display())).map(drop));
    }
    // XFS on a namespace of 4096-byte LBAs, where the map's LBAs count 4 KiB.
    match ns_path(0, 3) {
        Err(_) => {
            h.skip("files: XFS on a namespace with 4096-byte LBAs", "no nsid 3 (boot with --namespaces 3 --last-ns-4k)")
        }
        Ok(dev) => {
            let mut big = None;
            h.check("files: XFS on nsid 3, whose LBAs are 4096 bytes", || {
                let name = dev.trim_start_matches("/dev/");
                let lbs = std::fs::read_to_string(format!("/sys/block/{name}/queue/logical_block_size"))?;
                ensure!(lbs.trim() == "4096", "nsid 3 has {}-byte LBAs", lbs.trim());
                let mnt = Path::new(MNT).join("xfs-4k-ns3");
                std::fs::create_dir_all(&mnt)?;
                sh(&format!("mkfs.xfs -f -q {dev} && mount {dev} {}", mnt.display()))?;
                let end: u64 = std::fs::read_to_string(format!("/sys/class/block/{name}/size"))?.trim().parse()?;
                big = Some(Fs {
                    label: "xfs-4k-ns3",
                    xfs: true,
                    dev: dev.clone(),
                    disk: dev.clone(),
                    mnt,
                    nsid: 3,
                    sectors: (0, end),
                });
                Ok(())
            });
            if let Some(fs) = big {
                layouts(h, &fs);
                crate::files_write::writes(h, &fs);
                h.check("files: xfs-4k-ns3: unmounts", || sh(&format!("umount {}", fs.mnt.display())).map(drop));
            }
        }
    }
    for fs in fses.iter().filter(|f| f.xfs) {
        crate::files_write::writes(h, fs);
    }
    crate::files_refuse::refusals(h, &fses);
    for fs in &fses {
        h.check(&format!("files: {}: unmounts and mounts again after the refusals", fs.label), || remount(fs));
    }
    crate::files_revoke::revoke(h, &fses);
    for fs in &fses {
        h.check(&format!("files: {}: unmounts and mounts again after the revocations", fs.label), || remount(fs));
    }
    for fs in fses.iter().filter(|f| f.label != "xfs-part2") {
        perf(h, fs);
    }
    h.check("files: file systems unmount (no reference left behind)", || {
        for fs in &fses {
            if let Some(late) = unmount(fs)? {
                println!("#   {}: busy at first, unmounted {late:?} later", fs.label);
            }
        }
        Ok(())
    });
    h.check("files: kernel log has no warning or splat", || {
        let bad = kmod::splats()?;
        ensure!(bad.is_empty(), "kernel log:\n{}", bad.join("\n"));
        Ok(())
    });
    Ok(())
}

/// The suite loaded homi.ko itself, with `map_revoke_ms` = [`REVOKE_MS`].
pub(crate) static LOADED_HERE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Unmounts `fs` and mounts it again: fails if anything, homi.ko included, still holds
/// a file on it after 10 s. A reference dropped late (after an acknowledged revocation
/// the module keeps the file until `map_revoke_ms` ran out) is only noted here: the
/// revocation checks test for that one.
pub(crate) fn remount(fs: &Fs) -> anyhow::Result<()> {
    if let Some(late) = unmount(fs)? {
        println!("#   {}: busy at first, unmounted {late:?} later", fs.label);
    }
    sh(&format!("mount -t {} {} {}", if fs.xfs { "xfs" } else { "ext4" }, fs.dev, fs.mnt.display()))?;
    Ok(())
}

/// Unmounts `fs`: `None` at once, else how much later (at most 10 s); fails with who
/// holds it.
pub(crate) fn unmount(fs: &Fs) -> anyhow::Result<Option<Duration>> {
    let Err(e) = sh(&format!("umount {}", fs.mnt.display())) else {
        return Ok(None);
    };
    let t = std::time::Instant::now();
    while t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(10));
        if sh(&format!("umount {}", fs.mnt.display())).is_ok() {
            return Ok(Some(t.elapsed()));
        }
    }
    let mut users = Vec::new();
    for p in std::fs::read_dir("/proc")?.flatten() {
        for fd in std::fs::read_dir(p.path().join("fd")).into_iter().flatten().flatten() {
            if let Ok(t) = std::fs::read_link(fd.path()) {
                if t.starts_with(&fs.mnt) {
                    users.push(format!("{} -> {}", fd.path().display(), t.display()));
                }
            }
        }
    }
    bail!(
        "{} for 10 s; open files under it in user space: {users:?} (none: the kernel holds a reference)",
        e.to_string().trim()
    )
}

/// Runs `cmd` with `sh -c`; fails with its output unless it exits 0.
pub(crate) fn sh(cmd: &str) -> anyhow::Result<String> {
    let o = Proc::new("sh").args(["-c", cmd]).output().with_context(|| format!("run {cmd}"))?;
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    ensure!(o.status.success(), "`{cmd}` failed ({}): {}{}", o.status, out, String::from_utf8_lossy(&o.stderr));
    Ok(out)
}

/// An MBR with `parts` (type Linux), written through the kernel, then re-read.
fn write_mbr(disk: &str, parts: &[(u64, u64)]) -> anyhow::Result<()> {
    let mut s = vec![0u8; 512];
    s[440..444].copy_from_slice(&0x484f_4d49u32.to_le_bytes());
    for (i, &(start, len)) in parts.iter().enumerate() {
        let e = 446 + 16 * i;
        s[e + 4] = 0x83;
        s[e + 8..e + 12].copy_from_slice(&u32::try_from(start)?.to_le_bytes());
        s[e + 12..e + 16].copy_from_slice(&u32::try_from(len)?.to_le_bytes());
    }
    s[510] = 0x55;
    s[511] = 0xaa;
    kernel_write_at(disk, 0, &s)?;
    let f = File::open(disk)?;
    // SAFETY: BLKRRPART takes no argument.
    let rc = unsafe { nix::libc::ioctl(f.as_raw_fd(), nix::request_code_none!(0x12, 95) as _) };
    Errno::result(rc).context("BLKRRPART")?;
    Ok(())
}

fn make_file_systems() -> anyhow::Result<Vec<Fs>> {
    let ns1 = ns_path(0, 1)?;
    let ns2 = ns_path(0, 2).context("the files suite needs two namespaces (cargo xtask vm --namespaces 2)")?;
    let sectors = |dev: &str| -> anyhow::Result<u64> {
        let name = dev.trim_start_matches("/dev/");
        Ok(std::fs::read_to_string(format!("/sys/class/block/{name}/size"))?.trim().parse()?)
    };
    write_mbr(&ns2, &PARTS)?;
    let part = |i: usize| format!("{ns2}p{i}");
    wait_for("the partitions of nsid 2", || (1..=3).all(|i| Path::new(&part(i)).exists()))?;
    for (i, &(start, _)) in PARTS.iter().enumerate() {
        let name = part(i + 1);
        let got: u64 = std::fs::read_to_string(format!("/sys/class/block/{}/start", name.trim_start_matches("/dev/")))?
            .trim()
            .parse()?;
        ensure!(got == start, "{name} starts at sector {got}, not {start}");
    }
    let mk = |label, xfs, dev: String, disk: &str, nsid, start: u64| -> anyhow::Result<Fs> {
        let mnt = Path::new(MNT).join(label);
        std::fs::create_dir_all(&mnt)?;
        if xfs {
            sh(&format!("mkfs.xfs -f -q {dev}"))?;
        } else {
            // 4 KiB blocks, as on any ext4 past 512 MiB (smaller ones default to 1 KiB,
            // which the scratch partition covers).
            sh(&format!("mkfs.ext4 -q -F -b 4096 {dev}"))?;
        }
        sh(&format!("mount -t {} {dev} {}", if xfs { "xfs" } else { "ext4" }, mnt.display()))?;
        let len = sectors(&dev)?;
        Ok(Fs { label, xfs, dev, disk: disk.to_owned(), mnt, nsid, sectors: (start, start + len) })
    };
    Ok(vec![
        mk("xfs-ns1", true, ns1.clone(), &ns1, 1, 0)?,
        mk("xfs-part2", true, part(2), &ns2, 2, PARTS[1].0)?,
        mk("ext4-part1", false, part(1), &ns2, 2, PARTS[0].0)?,
    ])
}

/// The scratch partition (nsid 2, partition 3), for file systems made per check.
pub(crate) fn scratch_dev() -> anyhow::Result<String> {
    Ok(format!("{}p3", ns_path(0, 2)?))
}

pub(crate) fn round_up(x: u64, to: u64) -> u64 {
    x.div_ceil(to) * to
}

/// Maps the whole of `f`.
pub(crate) fn map_whole(ctrl: &Controller, f: &File, write: bool) -> homi::Result<FileMap> {
    let size = f.metadata().map(|m| m.len()).unwrap_or(0);
    ctrl.map_file(f, 0, round_up(size, 4096).max(4096), write)
}

/// Reads `len` bytes at `off` of the mapped file through homi.
pub(crate) fn homi_read_file(
    qp: &mut QueuePair,
    buf: &DmaBuffer,
    map: &FileMap,
    off: u64,
    len: usize,
) -> homi::Result<Vec<u8>> {
    let mut out = vec![0u8; len];
    let mut done = 0;
    while done < len {
        // Whole blocks of any namespace (512 or 4096 bytes); the tail past the end of the
        // file comes back zeroed and is cut off.
        let n = round_up((len - done) as u64, 4096).min(buf.len() as u64) as usize;
        let got = qp.read_at(map, off + done as u64, buf, 0, n, TIMEOUT)?.min(len - done);
        if got == 0 {
            out.truncate(done);
            break;
        }
        buf.read_at(0, &mut out[done..done + got])?;
        done += got;
    }
    Ok(out)
}

/// Writes `data` at `off` of the mapped file through homi.
pub(crate) fn homi_write_file(
    qp: &mut QueuePair,
    buf: &DmaBuffer,
    map: &FileMap,
    off: u64,
    data: &[u8],
) -> homi::Result<()> {
    let mut done = 0;
    while done < data.len() {
        let n = (data.len() - done).min(buf.len());
        buf.write_at(0, &data[done..done + n])?;
        let got = qp.write_at(map, off + done as u64, buf, 0, n, TIMEOUT)?;
        done += got.max(1).min(n);
    }
    Ok(())
}

/// How one test file is made and what its map must show.
struct Shape {
    name: &'static str,
    /// Offsets and the kind of extent that must hold them.
    want: Vec<(u64, ExtentKind)>,
    /// At least this many mapped extents in homi's map.
    min_extents: usize,
    /// At least this many extents FIEMAP reports (`filefrag`, which merges extents
    /// that continue each other on disk even across holes).
    min_fiemap: usize,
}

pub(crate) fn write_file(path: &Path, size: u64, writes: &[(u64, usize)], seed: u64) -> anyhow::Result<()> {
    let f = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(path)?;
    f.set_len(size)?;
    for (i, &(at, len)) in writes.iter().enumerate() {
        f.write_all_at(&pattern(seed + i as u64, len), at)?;
    }
    f.sync_all()?;
    Ok(())
}

pub(crate) fn fallocate(f: &File, mode: i32, off: u64, len: u64) -> anyhow::Result<()> {
    // SAFETY: plain syscall on an fd we own.
    let rc = unsafe { nix::libc::fallocate(f.as_raw_fd(), mode, off as i64, len as i64) };
    Errno::result(rc).with_context(|| format!("fallocate(mode {mode:#x}, {off}, {len})"))?;
    Ok(())
}

/// Extents FIEMAP reports for `path` (`filefrag`).
fn filefrag(path: &Path) -> anyhow::Result<usize> {
    let out = sh(&format!("filefrag {}", path.display()))?;
    // "PATH: N extents found" (or "1 extent found").
    let n = out.rsplit(':').next().and_then(|s| s.split_whitespace().next()).and_then(|n| n.parse().ok());
    n.with_context(|| format!("filefrag said {out:?}"))
}

pub(crate) const MIB: u64 = 1 << 20;
const PAGE: u64 = 4096;

/// Makes the test files on `fs`; returns what each must look like.
fn make_files(fs: &Fs) -> anyhow::Result<Vec<Shape>> {
    use ExtentKind::*;
    let mut shapes = Vec::new();
    // Holes between data, and one to the end of the file.
    write_file(&fs.path("sparse"), 8 * MIB, &[(0, 16384), (MIB + PAGE, 4096), (5 * MIB, 65536)], 100)?;
    shapes.push(Shape {
        name: "sparse",
        want: vec![
            (0, Mapped),
            (MIB + PAGE, Mapped),
            (5 * MIB, Mapped),
            (512 << 10, Hole),
            (2 * MIB, Hole),
            (7 * MIB, Hole),
        ],
        min_extents: 3,
        min_fiemap: 1,
    });
    // Preallocated, partly written: unwritten extents around a written one.
    {
        let f = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(fs.path("unwritten"))?;
        fallocate(&f, 0, 0, 4 * MIB)?;
        f.write_all_at(&pattern(110, 65536), MIB)?;
        f.sync_all()?;
    }
    shapes.push(Shape {
        name: "unwritten",
        want: vec![(0, Unwritten), (MIB, Mapped), (2 * MIB, Unwritten)],
        min_extents: 1,
        min_fiemap: 1,
    });
    // Contiguous data with a partial last block.
    write_file(&fs.path("plain"), 3 * MIB + 1000, &[(0, (3 * MIB + 1000) as usize)], 120)?;
    shapes.push(Shape { name: "plain", want: vec![(0, Mapped), (3 * MIB, Mapped)], min_extents: 1, min_fiemap: 1 });
    // Every other block punched out: 256 one-block extents between 256 holes.
    {
        write_file(&fs.path("punched"), 2 * MIB, &[(0, 2 * MIB as usize)], 130)?;
        let f = OpenOptions::new().write(true).open(fs.path("punched"))?;
        for b in (1..512).step_by(2) {
            fallocate(&f, nix::libc::FALLOC_FL_PUNCH_HOLE | nix::libc::FALLOC_FL_KEEP_SIZE, b * PAGE, PAGE)?;
        }
        f.sync_all()?;
    }
    shapes.push(Shape {
        name: "punched",
        want: vec![(0, Mapped), (PAGE, Hole), (2 * MIB - 2 * PAGE, Mapped)],
        min_extents: 256,
        min_fiemap: 1,
    });
    // Two files appended in turn, one synchronous direct block at a time, so that their
    // blocks interleave on disk: many small extents and no hole.
    {
        // ext4 gives a file past `mb_stream_req` blocks a preallocation of its own,
        // which keeps it contiguous; below it, files share the locality group's.
        let knob = format!("/sys/fs/ext4/{}/mb_stream_req", fs.dev.trim_start_matches("/dev/"));
        let saved = (!fs.xfs).then(|| std::fs::read_to_string(&knob)).transpose()?;
        if saved.is_some() {
            std::fs::write(&knob, "4096")?;
        }
        for name in ["interleaved", "interleaved-other"] {
            File::create(fs.path(name))?;
        }
        let mut blk = Aligned::new(4096);
        for i in 0..256u64 {
            for (name, seed) in [("interleaved", 140), ("interleaved-other", 1000)] {
                let f = OpenOptions::new()
                    .write(true)
                    .custom_flags(nix::libc::O_DIRECT | nix::libc::O_DSYNC)
                    .open(fs.path(name))?;
                blk.as_mut_slice().copy_from_slice(&pattern(seed + i, 4096));
                f.write_all_at(blk.as_slice(), i * PAGE)?;
            }
        }
        if let Some(v) = saved {
            std::fs::write(&knob, v.trim())?;
        }
    }
    shapes.push(Shape {
        name: "interleaved",
        want: vec![(0, Mapped), (MIB - PAGE, Mapped)],
        min_extents: 32,
        min_fiemap: 32,
    });
    Ok(shapes)
}

/// Reads `len` bytes at 512-byte sector `at` of `dev` with O_DIRECT, opened read-only:
/// a block device with a mounted file system cannot be opened for writing.
fn disk_read(dev: &str, at: u64, len: usize) -> anyhow::Result<Vec<u8>> {
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_DIRECT)
        .open(dev)
        .with_context(|| format!("open {dev} O_RDONLY|O_DIRECT"))?;
    let mut buf = Aligned::new(round_up(len as u64, 4096) as usize);
    f.read_exact_at(&mut buf.as_mut_slice()[..len], at * 512).context("O_DIRECT read")?;
    Ok(buf.as_slice()[..len].to_vec())
}

/// The extent that holds `off`.
fn extent_at(map: &FileMap, off: u64) -> Option<&homi::Extent> {
    map.extents().iter().find(|e| e.file_offset <= off && off < e.file_offset + e.len)
}

/// Whether the kernel calls `[off, off + len)` of `f` a hole (SEEK_DATA skips it).
fn kernel_hole(f: &File, off: u64, len: u64) -> bool {
    // SAFETY: plain syscall.
    let at = unsafe { nix::libc::lseek(f.as_raw_fd(), off as i64, nix::libc::SEEK_DATA) };
    at < 0 || at as u64 >= off + len
}

/// The map of `path` agrees with the kernel: extents tile the file from 0 with no gap,
/// sit inside the file system's device, mapped ones hold on disk (read through the
/// kernel's block device) what the file holds, and holes and unwritten ones read as
/// zeros.
fn check_extents(fs: &Fs, path: &Path, map: &FileMap, data: &[u8], shape: &Shape) -> anyhow::Result<()> {
    let f = File::open(path)?;
    let size = data.len() as u64;
    ensure!(map.file_size() == size, "map says file size {}, the kernel {size}", map.file_size());
    ensure!(map.nsid() == fs.nsid, "map on nsid {}, the file system is on {}", map.nsid(), fs.nsid);
    let shift = map.lba_shift();
    let mut next = 0u64;
    let mut mapped = 0;
    for e in map.extents() {
        ensure!(e.file_offset == next, "extent at {} after one ending at {next}: {:?}", e.file_offset, map.extents());
        ensure!(e.len > 0, "empty extent {e:?}");
        next = e.file_offset + e.len;
        let lo = e.file_offset.min(size) as usize;
        let hi = next.min(size) as usize;
        match e.kind {
            ExtentKind::Mapped => {
                mapped += 1;
                ensure!(e.nsid == fs.nsid, "extent {e:?} on another namespace");
                let (first, end) = ((e.lba << shift) / 512, ((e.lba << shift) + e.len) / 512);
                ensure!(
                    first >= fs.sectors.0 && end <= fs.sectors.1,
                    "extent {e:?} (sectors {first}..{end}) outside {} (sectors {}..{})",
                    fs.dev,
                    fs.sectors.0,
                    fs.sectors.1
                );
                ensure!(!kernel_hole(&f, e.file_offset, e.len), "mapped extent {e:?}, but the kernel sees a hole");
                let disk = disk_read(&fs.disk, first, round_up(e.len, 512) as usize)?;
                ensure!(
                    disk[..hi - lo] == data[lo..hi],
                    "the namespace at LBA {} holds other data than the file at {} ({} bytes)",
                    e.lba,
                    e.file_offset,
                    e.len
                );
            }
            ExtentKind::Hole | ExtentKind::Unwritten => {
                ensure!(data[lo..hi].iter().all(|&b| b == 0), "{e:?} reads non-zero through the kernel");
                if matches!(e.kind, ExtentKind::Hole) {
                    ensure!(kernel_hole(&f, e.file_offset, e.len), "hole {e:?}, but the kernel has data there");
                }
            }
        }
    }
    ensure!(next >= size, "extents end at {next}, the file at {size}");
    ensure!(next <= round_up(size, u64::from(map.block_size())), "extents run to {next}, past the file's last block");
    for &(off, ref kind) in &shape.want {
        let e = extent_at(map, off).with_context(|| format!("no extent holds offset {off}"))?;
        // ext4 maps come from bmap, which knows no unwritten blocks: they are holes
        // there, which read as zeros all the same.
        let ok = e.kind == *kind || (!fs.xfs && *kind == ExtentKind::Unwritten && e.kind == ExtentKind::Hole);
        ensure!(ok, "offset {off}: {e:?}, expected {kind:?}");
    }
    ensure!(mapped >= shape.min_extents, "{mapped} mapped extents, expected at least {}", shape.min_extents);
    Ok(())
}

/// The path to the `homi` CLI, next to this binary.
pub(crate) fn homi_cli() -> anyhow::Result<PathBuf> {
    Ok(std::env::current_exe()?.with_file_name("homi"))
}

fn layouts(h: &mut Harness, fs: &Fs) {
    let mut shapes = Vec::new();
    let label = fs.label;
    if !h.check(&format!("files: {label}: sparse, unwritten, punched and interleaved files made"), || {
        shapes = make_files(fs)?;
        for s in &shapes {
            let n = filefrag(&fs.path(s.name))?;
            ensure!(n >= s.min_fiemap, "{}: filefrag finds {n} extents, expected at least {}", s.name, s.min_fiemap);
            println!("# {label}: {}: {n} extents (filefrag)", s.name);
        }
        Ok(())
    }) {
        return;
    }
    h.check(&format!("files: {label}: a partial map covers its range; I/O outside it is refused"), || {
        let path = fs.path("plain");
        let ctrl = open_live()?;
        let mut qp = ctrl.create_qpair(8)?;
        let buf = ctrl.alloc(65536)?;
        let f = File::open(&path)?;
        let map = ctrl.map_file(&f, MIB, 2 * MIB, false)?;
        let (lo, hi) =
            (map.extents().first().map_or(0, |e| e.file_offset), map.extents().last().map_or(0, |e| e.end()));
        let inside = homi_read_file(&mut qp, &buf, &map, MIB, 65536);
        let outside = qp.read_at(&map, 3 * MIB, &buf, 0, 4096, TIMEOUT);
        let before = qp.read_at(&map, 0, &buf, 0, 4096, TIMEOUT);
        map.unmap()?;
        ensure!(lo <= MIB && hi >= 3 * MIB, "extents cover {lo}..{hi}, not 1 MiB..3 MiB");
        ensure!(inside? == std::fs::read(&path)?[MIB as usize..][..65536], "the partial map reads other data");
        ensure!(matches!(outside, Err(homi::Error::OutsideMap { .. })), "a read past the range: {outside:?}");
        ensure!(matches!(before, Err(homi::Error::OutsideMap { .. })), "a read before the range: {before:?}");
        // A range past the end is clipped to the file's last block.
        let map = ctrl.map_file(&f, 0, 1 << 30, false)?;
        let end = map.extents().last().map_or(0, |e| e.end());
        let map_bs = map.block_size();
        map.unmap()?;
        let bs = u64::from(map_bs);
        ensure!(end == round_up(3 * MIB + 1000, bs), "a map asked for 1 GiB ends at {end} (block size {bs})");
        Ok(())
    });
    h.check(&format!("files: {label}: a reply cut short by capacity covers exactly its extents"), || {
        let ctrl = open_live()?;
        let f = File::open(fs.path("punched"))?;
        let mut ext = vec![HomiExtent::default(); 4];
        let mut m = HomiMapFile {
            fd: f.as_raw_fd(),
            len: 2 * MIB,
            extents: ext.as_mut_ptr() as u64,
            capacity: 4,
            ..Default::default()
        };
        raw(ctrl.homi_fd(), HOMI_IOCTL_MAP_FILE, &mut m).context("MAP_FILE")?;
        raw(ctrl.homi_fd(), HOMI_IOCTL_UNMAP_FILE, &mut HomiId { id: m.id, flags: 0 }).context("UNMAP_FILE")?;
        ensure!(m.count == 4, "{} extents in an array of 4", m.count);
        let covered: u64 = ext.iter().map(|e| e.blocks << m.lba_shift).sum();
        ensure!(m.len == covered && m.len < 2 * MIB, "reply len {} for extents covering {covered}", m.len);
        ensure!(ext[0].file_offset == 0 && ext[1].kind == HOMI_EXTENT_HOLE, "extents {ext:?}");
        Ok(())
    });
    let Ok(cli) = homi_cli() else { return };
    for s in &shapes {
        let path = fs.path(s.name);
        h.check(&format!("files: {label}: {}: homi cat is byte-identical to the kernel's read (cmp)", s.name), || {
            let out = Path::new("/run/tmp").join(format!("cat-{label}-{}", s.name));
            sh(&format!("{} cat {} > {}", cli.display(), path.display(), out.display()))?;
            sh(&format!("cmp {} {}", out.display(), path.display()))?;
            std::fs::remove_file(&out)?;
            Ok(())
        });
        h.check(
            &format!("files: {label}: {}: the library's extents agree with the kernel, reads match", s.name),
            || {
                let data = std::fs::read(&path)?;
                let ctrl = open_live()?;
                let mut qp = ctrl.create_qpair(32)?;
                let buf = ctrl.alloc(1 << 20)?;
                let f = File::open(&path)?;
                let map = map_whole(&ctrl, &f, false).context("map_file")?;
                let checked = check_extents(fs, &path, &map, &data, s);
                let got = homi_read_file(&mut qp, &buf, &map, 0, data.len());
                map.unmap().context("unmap")?;
                checked?;
                let got = got.context("read through homi")?;
                ensure!(got.len() == data.len(), "homi read {} bytes of {}", got.len(), data.len());
                if let Some(i) = got.iter().zip(&data).position(|(a, b)| a != b) {
                    bail!("homi reads other data than the kernel from offset {i} on");
                }
                Ok(())
            },
        );
    }
    h.check(&format!("files: {label}: homi map --json lists the library's extents for every file"), || {
        let ctrl = open_live()?;
        for sh_ in &shapes {
            let path = fs.path(sh_.name);
            let out = Proc::new(&cli).args(["map", "--json"]).arg(&path).output()?;
            ensure!(out.status.success(), "{}: homi map failed: {}", sh_.name, String::from_utf8_lossy(&out.stderr));
            let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
            let map = map_whole(&ctrl, &File::open(&path)?, false)?;
            let lib: Vec<(u64, u64, &str, u64)> = map
                .extents()
                .iter()
                .map(|e| {
                    let kind = match e.kind {
                        ExtentKind::Mapped => "mapped",
                        ExtentKind::Unwritten => "unwritten",
                        ExtentKind::Hole => "hole",
                    };
                    (e.file_offset, e.len, kind, e.lba)
                })
                .collect();
            map.unmap()?;
            let cli_ext: Vec<(u64, u64, &str, u64)> = v["extents"]
                .as_array()
                .context("no extents array")?
                .iter()
                .map(|e| {
                    let n = |k: &str| e[k].as_u64().unwrap_or(u64::MAX);
                    (n("file_offset"), n("len"), e["kind"].as_str().unwrap_or("?"), n("lba"))
                })
                .collect();
            ensure!(cli_ext == lib, "{}: homi map says {cli_ext:?}, the library {lib:?}", sh_.name);
            ensure!(
                v["file_size"].as_u64() == Some(std::fs::metadata(&path)?.len()),
                "{}: file_size {}",
                sh_.name,
                v["file_size"]
            );
        }
        Ok(())
    });
    h.check(&format!("files: {label}: nothing held after the maps"), ensure_nothing_held_files);
    h.check(&format!("files: {label}: unmounts and mounts again after the maps (no file reference kept)"), || {
        remount(fs)
    });
}

/// Nothing held on the controller, and no lease on any file.
pub(crate) fn ensure_nothing_held_files() -> anyhow::Result<()> {
    ensure_nothing_held()?;
    let locks = std::fs::read_to_string("/proc/locks")?;
    let leases: Vec<&str> = locks.lines().filter(|l| l.contains("LEASE") || l.contains("LAYOUT")).collect();
    ensure!(leases.is_empty(), "leases left (/proc/locks):\n{}", leases.join("\n"));
    Ok(())
}

fn perf(h: &mut Harness, fs: &Fs) {
    h.check(
        &format!("files: {}: homi perf --file prints homi, io_uring and passthrough rows with IOPS", fs.label),
        || {
            let path = fs.path("perf");
            write_file(&path, 16 * MIB, &[(0, 16 * MIB as usize)], 400)?;
            let out =
                Proc::new(homi_cli()?).args(["perf", "--qd", "8", "--ios", "2000", "--file"]).arg(&path).output()?;
            let text = String::from_utf8_lossy(&out.stdout);
            ensure!(out.status.success(), "homi perf --file failed: {}{}", text, String::from_utf8_lossy(&out.stderr));
            println!("{}", text.lines().map(|l| format!("#   {l}")).collect::<Vec<_>>().join("\n"));
            for row in ["homi", "io_uring", "passthru"] {
                let line = text
                    .lines()
                    .find(|l| l.split_whitespace().next() == Some(row))
                    .with_context(|| format!("no {row} row in:\n{text}"))?;
                let iops = line
                    .split_whitespace()
                    .skip(1)
                    .find_map(|w| w.replace(',', "").parse::<f64>().ok())
                    .with_context(|| format!("no number in the {row} row: {line}"))?;
                ensure!(iops > 0.0, "{row}: IOPS {iops}");
            }
            Ok(())
        },
    );
}

/// `homi-vmtest helper files-holder PATH`: maps the file and a queue pair, says
/// `mapped`, and waits to be killed.
pub fn helper(path: &str) -> anyhow::Result<()> {
    let ctrl = Controller::open(NVME)?;
    let qp = ctrl.create_qpair(16)?;
    let f = File::open(path)?;
    let map = map_whole(&ctrl, &f, false)?;
    println!("mapped {}", map.id());
    std::io::stdout().flush()?;
    std::thread::sleep(Duration::from_secs(600));
    drop((qp, map));
    Ok(())
}
