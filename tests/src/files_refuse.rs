//! Every refusal of MAP_FILE and UNMAP_FILE, each with its errno (through the raw
//! ioctl) and the reason the library names, and nothing held after any of them.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::Command as Proc;

use anyhow::{bail, ensure, Context};
use homi::uapi::*;
use homi::Controller;
use nix::errno::Errno;

use crate::common::*;
use crate::files::*;
use crate::harness::Harness;
use crate::kmod;

/// MAP_FILE through the raw ioctl, for input the library would never send.
pub(crate) fn raw_map(ctrl: &Controller, fd: i32, offset: u64, len: u64, flags: u32) -> Result<HomiMapFile, Errno> {
    let mut ext = vec![HomiExtent::default(); 64];
    let mut m =
        HomiMapFile { fd, flags, offset, len, extents: ext.as_mut_ptr() as u64, capacity: 64, ..Default::default() };
    raw(ctrl.homi_fd(), HOMI_IOCTL_MAP_FILE, &mut m).map(|()| m)
}

/// Expects MAP_FILE of `file` to fail with `want`, through the raw ioctl, and through
/// the library with the reason that errno names (its message is printed); a map made
/// anyway is let go.
fn refused(ctrl: &Controller, what: &str, file: &File, flags: u32, want: Errno) -> anyhow::Result<()> {
    refused_with(ctrl, what, |c| raw_map(c, file.as_raw_fd(), 0, 65536, flags), want)?;
    writes_allowed(what, file)?;
    let write = flags & HOMI_MAP_WRITE != 0;
    match ctrl.map_file(file, 0, 65536, write) {
        Err(e @ homi::Error::MapRefused { .. }) => {
            let homi::Error::MapRefused { reason, .. } = &e else { unreachable!() };
            use homi::MapRefusal::*;
            let named = matches!(
                (want, reason),
                (Errno::EXDEV, OtherDevice { .. })
                    | (Errno::ETXTBSY, SharedBlocks)
                    | (Errno::EOPNOTSUPP, WriteUnsupported | Unsupported)
                    | (Errno::EINVAL, Unmappable)
                    | (Errno::EAGAIN, Busy)
                    | (Errno::EBADF, BadFile)
            );
            ensure!(named, "{what}: the library names another reason for {want}: {e}");
            println!("#   {what}: {e}");
            Ok(())
        }
        Err(e) => bail!("{what}: the library reports {e}, not a refusal"),
        Ok(m) => {
            m.unmap()?;
            bail!("{what}: the library mapped the file")
        }
    }
}

/// A refused map leaves no write denial behind (ext4 maps deny writes): reopening the
/// file for writing fails, if at all, for another reason than `ETXTBSY`.
fn writes_allowed(what: &str, file: &File) -> anyhow::Result<()> {
    let again = OpenOptions::new().write(true).open(format!("/proc/self/fd/{}", file.as_raw_fd()));
    if let Err(e) = again {
        ensure!(
            e.raw_os_error() != Some(nix::libc::ETXTBSY),
            "{what}: writes to the file stay denied after the refusal"
        );
    }
    Ok(())
}

fn refused_with(
    ctrl: &Controller,
    what: &str,
    call: impl FnOnce(&Controller) -> Result<HomiMapFile, Errno>,
    want: Errno,
) -> anyhow::Result<()> {
    match call(ctrl) {
        Err(e) if e == want => Ok(()),
        Err(e) => bail!("{what}: expected {want}, got {e}"),
        Ok(m) => {
            let _ = raw(ctrl.homi_fd(), HOMI_IOCTL_UNMAP_FILE, &mut HomiId { id: m.id, flags: 0 });
            bail!("{what}: expected {want}, but the file was mapped ({} extents)", m.count)
        }
    }
}

/// Kernel log lines from homi after the first `skip` lines.
fn homi_log_since(skip: usize) -> Vec<String> {
    let log = kmod::kernel_log().unwrap_or_default();
    log.lines().skip(skip).filter(|l| l.contains("homi")).map(str::to_owned).collect()
}

fn refusal(h: &mut Harness, name: &str, f: impl FnOnce(&Controller) -> anyhow::Result<()>) {
    h.check(&format!("files: refused: {name}; nothing held after"), || {
        let ctrl = open_live()?;
        let before = kmod::kernel_log().unwrap_or_default().lines().count();
        let r = f(&ctrl);
        for l in homi_log_since(before) {
            println!("#   log: {l}");
        }
        drop(ctrl);
        r?;
        ensure_nothing_held_files()
    });
}

