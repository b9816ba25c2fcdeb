//! Writes through a writable file map (XFS): what homi wrote is what the kernel reads
//! after unmap, even from pages it had cached; holes and unwritten extents are never
//! written; a kernel write revokes the map and both writes survive; `homi write-file`.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::process::Command as Proc;

use anyhow::{bail, ensure, Context};
use nix::errno::Errno;

use crate::common::*;
use crate::files::*;
use crate::harness::Harness;

/// Whether every page of `[off, off + len)` of `f` is in the page cache.
fn cached(f: &File, off: u64, len: usize) -> anyhow::Result<bool> {
    // SAFETY: a fresh shared read-only mapping of a file we hold; unmapped below.
    let addr = unsafe {
        nix::libc::mmap(
            std::ptr::null_mut(),
            len,
            nix::libc::PROT_READ,
            nix::libc::MAP_SHARED,
            f.as_raw_fd(),
            off as i64,
        )
    };
    ensure!(addr != nix::libc::MAP_FAILED, "mmap: {}", std::io::Error::last_os_error());
    let mut vec = vec![0u8; len / 4096];
    // SAFETY: `vec` has one byte per page of the mapping.
    let rc = unsafe { nix::libc::mincore(addr, len, vec.as_mut_ptr()) };
    // SAFETY: the mapping made above.
    unsafe { nix::libc::munmap(addr, len) };
    Errno::result(rc).context("mincore")?;
    Ok(vec.iter().all(|&b| b & 1 == 1))
}

