//! The suites, by name.

use std::path::Path;

use anyhow::{bail, ensure, Context};
use homi::{uapi, HomiDevice};

use crate::harness::Harness;
use crate::kmod;

/// Runs the suite `name`.
///
/// A suite name may carry numbers after colons: `soak:RESETS:KILLS`, `fuzz:SECONDS`.
pub fn run(name: &str, kmod_path: &Path, h: &mut Harness) -> anyhow::Result<()> {
    let mut parts = name.split(':');
    let name = parts.next().unwrap_or_default();
    let mut arg = |default: u64| -> anyhow::Result<u64> {
        parts.next().map_or(Ok(default), |n| n.parse().with_context(|| format!("suite argument {n:?}")))
    };
    match name {
        "hardening" => crate::hardening::hardening(kmod_path, h),
        "manyq" => crate::hardening::manyq(kmod_path, h),
        "lockdown" => crate::hardening::lockdown(kmod_path, h),
        "swiotlb" => crate::hardening::swiotlb(kmod_path, h),
        "soak" => {
            let (resets, kills) = (arg(50)?, arg(200)?);
            crate::soak::soak(kmod_path, h, resets as u32, kills as u32)
        }
        "fuzz" => {
            let secs = arg(60)?;
            if !kmod::loaded("homi") {
                kmod::load(kmod_path, "").context("load homi.ko")?;
            }
            crate::fuzz::fuzz(h, secs, 1)
        }
        "basic" => basic(kmod_path, h),
        "queues" => crate::queues::queues(kmod_path, h),
        "unbind" => crate::queues::unbind(h),
        "stress" => crate::stress::stress(kmod_path, h),
        "dbcs" => crate::queues::dbcs(kmod_path, h),
        "nospare" => crate::queues::nospare(kmod_path, h),
        "shapes" => crate::shapes::shapes(kmod_path, h),
        "paths" => crate::shapes::paths(kmod_path, h),
        "shadow" => crate::shapes::shadow(kmod_path, h),
        "placement" => crate::shapes::placement(kmod_path, h),
        "dmabuf" => crate::dmabuf::dmabuf(kmod_path, h),
        "bench" => crate::bench::bench(kmod_path, h),
        "fio" => crate::fio::fio_suite(kmod_path, h),
        "capi" => crate::capi::capi(kmod_path, h),
        "files" => crate::files::files(kmod_path, h),
        other => bail!(
            "unknown suite {other:?} (known: basic, queues, stress, unbind, dbcs, nospare, shapes, paths, shadow, \
             placement, dmabuf, bench, fio, capi, files, hardening, manyq, lockdown, swiotlb, soak[:RESETS:KILLS], \
             fuzz[:SECONDS])"
        ),
    }
}

/// The harness itself: the guest sees the emulated controller, and homi.ko loads,
/// answers VERSION, and unloads without a kernel warning.
fn basic(kmod_path: &Path, h: &mut Harness) -> anyhow::Result<()> {
    h.check("basic: guest sees nvme0 and its namespace", || {
        ensure!(Path::new("/sys/class/nvme/nvme0").exists(), "no /sys/class/nvme/nvme0");
        ensure!(Path::new("/dev/nvme0").exists(), "no /dev/nvme0");
        ensure!(Path::new("/dev/nvme0n1").exists(), "no /dev/nvme0n1");
        let model = std::fs::read_to_string("/sys/class/nvme/nvme0/model")?;
        ensure!(model.contains("QEMU"), "unexpected controller model {model:?}");
        Ok(())
    });
    if kmod::loaded("homi") {
        // `cargo xtask vm` loads homi.ko before its command unless given --no-kmod.
        let refs = std::fs::read_to_string("/sys/module/homi/refcnt").unwrap_or_default();
        bail!(
            "homi is already loaded (refcnt {}); the suite needs to load it itself (run it through \
             `cargo xtask vm --no-kmod`)",
            refs.trim()
        );
    }
    let loaded = h.check("basic: homi.ko loads and creates /dev/homi", || {
        kmod::load(kmod_path, "")?;
        ensure!(kmod::loaded("homi"), "/sys/module/homi missing after load");
        ensure!(HomiDevice::default_path().exists(), "no /dev/homi after load");
        Ok(())
    });
    if loaded {
        h.check("basic: VERSION ioctl round-trips", || {
            let dev = HomiDevice::open().context("open /dev/homi")?;
            let v = dev.version()?;
            ensure!(
                (v.abi_major, v.abi_minor) == (uapi::ABI_MAJOR, uapi::ABI_MINOR),
                "module ABI {}.{} != library ABI {}.{}",
                v.abi_major,
                v.abi_minor,
                uapi::ABI_MAJOR,
                uapi::ABI_MINOR
            );
            Ok(())
        });
        h.check("basic: unknown ioctl answers ENOTTY", || {
            let f = std::fs::File::open(HomiDevice::default_path())?;
            // An ioctl number of homi's type that the ABI does not define.
            let bogus = nix::request_code_none!(uapi::IOCTL_TYPE, 0x7f);
            // SAFETY: a no-argument ioctl; the module must reject it without touching memory.
            let rc = unsafe { nix::libc::ioctl(std::os::fd::AsRawFd::as_raw_fd(&f), bogus) };
            let err = std::io::Error::last_os_error();
            ensure!(rc == -1 && err.raw_os_error() == Some(nix::libc::ENOTTY), "got rc {rc}, {err}");
            Ok(())
        });
        h.check("basic: homi.ko unloads cleanly", || {
            kmod::unload("homi").context("delete_module(homi)")?;
            ensure!(!kmod::loaded("homi"), "/sys/module/homi still present");
            ensure!(!HomiDevice::default_path().exists(), "/dev/homi still present");
            Ok(())
        });
    }
    h.check("basic: kernel log has no warning or splat", || {
        let bad = kmod::splats()?;
        ensure!(bad.is_empty(), "kernel log:\n{}", bad.join("\n"));
        Ok(())
    });
    Ok(())
}

/// On a kmemleak kernel: asks for a scan and fails on any report that names homi.
/// Runs after every suite of a boot, so it sees what they all left.
pub fn kmemleak(h: &mut Harness) {
    if !Path::new("/sys/kernel/debug").exists() {
        return; // no debugfs: not the debug kernel
    }
    h.check("kmemleak: no leak after the suites (debug kernel)", || {
        let _ = std::process::Command::new("mount").args(["-t", "debugfs", "none", "/sys/kernel/debug"]).status();
        let k = Path::new("/sys/kernel/debug/kmemleak");
        ensure!(k.exists(), "debugfs but no kmemleak file");
        // The first scan can miss objects freed moments ago; two are the documented way.
        std::fs::write(k, "scan").context("kmemleak scan")?;
        std::fs::write(k, "scan").context("kmemleak scan")?;
        let report = std::fs::read_to_string(k)?;
        ensure!(!report.contains("homi"), "kmemleak reports homi allocations:\n{report}");
        Ok(())
    });
}
