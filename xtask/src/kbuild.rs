//! The guest kernel and the homi.ko build against it.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use anyhow::{bail, Context};
use clap::Args;

use crate::kselect::{self, Choice, Offer, Request};
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

/// The verified kernel of qemu/versions.sh.
pub fn verified() -> anyhow::Result<Offer> {
    Ok(Offer {
        pkg: cache_var("KERNEL_VERIFIED_PKG")?,
        version: cache_var("KERNEL_VERIFIED_VERSION")?,
        suite: cache_var("KERNEL_VERIFIED_SUITE")?,
    })
}

/// The suites searched for kernel sources, in order (`KERNEL_SUITES`).
pub fn suites() -> anyhow::Result<Vec<String>> {
    Ok(cache_var("KERNEL_SUITES")?.split_whitespace().map(str::to_owned).collect())
}

/// What `suite` offers now (`qemu/fetch-kernel.sh list`, which refreshes its index).
pub fn offers(suite: &str) -> anyhow::Result<Vec<Offer>> {
    let out = Command::new("bash")
        .arg(repo_root().join("qemu/fetch-kernel.sh"))
        .args(["list", suite])
        .output()
        .context("run qemu/fetch-kernel.sh list")?;
    if !out.status.success() {
        bail!("{}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(kselect::parse_apt_show(&String::from_utf8_lossy(&out.stdout), suite))
}

/// The kernel source this run uses (see kselect.rs for the order), chosen once per
/// run and printed as `kernel: <pkg> <version> from <suite> (<why>)`. The verified
/// kernel whose source is already cached is chosen without asking the network.
pub fn selected() -> anyhow::Result<&'static Choice> {
    static CHOICE: OnceLock<Choice> = OnceLock::new();
    if let Some(c) = CHOICE.get() {
        return Ok(c);
    }
    let request = Request::parse(std::env::var("HOMI_KERNEL").ok().as_deref());
    let verified = verified()?;
    let cached = std::path::Path::new(&cache_var("HOMI_CACHE")?).join("src").join(&verified.version).is_dir();
    let suites = suites()?;
    let mut all = Vec::new();
    let mut unreachable = Vec::new();
    if !(request == Request::Default && cached) {
        for suite in &suites {
            match offers(suite) {
                Ok(o) => all.extend(o),
                Err(e) => unreachable.push(format!("{e:#}")),
            }
        }
    }
    if !unreachable.is_empty() && unreachable.len() == suites.len() {
        bail!(
            "{}: Debian's archive cannot be reached, so no kernel can be chosen (without the network, only \
             the verified {} {} with its source cached and HOMI_KERNEL unset); check the network, or set \
             HOMI_KDIR=<a kernel build directory>",
            unreachable.join("; "),
            verified.pkg,
            verified.version
        );
    }
    let choice = kselect::select(&request, &verified, cached, &suites, &all).map_err(|e| {
        if unreachable.is_empty() {
            e
        } else {
            e.context(unreachable.join("; "))
        }
    })?;
    eprintln!("kernel: {choice}");
    Ok(CHOICE.get_or_init(|| choice))
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
    let choice = selected()?;
    let out = Command::new("bash")
        .arg(repo_root().join("qemu/kernel.sh"))
        .env("VARIANT", if args.debug_kernel { "debug" } else { "release" })
        .env("KERNEL_SRC_PKG", &choice.offer.pkg)
        .env("KERNEL_VERSION", &choice.offer.version)
        .env("KERNEL_SUITE", &choice.offer.suite)
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("run qemu/kernel.sh")?;
    if !out.status.success() {
        bail!("kernel build of {choice} failed ({}); its log is above", out.status);
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
pub fn kbuild_vars() -> anyhow::Result<Vec<String>> {
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

/// Runs the kernel's `scripts/checkpatch.pl --strict` on the series in qemu/patches
/// (the cover letter aside); any error, warning or check fails.
pub fn checkpatch(k: &Kernel) -> anyhow::Result<usize> {
    let src = k.dir.join("source");
    let mut patches: Vec<PathBuf> =
        std::fs::read_dir(repo_root().join("qemu/patches"))?.map(|e| e.map(|e| e.path())).collect::<Result<_, _>>()?;
    patches.retain(|p| p.extension().is_some_and(|e| e == "patch") && !p.ends_with("0000-cover-letter.patch"));
    patches.sort();
    if patches.is_empty() {
        return Ok(0);
    }
    let out = Command::new("perl")
        .arg(src.join("scripts/checkpatch.pl"))
        .args(["--strict", "--no-color", "--root"])
        .arg(&src)
        .args(&patches)
        .output()
        .context("run checkpatch.pl")?;
    let log = String::from_utf8_lossy(&out.stdout);
    let clean = log
        .lines()
        .filter(|l| {
            *l == "total: 0 errors, 0 warnings, 0 checks" || l.starts_with("total: 0 errors, 0 warnings, 0 checks,")
        })
        .count();
    if !out.status.success() || clean != patches.len() {
        bail!("checkpatch.pl --strict is not clean on qemu/patches:\n{log}");
    }
    Ok(patches.len())
}

/// Builds kmod/homi.ko with `W=1 CLIPPY=1`; any compiler or clippy warning fails the
/// build. Also checks rustfmt with the kernel's settings. Returns the module's path.
pub fn kmod(k: &Kernel) -> anyhow::Result<PathBuf> {
    let kmod_dir = repo_root().join("kmod");
    build_module(k, &kmod_dir, &[])?;
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

/// Builds homi.ko as for a stock kernel (`HOMI_STOCK=1`: without nvme-pci's user queue
/// API, even where the kernel has it), in `target/stock/kmod`, with the same
/// warning-free rule. Returns the module's path.
pub fn kmod_stock(k: &Kernel) -> anyhow::Result<PathBuf> {
    let ko = kmod_copy(k, "stock", &["HOMI_STOCK=1"])?;
    eprintln!("kmod: built {} as for a stock kernel (W=1 CLIPPY=1, no warnings)", ko.display());
    Ok(ko)
}

/// Builds a copy of kmod/ against `k` in `target/<name>/kmod` (so builds against
/// several kernels can coexist), with the same warning-free rule, and signs it.
/// Returns the module's path.
pub fn kmod_copy(k: &Kernel, name: &str, extra: &[&str]) -> anyhow::Result<PathBuf> {
    let dir = copy_kmod(name)?;
    build_module(k, &dir, extra)?;
    Ok(dir.join("homi.ko"))
}

/// Copies kmod/'s sources (and the ABI file it includes) to `target/<name>/kmod`,
/// fresh. Returns that directory.
pub fn copy_kmod(name: &str) -> anyhow::Result<PathBuf> {
    let root = repo_root();
    let top = root.join("target").join(name);
    let dir = top.join("kmod");
    let _ = std::fs::remove_dir_all(&top);
    std::fs::create_dir_all(&dir)?;
    std::fs::create_dir_all(top.join("uapi/src"))?;
    // homi_main.rs includes the ABI as `../uapi/src/abi.rs`.
    std::fs::copy(root.join("uapi/src/abi.rs"), top.join("uapi/src/abi.rs"))?;
    for entry in std::fs::read_dir(root.join("kmod"))? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        let source = name == "Kbuild" || name == "Makefile" || [".rs", ".c", ".h"].iter().any(|e| name.ends_with(e));
        // Kbuild's generated homi.mod.c is not a source.
        if source && !name.ends_with(".mod.c") {
            std::fs::copy(&path, dir.join(name))?;
        }
    }
    Ok(dir)
}

/// Signs `ko` with the kernel build's own module signing key, as `modules_install`
/// would: the kernel has `CONFIG_MODULE_SIG` (the lockdown LSM needs it), and an
/// unsigned module would taint it.
fn sign(k: &Kernel, ko: &std::path::Path) -> anyhow::Result<()> {
    let out = Command::new(k.dir.join("scripts/sign-file"))
        .arg("sha512")
        .arg(k.dir.join("certs/signing_key.pem"))
        .arg(k.dir.join("certs/signing_key.x509"))
        .arg(ko)
        .output()
        .context("run scripts/sign-file")?;
    if !out.status.success() {
        bail!("signing {} failed:\n{}", ko.display(), String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// `make clean` then `make W=1 CLIPPY=1 modules` of the module in `dir`, then signs it;
/// fails on any warning.
fn build_module(k: &Kernel, dir: &std::path::Path, extra: &[&str]) -> anyhow::Result<()> {
    compile_module(&k.dir, dir, extra, |_| false)?;
    sign(k, &dir.join("homi.ko"))
}

/// `make clean` then `make W=1 CLIPPY=1 modules` of the module in `dir` against the
/// kernel build directory `kdir`; fails on any warning line for which `allowed` is
/// false. Returns the build log.
pub fn compile_module(
    kdir: &std::path::Path,
    dir: &std::path::Path,
    extra: &[&str],
    allowed: impl Fn(&str) -> bool,
) -> anyhow::Result<String> {
    // Clean first: Kbuild skips unchanged objects, and their warnings with them.
    let clean = Command::new("make")
        .arg("-C")
        .arg(kdir)
        .arg(format!("M={}", dir.display()))
        .arg("clean")
        .output()
        .context("run make clean for kmod")?;
    if !clean.status.success() {
        bail!("make clean in {} failed:\n{}", dir.display(), String::from_utf8_lossy(&clean.stderr));
    }
    let out = Command::new("make")
        .arg("-C")
        .arg(kdir)
        .arg(format!("M={}", dir.display()))
        .args(kbuild_vars()?)
        .args(extra)
        .args(["W=1", "CLIPPY=1", "modules"])
        .env("LIBCLANG_PATH", "/usr/lib/llvm-19/lib")
        .output()
        .context("run make for kmod")?;
    let log = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if !out.status.success() {
        bail!("homi.ko build in {} failed:\n{log}", dir.display());
    }
    let warnings: Vec<&str> = log.lines().filter(|l| l.contains("warning") && !allowed(l)).collect();
    if !warnings.is_empty() {
        bail!("homi.ko built with warnings (W=1 CLIPPY=1 must be clean):\n{log}");
    }
    Ok(log)
}
