//! Suite `capi`: the C library from C, against the real nvme driver.
//!
//! Runs the C test (capi/tests/c/homi_test.c) and the C example
//! (capi/examples/readwrite.c) that `cargo xtask capi` built on the host against the
//! installed homi.h and libhomi.a, into `target/capi/bin`. Each of the C test's
//! `ok - ...` / `not ok - ...` lines becomes one check here; then whether its run was
//! whole (its summary matches its lines and its exit status), the example's round
//! trip, and that homi holds nothing once both have exited.

use std::path::{Path, PathBuf};
use std::process::Command as Proc;

use anyhow::{bail, ensure, Context};
use homi::uapi::{HOMI_INFO_SHADOW_DOORBELLS, HOMI_INFO_USER_QUEUES};

use crate::common::{ensure_nothing_held, open_live, NS};
use crate::harness::Harness;
use crate::kmod;

/// Where the C programs are: `HOMI_CAPI_BIN`, else `target/capi/bin` beside this
/// binary's `target/release`.
fn bin_dir() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("HOMI_CAPI_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe().context("current_exe")?;
    let target = exe.parent().and_then(Path::parent).context("homi-vmtest lies outside target/<profile>")?;
    Ok(target.join("capi/bin"))
}

pub fn capi(kmod_path: &Path, h: &mut Harness) -> anyhow::Result<()> {
    if !kmod::loaded("homi") {
        kmod::load(kmod_path, "").context("load homi.ko")?;
    }
    let dir = bin_dir()?;
    let (test, example) = (dir.join("homi_test"), dir.join("readwrite"));
    if !test.exists() || !example.exists() {
        bail!("no C test or example in {}: run `cargo xtask capi` on the host first", dir.display());
    }
    let info = open_live().context("open /dev/nvme0")?.info()?;
    if info.flags & HOMI_INFO_SHADOW_DOORBELLS != 0 && info.flags & HOMI_INFO_USER_QUEUES == 0 {
        // No homi queue can exist here; what C sees is the refusal.
        h.check(
            "capi: without user queues on shadow doorbells, queue creation fails with HOMI_E_SHADOW_DOORBELLS",
            || {
                let out = Proc::new(&example).arg(NS).output().with_context(|| format!("run {}", example.display()))?;
                let err = String::from_utf8_lossy(&out.stderr);
                ensure!(
                    !out.status.success() && err.contains("homi_qpair_create") && err.contains("(-6)"),
                    "exit {}: {err}",
                    out.status
                );
                Ok(())
            },
        );
        h.skip("capi: the C test", "shadow doorbells without nvme-pci user queues: no homi queue can exist here");
        return Ok(());
    }

    let out = Proc::new(&test).arg(NS).output().with_context(|| format!("run {}", test.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let (mut ok, mut not_ok) = (0usize, 0usize);
    for line in stdout.lines() {
        if let Some(name) = line.strip_prefix("ok - ") {
            ok += 1;
            h.record(&format!("capi: {name}"), Ok(()));
        } else if let Some(rest) = line.strip_prefix("not ok - ") {
            not_ok += 1;
            let (name, why) = rest.split_once(": ").unwrap_or((rest, "(no reason given)"));
            h.record(&format!("capi: {name}"), Err(anyhow::anyhow!("{why}")));
        } else if line.starts_with('#') {
            println!("{line}");
        }
    }
    h.check("capi: the C test ran whole: its summary, its lines and its exit status agree", || {
        let summary = format!("{ok} passed, {not_ok} failed");
        ensure!(ok + not_ok > 0, "no check reported; exit {}; stderr: {stderr}", out.status);
        ensure!(
            stdout.lines().last() == Some(summary.as_str()),
            "last line {:?}, expected {summary:?}; exit {}; stderr: {stderr}",
            stdout.lines().last(),
            out.status
        );
        ensure!(out.status.success() == (not_ok == 0), "exit {} with {not_ok} failed", out.status);
        Ok(())
    });

    h.check("capi: the C example writes 128 KiB, reads it back and compares", || {
        // The C test reset the controller last; let it come back first.
        drop(open_live()?);
        let out = Proc::new(&example).arg(NS).output().with_context(|| format!("run {}", example.display()))?;
        let text = String::from_utf8_lossy(&out.stdout);
        print!("{text}");
        ensure!(
            out.status.success() && text.contains("identical"),
            "exit {}: {text}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    });

    h.check("capi: homi holds no queue, pin or DMA memory once the C programs exited", ensure_nothing_held);
    Ok(())
}