/// An FS_IOC_* number: `_IOC(dir, 'f', nr, size)`.
fn fs_ioc(dir: u32, nr: u32, size: usize) -> nix::libc::c_ulong {
    ((dir << 30) | ((size as u32) << 16) | (u32::from(b'f') << 8) | nr) as nix::libc::c_ulong
}

fn inode_flags(f: &File) -> anyhow::Result<u64> {
    let mut flags: nix::libc::c_long = 0;
    // SAFETY: FS_IOC_GETFLAGS writes one long.
    let rc = unsafe { nix::libc::ioctl(f.as_raw_fd(), fs_ioc(2, 1, 8) as _, &mut flags) };
    Errno::result(rc).context("FS_IOC_GETFLAGS")?;
    Ok(flags as u64)
}

/// Adds a v2 fscrypt key to the file system of `root` and sets a v2 policy on the
/// empty directory `dir`.
fn encrypt_dir(root: &Path, dir: &Path) -> anyhow::Result<()> {
    // struct fscrypt_add_key_arg: key_spec (type, reserved, 32-byte union), raw_size,
    // key_id, 8 reserved words, then the raw key.
    let mut arg = vec![0u8; 80 + 64];
    arg[0..4].copy_from_slice(&2u32.to_le_bytes()); // FSCRYPT_KEY_SPEC_TYPE_IDENTIFIER
    arg[40..44].copy_from_slice(&64u32.to_le_bytes());
    for (i, b) in arg[80..].iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(37).wrapping_add(11);
    }
    let r = File::open(root)?;
    // SAFETY: FS_IOC_ADD_ENCRYPTION_KEY = _IOWR('f', 23, struct fscrypt_add_key_arg)
    // reads the struct and the raw key after it, and writes the identifier.
    let rc = unsafe { nix::libc::ioctl(r.as_raw_fd(), fs_ioc(3, 23, 80) as _, arg.as_mut_ptr()) };
    Errno::result(rc).context("FS_IOC_ADD_ENCRYPTION_KEY")?;
    // struct fscrypt_policy_v2: version 2, AES-256-XTS contents, AES-256-CTS names,
    // flags 0, default data unit, 3 reserved bytes, the key identifier.
    let mut pol = [0u8; 24];
    pol[..4].copy_from_slice(&[2, 1, 4, 0]);
    pol[8..24].copy_from_slice(&arg[8..24]);
    let d = File::open(dir)?;
    // SAFETY: FS_IOC_SET_ENCRYPTION_POLICY = _IOR('f', 19, struct fscrypt_policy_v1)
    // reads a policy whose first byte says its version.
    let rc = unsafe { nix::libc::ioctl(d.as_raw_fd(), fs_ioc(2, 19, 12) as _, pol.as_ptr()) };
    Errno::result(rc).context("FS_IOC_SET_ENCRYPTION_POLICY")?;
    Ok(())
}

