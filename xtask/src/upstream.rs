//! `cargo xtask kernel --check-upstream`: the kernel sources Debian offers, and for each
//! whether it fetches, whether qemu/patches applies, and whether homi.ko builds.
//!
//! The module check needs a configured and prepared tree. Where a full build of that
//! version is cached, homi.ko is built against it. Otherwise, with `--build-module`,
//! the patched tree is configured like the guest kernel (allnoconfig +
//! qemu/kernel.config), `modules_prepare`d, and homi.ko compiled against it; modpost
//! cannot check symbols there (no Module.symvers without a full build), so its
//! "undefined" warnings are allowed and said so. Without either it is "not attempted".

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context};

use crate::kbuild::{self, Kernel};
use crate::kselect::Offer;
use crate::repo_root;

/// Runs the check; returns 0 when the verified kernel (or, if it is gone, some offered
/// kernel) passed every check that ran.
pub fn check(build_module: bool) -> anyhow::Result<i32> {
    let verified = kbuild::verified()?;
    let cache = PathBuf::from(kbuild::cache_var("HOMI_CACHE")?);
    println!("verified kernel (qemu/versions.sh): {} {} from {}", verified.pkg, verified.version, verified.suite);
    let mut offers: Vec<Offer> = Vec::new();
    for suite in kbuild::suites()? {
        match kbuild::offers(&suite) {
            Ok(o) if o.is_empty() => println!("{suite}: offers no linux-source-X.Y"),
            Ok(o) => {
                let list: Vec<String> = o.iter().map(|o| format!("{} {}", o.pkg, o.version)).collect();
                println!("{suite}: offers {}", list.join(", "));
                offers.extend(o);
            }
            Err(e) => println!("{suite}: index unavailable: {e:#}"),
        }
    }
    let mut any_good = false;
    let mut checked: Vec<String> = Vec::new();
    for o in &offers {
        if checked.contains(&o.version) {
            continue;
        }
        checked.push(o.version.clone());
        let tag = if o.version == verified.version { " [verified]" } else { "" };
        println!("\n{} {} ({}){tag}", o.pkg, o.version, o.suite);
        let t = Instant::now();
        let src = match fetch(o) {
            Ok(src) => {
                println!("  fetch:   ok ({}, {:.0}s)", src.display(), t.elapsed().as_secs_f64());
                src
            }
            Err(e) => {
                println!("  fetch:   FAILED: {e:#}");
                continue;
            }
        };
        let tree = cache.join("check").join(&o.version);
        let patched = apply_series(&src, &tree);
        match &patched {
            Ok(n) => println!("  patches: ok, all {n} of qemu/patches apply (patch -p1 --forward, no fuzz)"),
            Err(e) => println!("  patches: FAILED: {e:#}"),
        }
        let module = module_check(o, &cache, &tree, patched.is_ok(), build_module);
        println!("  module:  {}", module.as_ref().map_or_else(|e| format!("FAILED: {e:#}"), String::clone));
        if patched.is_ok() && module.is_ok() {
            any_good = true;
        }
        if !build_module {
            let _ = std::fs::remove_dir_all(&tree);
        }
    }
    if offers.is_empty() {
        println!("\nno kernel source offered: `cargo xtask kernel` works only from a cached source or HOMI_KDIR");
    }
    Ok(if any_good { 0 } else { 1 })
}

