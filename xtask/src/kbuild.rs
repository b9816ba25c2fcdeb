//! The guest kernel and the homi.ko build against it.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context};
use clap::Args;

use crate::repo_root;

/// Which kernel to use.
#[derive(Args, Clone, Debug, Default)]
pub struct KernelArgs {
    /// Use the debug kernel (KASAN, lockdep, kmemleak) instead of the release one.
    #[arg(long)]
    pub debug_kernel: bool,
}

/// A built guest kernel tree.
pub struct Kernel {
    /// The build directory: KDIR for out-of-tree modules.
    pub dir: PathBuf,
}

impl Kernel {
    /// The bootable image.
    pub fn bzimage(&self) -> PathBuf {
        self.dir.join("arch/x86/boot/bzImage")
    }
}

/// Builds the guest kernel, or reuses the cached build (qemu/kernel.sh does the caching).
/// `HOMI_KDIR` names a kernel build directory to use instead.
pub fn kernel(args: &KernelArgs) -> anyhow::Result<Kernel> {
    if let Some(dir) = std::env::var_os("HOMI_KDIR") {
        let k = Kernel { dir: PathBuf::from(dir) };
        if !k.bzimage().exists() {
            bail!("HOMI_KDIR={}: no arch/x86/boot/bzImage there", k.dir.display());
        }
        eprintln!("kernel: using HOMI_KDIR={}", k.dir.display());
        return Ok(k);
    }
    let out = Command::new("bash")
        .arg(repo_root().join("qemu/kernel.sh"))
        .env("VARIANT", if args.debug_kernel { "debug" } else { "release" })
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("run qemu/kernel.sh")?;
    if !out.status.success() {
        bail!("kernel build failed ({}); its log is above", out.status);
    }
    let dir = PathBuf::from(String::from_utf8(out.stdout)?.trim());
    let k = Kernel { dir };
    if !k.bzimage().exists() {
        bail!("{} is missing after the kernel build", k.bzimage().display());
    }
    Ok(k)
}

/// Make variables every Kbuild invocation needs: the LLVM 19 toolchain, Debian's
/// rustc-web (the kernel wants its `core` source), the pinned bindgen, and clippy.
fn kbuild_vars() -> anyhow::Result<Vec<String>> {
    let tools = cache_var("HOMI_TOOLS")?;
    Ok(vec![
        "LLVM=-19".into(),
        "RUSTC=/usr/bin/rustc".into(),
        "RUSTDOC=/usr/bin/rustdoc".into(),
        "CLIPPY_DRIVER=/usr/bin/clippy-driver".into(),
        format!("BINDGEN={tools}/bin/bindgen"),
    ])
}

/// Reads a variable of qemu/versions.sh, the one place cache paths and pins are set.
pub fn cache_var(name: &str) -> anyhow::Result<String> {
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!(". \"$0\" && printf %s \"${name}\""))
        .arg(repo_root().join("qemu/versions.sh"))
        .output()
        .context("read qemu/versions.sh")?;
    let v = String::from_utf8(out.stdout)?;
    if !out.status.success() || v.is_empty() {
        bail!("qemu/versions.sh does not set {name}");
    }
    Ok(v)
}

/// Builds kmod/homi.ko with `W=1 CLIPPY=1`; any compiler or clippy warning fails the
/// build. Also checks rustfmt with the kernel's settings. Returns the module's path.
pub fn kmod(k: &Kernel) -> anyhow::Result<PathBuf> {
    let kmod_dir = repo_root().join("kmod");
    // Clean first: Kbuild skips unchanged objects, and their warnings with them.
    let clean = Command::new("make")
        .arg("-C")
        .arg(&k.dir)
        .arg(format!("M={}", kmod_dir.display()))
        .arg("clean")
        .output()
        .context("run make clean for kmod")?;
    if !clean.status.success() {
        bail!("make clean in kmod failed:\n{}", String::from_utf8_lossy(&clean.stderr));
    }
    let out = Command::new("make")
        .arg("-C")
        .arg(&k.dir)
        .arg(format!("M={}", kmod_dir.display()))
        .args(kbuild_vars()?)
        .args(["W=1", "CLIPPY=1", "modules"])
        .env("LIBCLANG_PATH", "/usr/lib/llvm-19/lib")
        .output()
        .context("run make for kmod")?;
    let log = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if !out.status.success() {
        bail!("homi.ko build failed:\n{log}");
    }
    let warnings: Vec<&str> = log.lines().filter(|l| l.contains("warning")).collect();
    if !warnings.is_empty() {
        bail!("homi.ko built with warnings (W=1 CLIPPY=1 must be clean):\n{log}");
    }
    let fmt = Command::new("/usr/bin/rustfmt")
        .args(["--check", "--color", "never"])
        .arg(kmod_dir.join("homi_main.rs"))
        .current_dir(&kmod_dir)
        .output()
        .context("run rustfmt")?;
    if !fmt.status.success() {
        bail!("kmod is not rustfmt-clean:\n{}", String::from_utf8_lossy(&fmt.stdout));
    }
    let ko = kmod_dir.join("homi.ko");
    eprintln!("kmod: built {} (W=1 CLIPPY=1, no warnings, rustfmt-clean)", ko.display());
    Ok(ko)
}