pub(crate) fn refusals(h: &mut Harness, fses: &[Fs]) {
    let xfs = &fses[0];
    let ext4 = fses.iter().find(|f| !f.xfs).expect("an ext4 file system");
    // A plain file on each, to map.
    let _ = write_file(&xfs.path("r-plain"), MIB, &[(0, MIB as usize)], 300);
    let _ = write_file(&ext4.path("r-plain"), MIB, &[(0, MIB as usize)], 301);

    refusal(h, "a file on the 9p root (not NVMe): EXDEV", |c| {
        let f = File::open(std::env::current_exe()?)?;
        refused(c, "9p file", &f, 0, Errno::EXDEV)
    });
    refusal(h, "a file on tmpfs: EXDEV", |c| {
        let p = Path::new("/run/tmp/homi-tmpfs-file");
        std::fs::write(p, pattern(302, 65536))?;
        let f = File::open(p)?;
        refused(c, "tmpfs file", &f, 0, Errno::EXDEV)
    });
    refusal(h, "a file on a loop device stacked on a file of the NVMe XFS: EXDEV", |c| {
        let img = xfs.path("loop.img");
        File::create(&img)?.set_len(64 * MIB)?;
        let dev = sh(&format!("losetup -f --show {}", img.display()))?.trim().to_owned();
        let mnt = Path::new(MNT).join("loop");
        std::fs::create_dir_all(&mnt)?;
        let r = (|| {
            sh(&format!("mkfs.ext4 -q -F {dev} && mount {dev} {}", mnt.display()))?;
            std::fs::write(mnt.join("f"), pattern(303, 65536))?;
            let f = File::open(mnt.join("f"))?;
            let r = refused(c, "file on loop", &f, 0, Errno::EXDEV);
            drop(f);
            sh(&format!("umount {}", mnt.display()))?;
            r
        })();
        sh(&format!("losetup -d {dev}"))?;
        std::fs::remove_file(&img)?;
        r
    });
    refusal(h, "an XFS file that shares blocks (reflink), and its source: ETXTBSY", |c| {
        let (src, dst) = (xfs.path("r-src"), xfs.path("r-clone"));
        write_file(&src, MIB, &[(0, MIB as usize)], 304)?;
        sh(&format!("xfs_io -f -c 'reflink {} 0 0 1m' {}", src.display(), dst.display()))?;
        ensure!(std::fs::read(&src)? == std::fs::read(&dst)?, "premise: the clone differs");
        let f = File::open(&dst)?;
        refused(c, "reflinked file", &f, 0, Errno::ETXTBSY)?;
        let f = File::open(&src)?;
        refused(c, "reflink source", &f, 0, Errno::ETXTBSY)
    });
    refusal(h, "a writable map on ext4 (fd read-write): EOPNOTSUPP", |c| {
        let f = OpenOptions::new().read(true).write(true).open(ext4.path("r-plain"))?;
        refused(c, "ext4 HOMI_MAP_WRITE", &f, HOMI_MAP_WRITE, Errno::EOPNOTSUPP)
    });
    h.check("files: refused: homi write-file on ext4 fails, names the reason, and leaves the file unchanged", || {
        let path = ext4.path("r-plain");
        let before = std::fs::read(&path)?;
        let out = Proc::new(homi_cli()?)
            .args(["write-file", "--offset", "0", "--len", "4096", "--pattern", "0x5a"])
            .arg(&path)
            .output()?;
        let err = String::from_utf8_lossy(&out.stderr);
        println!("#   homi write-file on ext4: {}", err.trim());
        ensure!(!out.status.success(), "homi write-file on ext4 succeeded");
        ensure!(err.contains("XFS") || err.contains("read-only"), "the message names no reason: {err}");
        ensure!(std::fs::read(&path)? == before, "the file changed");
        ensure_nothing_held_files()
    });
    refusal(h, "a writable map of a read-only fd, any map of a write-only fd: EBADF", |c| {
        let f = File::open(xfs.path("r-plain"))?;
        refused(c, "HOMI_MAP_WRITE on an O_RDONLY fd", &f, HOMI_MAP_WRITE, Errno::EBADF)?;
        let f = OpenOptions::new().write(true).open(xfs.path("r-plain"))?;
        refused_with(c, "an O_WRONLY fd", |c| raw_map(c, f.as_raw_fd(), 0, 65536, 0), Errno::EBADF)
    });
    refusal(h, "an ext4 file someone has open for writing: EAGAIN", |c| {
        let w = OpenOptions::new().write(true).open(ext4.path("r-plain"))?;
        let f = File::open(ext4.path("r-plain"))?;
        let r = refused(c, "ext4 file open for writing", &f, 0, Errno::EAGAIN);
        drop(w);
        r
    });
    refusal(h, "an ext4 fd opened read-write: EINVAL", |c| {
        let f = OpenOptions::new().read(true).write(true).open(ext4.path("r-plain"))?;
        refused(c, "ext4 O_RDWR fd", &f, 0, Errno::EINVAL)
    });
    refusal(h, "an ext4 file with data journalling (chattr +j): EOPNOTSUPP", |c| {
        let p = ext4.path("r-journalled");
        write_file(&p, MIB, &[(0, MIB as usize)], 305)?;
        sh(&format!("chattr +j {}", p.display()))?;
        let f = File::open(&p)?;
        refused(c, "chattr +j file", &f, 0, Errno::EOPNOTSUPP)
    });
    // ext4 with encryption and inline data on the scratch partition, then the same
    // file system mounted with data=journal.
    let scratch = Path::new(MNT).join("scratch");
    let made = h.check("files: scratch ext4 with encrypt and inline_data made and mounted", || {
        let dev = scratch_dev()?;
        std::fs::create_dir_all(&scratch)?;
        sh(&format!("mkfs.ext4 -q -F -O encrypt,inline_data {dev} && mount {dev} {}", scratch.display()))?;
        Ok(())
    });
    if made {
        refusal(h, "an encrypted ext4 file (fscrypt v2 policy): EINVAL", |c| {
            let dir = scratch.join("enc");
            std::fs::create_dir(&dir)?;
            encrypt_dir(&scratch, &dir)?;
            let p = dir.join("secret");
            std::fs::write(&p, pattern(306, 256 << 10))?;
            let f = File::open(&p)?;
            f.sync_all()?;
            ensure!(inode_flags(&f)? & 0x800 != 0, "premise: the file is not encrypted (FS_ENCRYPT_FL unset)");
            refused(c, "encrypted file", &f, 0, Errno::EINVAL)
        });
        refusal(h, "an ext4 file with inline data: EINVAL", |c| {
            let p = scratch.join("tiny");
            std::fs::write(&p, b"small enough to live in the inode")?;
            let f = File::open(&p)?;
            f.sync_all()?;
            ensure!(
                inode_flags(&f)? & 0x1000_0000 != 0,
                "premise: the file has no inline data (EXT4_INLINE_DATA_FL unset)"
            );
            refused(c, "inline-data file", &f, 0, Errno::EINVAL)
        });
        refusal(h, "a file on ext4 mounted with data=journal: EOPNOTSUPP", |c| {
            let dev = scratch_dev()?;
            sh(&format!("umount {0} && mount -o data=journal {dev} {0}", scratch.display()))?;
            let p = scratch.join("journalled");
            std::fs::write(&p, pattern(307, 256 << 10))?;
            let f = File::open(&p)?;
            f.sync_all()?;
            refused(c, "data=journal file", &f, 0, Errno::EOPNOTSUPP)
        });
        let _ = sh(&format!("umount {}", scratch.display()));
    }
    refusal(
        h,
        "bad arguments (offsets, lengths, capacity, flags, output fields, fds, file types): EINVAL, EBADF or EFAULT",
        |c| {
            let f = File::open(xfs.path("r-plain"))?;
            let fd = f.as_raw_fd();
            refused_with(c, "offset 100", |c| raw_map(c, fd, 100, 65536, 0), Errno::EINVAL)?;
            refused_with(c, "offset 512", |c| raw_map(c, fd, 512, 65536, 0), Errno::EINVAL)?;
            refused_with(c, "len 0", |c| raw_map(c, fd, 0, 0, 0), Errno::EINVAL)?;
            refused_with(c, "unknown flag", |c| raw_map(c, fd, 0, 65536, 1 << 5), Errno::EINVAL)?;
            refused_with(
                c,
                "output-only flag as input",
                |c| raw_map(c, fd, 0, 65536, HOMI_MAP_LAYOUT_LEASE),
                Errno::EINVAL,
            )?;
            let mut ext = vec![HomiExtent::default(); 4];
            let base = HomiMapFile {
                fd,
                offset: 0,
                len: 65536,
                extents: ext.as_mut_ptr() as u64,
                capacity: 4,
                ..Default::default()
            };
            let call =
                |mut m: HomiMapFile| move |c: &Controller| raw(c.homi_fd(), HOMI_IOCTL_MAP_FILE, &mut m).map(|()| m);
            refused_with(c, "capacity 0", call(HomiMapFile { capacity: 0, ..base }), Errno::EINVAL)?;
            refused_with(
                c,
                "capacity over HOMI_MAP_MAX_EXTENTS",
                call(HomiMapFile { capacity: HOMI_MAP_MAX_EXTENTS + 1, ..base }),
                Errno::EINVAL,
            )?;
            refused_with(c, "revoke_ms non-zero on input", call(HomiMapFile { revoke_ms: 1, ..base }), Errno::EINVAL)?;
            for (name, m) in [
                ("count", HomiMapFile { count: 1, ..base }),
                ("id", HomiMapFile { id: 1, ..base }),
                ("status_slot", HomiMapFile { status_slot: 1, ..base }),
                ("file_size", HomiMapFile { file_size: 1, ..base }),
                ("block_size", HomiMapFile { block_size: 1, ..base }),
                ("nsid", HomiMapFile { nsid: 1, ..base }),
                ("lba_shift", HomiMapFile { lba_shift: 1, ..base }),
                ("null extents", HomiMapFile { extents: 0, ..base }),
            ] {
                refused_with(c, &format!("{name} set on input"), call(m), Errno::EINVAL)?;
            }
            refused_with(c, "extents pointer unmapped", call(HomiMapFile { extents: 8, ..base }), Errno::EFAULT)?;
            refused_with(c, "bad fd", |c| raw_map(c, 9999, 0, 65536, 0), Errno::EBADF)?;
            refused_with(c, "fd -1", |c| raw_map(c, -1, 0, 65536, 0), Errno::EINVAL)?;
            let dir = File::open(&xfs.mnt)?;
            refused_with(c, "a directory", |c| raw_map(c, dir.as_raw_fd(), 0, 65536, 0), Errno::EINVAL)?;
            let dev = File::open("/dev/null")?;
            refused_with(c, "a character device", |c| raw_map(c, dev.as_raw_fd(), 0, 65536, 0), Errno::EINVAL)?;
            let ns = File::open(&xfs.dev)?;
            refused_with(
                c,
                "the namespace's block device",
                |c| raw_map(c, ns.as_raw_fd(), 0, 65536, 0),
                Errno::EINVAL,
            )?;
            drop(ext);
            Ok(())
        },
    );
    refusal(h, "more maps than the map status page has slots: ENOSPC, slots reused after unmap", |c| {
        let f = File::open(xfs.path("r-plain"))?;
        let mut held = Vec::new();
        let r = (|| -> anyhow::Result<()> {
            for i in 0..HOMI_MAP_SLOTS {
                let m = raw_map(c, f.as_raw_fd(), 0, 65536, 0).map_err(|e| anyhow::anyhow!("map {i}: {e}"))?;
                held.push((m.id, m.status_slot));
            }
            let mut slots: Vec<u32> = held.iter().map(|&(_, s)| s).collect();
            slots.sort_unstable();
            slots.dedup();
            ensure!(slots.len() == HOMI_MAP_SLOTS, "{} distinct slots for {} maps", slots.len(), HOMI_MAP_SLOTS);
            ensure!(slots.last() < Some(&(HOMI_MAP_SLOTS as u32)), "slot {:?} out of range", slots.last());
            refused_with(c, "one map more", |c| raw_map(c, f.as_raw_fd(), 0, 65536, 0), Errno::ENOSPC)?;
            let (id, slot) = held.pop().context("no map")?;
            raw(c.homi_fd(), HOMI_IOCTL_UNMAP_FILE, &mut HomiId { id, flags: 0 }).context("UNMAP_FILE")?;
            let m = raw_map(c, f.as_raw_fd(), 0, 65536, 0).map_err(|e| anyhow::anyhow!("map after an unmap: {e}"))?;
            held.push((m.id, m.status_slot));
            ensure!(m.status_slot == slot, "the freed slot {slot} was not reused (got {})", m.status_slot);
            Ok(())
        })();
        for (id, _) in held {
            raw(c.homi_fd(), HOMI_IOCTL_UNMAP_FILE, &mut HomiId { id, flags: 0 }).context("UNMAP_FILE")?;
        }
        r
    });
    refusal(h, "UNMAP_FILE of an unknown id, twice-unmapped id, non-zero flags: ENOENT/EINVAL", |c| {
        expect_errno(
            "UNMAP of id 12345",
            raw(c.homi_fd(), HOMI_IOCTL_UNMAP_FILE, &mut HomiId { id: 12345, flags: 0 }),
            Errno::ENOENT,
        )?;
        let f = File::open(xfs.path("r-plain"))?;
        let m = raw_map(c, f.as_raw_fd(), 0, MIB, 0).map_err(|e| anyhow::anyhow!("map r-plain: {e}"))?;
        expect_errno(
            "UNMAP with flags",
            raw(c.homi_fd(), HOMI_IOCTL_UNMAP_FILE, &mut HomiId { id: m.id, flags: 1 }),
            Errno::EINVAL,
        )?;
        raw(c.homi_fd(), HOMI_IOCTL_UNMAP_FILE, &mut HomiId { id: m.id, flags: 0 }).context("UNMAP")?;
        expect_errno(
            "second UNMAP",
            raw(c.homi_fd(), HOMI_IOCTL_UNMAP_FILE, &mut HomiId { id: m.id, flags: 0 }),
            Errno::ENOENT,
        )
    });
    h.check("files: refused: MAP_FILE before ATTACH", || {
        let homi = open_homi()?;
        let f = File::open(xfs.path("r-plain"))?;
        let mut ext = vec![HomiExtent::default(); 4];
        let mut m = HomiMapFile {
            fd: f.as_raw_fd(),
            len: 65536,
            extents: ext.as_mut_ptr() as u64,
            capacity: 4,
            ..Default::default()
        };
        match raw(&homi, HOMI_IOCTL_MAP_FILE, &mut m) {
            Err(e) => {
                println!("#   MAP_FILE before ATTACH: {e}");
                Ok(())
            }
            Ok(()) => bail!("MAP_FILE before ATTACH succeeded"),
        }
    });
}