pub(crate) fn writes(h: &mut Harness, fs: &Fs) {
    let label = fs.label;
    h.check(
        &format!("files: {label}: homi writes through a writable map; the page cache shows them after unmap"),
        || {
            let path = fs.path("written");
            let old = pattern(200, MIB as usize);
            write_file(&path, MIB, &[(0, MIB as usize)], 200)?;
            let f = OpenOptions::new().read(true).write(true).open(&path)?;
            let mut seen = vec![0u8; MIB as usize];
            f.read_exact_at(&mut seen, 0)?;
            ensure!(seen == old, "the kernel reads other data than was written");
            let ctrl = open_live()?;
            let mut qp = ctrl.create_qpair(32)?;
            let buf = ctrl.alloc(256 << 10)?;
            let map = map_whole(&ctrl, &f, true).context("writable map_file")?;
            ensure!(map.writable(), "map not writable");
            ensure!(
                matches!(map.lease(), homi::Lease::Layout),
                "XFS map kept by {:?}, not a layout lease",
                map.lease()
            );
            // Reading does not break a layout: the range is cached again, with the old data.
            f.read_exact_at(&mut seen, 0)?;
            ensure!(seen == old, "buffered read while mapped differs");
            ensure!(cached(&f, 0, MIB as usize)?, "premise: the file is not in the page cache");
            let new = pattern(201, 256 << 10);
            homi_write_file(&mut qp, &buf, &map, 128 << 10, &new).context("write_at")?;
            ensure!(matches!(map.state(), homi::MapState::Live), "map {:?} after the write", map.state());
            map.unmap().context("unmap")?;
            let mut want = old.clone();
            want[128 << 10..384 << 10].copy_from_slice(&new);
            f.read_exact_at(&mut seen, 0)?;
            if let Some(i) = seen.iter().zip(&want).position(|(a, b)| a != b) {
                bail!(
                    "after unmap, a buffered read returns stale data from offset {i} (the page cache was not dropped)"
                );
            }
            let direct = OpenOptions::new().read(true).custom_flags(nix::libc::O_DIRECT).open(&path)?;
            let mut a = Aligned::new(MIB as usize);
            direct.read_exact_at(a.as_mut_slice(), 0)?;
            ensure!(a.as_slice() == want.as_slice(), "an O_DIRECT read differs from what homi wrote");
            Ok(())
        },
    );
    h.check(
        &format!("files: {label}: writes into holes and unwritten extents are refused, the file unchanged"),
        || {
            let path = fs.path("prealloc");
            let f = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path)?;
            fallocate(&f, 0, 0, MIB)?;
            f.write_all_at(&pattern(210, 65536), 0)?;
            f.set_len(4 * MIB)?;
            f.sync_all()?;
            let ctrl = open_live()?;
            let mut qp = ctrl.create_qpair(8)?;
            let buf = ctrl.alloc(65536)?;
            let map = map_whole(&ctrl, &f, true)?;
            let mut res = Vec::new();
            for off in [512 << 10, 2 * MIB] {
                buf.write_at(0, &[0xa5; 4096])?;
                res.push((off, qp.write_at(&map, off, &buf, 0, 4096, TIMEOUT)));
            }
            map.unmap()?;
            for (off, r) in res {
                ensure!(r.is_err(), "a write at {off} (unwritten or hole) was accepted: {r:?}");
            }
            let mut got = vec![0u8; 4 * MIB as usize];
            f.read_exact_at(&mut got, 0)?;
            ensure!(got[65536..].iter().all(|&b| b == 0), "the unwritten or hole range changed");
            Ok(())
        },
    );
    h.check(
        &format!("files: {label}: homi write-file --pattern lands in the file, seen by a buffered read after it exits"),
        || {
            let path = fs.path("cli-written");
            write_file(&path, MIB, &[(0, MIB as usize)], 220)?;
            let mut want = std::fs::read(&path)?; // cached now
            let out = Proc::new(homi_cli()?)
                .args(["write-file", "--offset", "65536", "--len", "131072", "--pattern", "0x5a"])
                .arg(&path)
                .output()?;
            ensure!(out.status.success(), "homi write-file failed: {}", String::from_utf8_lossy(&out.stderr));
            want[65536..196608].fill(0x5a);
            let got = std::fs::read(&path)?;
            if let Some(i) = got.iter().zip(&want).position(|(a, b)| a != b) {
                bail!("the kernel reads other data than homi write-file wrote, from offset {i}");
            }
            Ok(())
        },
    );
    h.check(&format!("files: {label}: a writable map revoked by a kernel write: both writes survive"), || {
        let path = fs.path("shared-writes");
        write_file(&path, MIB, &[(0, MIB as usize)], 230)?;
        let f = OpenOptions::new().read(true).write(true).open(&path)?;
        let ctrl = open_live()?;
        let mut qp = ctrl.create_qpair(8)?;
        let buf = ctrl.alloc(65536)?;
        let map = map_whole(&ctrl, &f, true)?;
        let ours = pattern(231, 65536);
        homi_write_file(&mut qp, &buf, &map, 0, &ours)?;
        let theirs = pattern(232, 4096);
        let (p, t) = (path.clone(), theirs.clone());
        let writer = std::thread::spawn(move || -> std::io::Result<()> {
            OpenOptions::new().write(true).open(&p)?.write_all_at(&t, 512 << 10)
        });
        let revoked = wait_for("the kernel write to revoke the writable map", || map.state() != homi::MapState::Live);
        let state = map.state();
        // The acknowledgement, also when the wait failed: the writer must not hang.
        map.unmap()?;
        writer.join().map_err(|_| anyhow::anyhow!("writer panicked"))??;
        revoked?;
        ensure!(state == homi::MapState::Revoked, "map {state:?}, not revoked");
        let mut want = pattern(230, MIB as usize);
        want[..65536].copy_from_slice(&ours);
        want[512 << 10..(512 << 10) + 4096].copy_from_slice(&theirs);
        let got = std::fs::read(&path)?;
        if let Some(i) = got.iter().zip(&want).position(|(a, b)| a != b) {
            bail!("the file differs from both writes from offset {i}");
        }
        Ok(())
    });
    h.check(&format!("files: {label}: nothing held after the writes"), ensure_nothing_held_files);
}