/// Downloads and unpacks `o` (reused when cached) through qemu/fetch-kernel.sh.
fn fetch(o: &Offer) -> anyhow::Result<PathBuf> {
    let out = Command::new("bash")
        .arg(repo_root().join("qemu/fetch-kernel.sh"))
        .args(["fetch", &o.suite, &o.pkg, &o.version])
        .output()
        .context("run qemu/fetch-kernel.sh fetch")?;
    if !out.status.success() {
        bail!("{}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(PathBuf::from(String::from_utf8(out.stdout)?.trim()))
}

/// The series of qemu/patches, the cover letter aside, in order.
fn series() -> anyhow::Result<Vec<PathBuf>> {
    let mut patches: Vec<PathBuf> =
        std::fs::read_dir(repo_root().join("qemu/patches"))?.map(|e| e.map(|e| e.path())).collect::<Result<_, _>>()?;
    patches.retain(|p| p.extension().is_some_and(|e| e == "patch") && !p.ends_with("0000-cover-letter.patch"));
    patches.sort();
    Ok(patches)
}

/// Applies the series, in order, to a hard-linked copy of `src` at `tree`, refusing
/// fuzz. Returns how many patches applied.
fn apply_series(src: &Path, tree: &Path) -> anyhow::Result<usize> {
    let patches = series()?;
    let _ = std::fs::remove_dir_all(tree);
    std::fs::create_dir_all(tree.parent().expect("tree has a parent"))?;
    crate::run_checked(Command::new("cp").arg("-al").arg(src).arg(tree))?;
    for p in &patches {
        let out = Command::new("patch")
            .args(["-p1", "--forward", "--batch", "--fuzz=0", "-s", "-d"])
            .arg(tree)
            .arg("-i")
            .arg(p)
            .output()
            .context("run patch")?;
        if !out.status.success() {
            let name = p.file_name().unwrap_or_default().to_string_lossy();
            bail!("{name} does not apply: {}", String::from_utf8_lossy(&out.stdout).trim());
        }
    }
    Ok(patches.len())
}

/// Whether homi.ko builds against `o`: see the module's documentation.
fn module_check(o: &Offer, cache: &Path, tree: &Path, patched: bool, build: bool) -> anyhow::Result<String> {
    if let Some(dir) = cached_build(cache, &o.version) {
        let t = Instant::now();
        kbuild::kmod_copy(&Kernel { dir: dir.clone() }, "upstream-check", &[])?;
        return Ok(format!(
            "ok, homi.ko builds W=1 CLIPPY=1 with no warnings against the cached full build {} ({:.0}s)",
            dir.display(),
            t.elapsed().as_secs_f64()
        ));
    }
    if !build {
        return Ok("not attempted (no full build cached; --build-module configures, prepares and builds)".into());
    }
    if !patched {
        return Ok("not attempted (the series does not apply)".into());
    }
    let t = Instant::now();
    let out = cache.join("check").join(format!("{}-build", o.version));
    std::fs::create_dir_all(&out)?;
    let mut vars = kbuild::kbuild_vars()?;
    vars.retain(|v| !v.starts_with("CLIPPY_DRIVER"));
    let make = |targets: &[&str]| -> anyhow::Result<()> {
        let mut cmd = Command::new("make");
        cmd.arg("-C")
            .arg(tree)
            .arg(format!("O={}", out.display()))
            .args(&vars)
            .arg("-s")
            .args(targets)
            .env("KCONFIG_ALLCONFIG", repo_root().join("qemu/kernel.config"))
            .env("LIBCLANG_PATH", "/usr/lib/llvm-19/lib");
        let r = cmd.output().context("run make")?;
        if !r.status.success() {
            let err = String::from_utf8_lossy(&r.stderr);
            let tail: Vec<&str> = err.lines().rev().take(15).collect();
            bail!("make {} failed:\n{}", targets.join(" "), tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
        }
        Ok(())
    };
    make(&["allnoconfig"])?;
    let jobs = format!("-j{}", std::thread::available_parallelism().map_or(2, |n| n.get() + 1));
    make(&[&jobs, "modules_prepare"])?;
    let prepared = t.elapsed().as_secs_f64();
    let dir = kbuild::copy_kmod("upstream-check")?;
    kbuild::compile_module(&out, &dir, &["KBUILD_MODPOST_WARN=1"], |l| {
        l.contains("modpost") && l.contains("undefined")
    })?;
    Ok(format!(
        "ok, homi.ko compiles W=1 CLIPPY=1 with no warnings against the configured, modules_prepare'd tree \
         (symbols not checked: no full build; prepare {prepared:.0}s, total {:.0}s)",
        t.elapsed().as_secs_f64()
    ))
}

/// A finished, cached release build of `version`, if any.
fn cached_build(cache: &Path, version: &str) -> Option<PathBuf> {
    let prefix = format!("{version}-release-");
    std::fs::read_dir(cache.join("kernel")).ok()?.filter_map(|e| e.ok().map(|e| e.path())).find(|p| {
        p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(&prefix)) && p.join(".homi-built").exists()
    })
}
