//! `cargo xtask capi`: builds the C library (crate homi-capi) in release mode and
//! installs `lib/libhomi.so` (SONAME `libhomi.so.0`), `lib/libhomi.a`,
//! `include/homi.h` and `lib/pkgconfig/homi.pc` under a prefix; then compiles the C
//! example and the C test against that installation, through pkg-config, linked with
//! the static library, into `capi/bin` of the target directory (where the in-VM
//! suite `capi` finds them). The target directory is cargo's (`cargo metadata`), so
//! `CARGO_TARGET_DIR` and `build.target-dir` are honoured.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};

use crate::{cargo, repo_root, run_checked};

/// The C ABI's major version: the SONAME is `libhomi.so.{ABI_MAJOR}`. capi/build.rs
/// (`ABI_MAJOR`) and homi.h (`HOMI_CAPI_MAJOR`, from capi/src/lib.rs) spell the same
/// number; a homi-capi unit test checks that all three agree.
const ABI_MAJOR: u32 = 0;

/// `cargo xtask capi` arguments.
#[derive(clap::Args, Debug)]
pub struct CapiArgs {
    /// Where to install (default: capi/install in the target directory). No
    /// whitespace, quotes, `$`, `#` or `\`: pkg-config would split or expand it.
    #[arg(long)]
    pub prefix: Option<PathBuf>,
}

/// `cargo xtask capi`.
pub fn run(a: &CapiArgs) -> anyhow::Result<i32> {
    let target = target_dir()?;
    let prefix = match &a.prefix {
        Some(p) => std::path::absolute(p).context("absolute --prefix")?,
        None => default_prefix(&target),
    };
    install(&target, &prefix)?;
    let bins = build_c(&target, &prefix)?;
    println!("installed into {}", prefix.display());
    for b in bins {
        println!("built {}", b.display());
    }
    Ok(0)
}

/// Cargo's target directory for this workspace (`CARGO_TARGET_DIR`, `build.target-dir`
/// or `target`), as `cargo metadata` reports it.
fn target_dir() -> anyhow::Result<PathBuf> {
    let out =
        cargo().args(["metadata", "--format-version", "1", "--no-deps"]).output().context("run cargo metadata")?;
    if !out.status.success() {
        bail!("cargo metadata failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).context("parse cargo metadata")?;
    match meta["target_directory"].as_str() {
        Some(dir) => Ok(PathBuf::from(dir)),
        None => bail!("cargo metadata names no target_directory"),
    }
}

fn default_prefix(target: &Path) -> PathBuf {
    target.join("capi/install")
}

/// The directory the C programs are built into, which the `capi` suite reads (beside
/// its own binary's `target/release`).
fn bin_dir(target: &Path) -> PathBuf {
    target.join("capi/bin")
}

/// Installs into the default prefix and builds the C programs the `capi` suite runs;
/// returns their directory.
pub fn guest_binaries() -> anyhow::Result<PathBuf> {
    let target = target_dir()?;
    let prefix = default_prefix(&target);
    install(&target, &prefix)?;
    build_c(&target, &prefix)?;
    Ok(bin_dir(&target))
}

/// Refuses a prefix that homi.pc cannot carry: pkg-config splits its output at
/// whitespace, and the variables of a .pc file expand `$`; quoting in a .pc file is
/// not portable across pkg-config and pkgconf.
fn check_prefix(prefix: &Path) -> anyhow::Result<()> {
    let Some(text) = prefix.to_str() else {
        bail!("--prefix {}: not UTF-8, which homi.pc cannot carry", prefix.display());
    };
    if let Some(c) = text.chars().find(|c| c.is_whitespace() || "\"'$\\#".contains(*c)) {
        bail!("--prefix {text:?} contains {c:?}: homi.pc cannot carry it (pkg-config would split or expand it); pick a prefix without whitespace, quotes, '$', '#' or '\\'");
    }
    Ok(())
}

/// Builds the libraries and installs them, the header and homi.pc under `prefix`.
fn install(target: &Path, prefix: &Path) -> anyhow::Result<()> {
    check_prefix(prefix)?;
    run_checked(cargo().args(["build", "--release", "--quiet", "-p", "homi-capi"]))?;
    let root = repo_root();
    let release = target.join("release");
    let (lib, include, pc) = (prefix.join("lib"), prefix.join("include"), prefix.join("lib/pkgconfig"));
    for d in [&lib, &include, &pc] {
        std::fs::create_dir_all(d).with_context(|| format!("create {}", d.display()))?;
    }
    let version = env!("CARGO_PKG_VERSION");
    let real = format!("libhomi.so.{version}");
    let soname = format!("libhomi.so.{ABI_MAJOR}");
    copy(&release.join("libhomi_capi.so"), &lib.join(&real))?;
    link(&real, &lib.join(&soname))?;
    link(&soname, &lib.join("libhomi.so"))?;
    copy(&release.join("libhomi_capi.a"), &lib.join("libhomi.a"))?;
    copy(&root.join("capi/include/homi.h"), &include.join("homi.h"))?;
    let pc_text = format!(
        "prefix={}\nexec_prefix=${{prefix}}\nlibdir=${{exec_prefix}}/lib\nincludedir=${{prefix}}/include\n\n\
         Name: homi\n\
         Description: NVMe queue pairs beside the kernel's nvme driver, driven from user space\n\
         Version: {version}\n\
         Libs: -L${{libdir}} -lhomi\n\
         Libs.private: {}\n\
         Cflags: -I${{includedir}}\n",
        prefix.display(),
        native_static_libs(target)?
    );
    std::fs::write(pc.join("homi.pc"), pc_text).context("write homi.pc")?;
    Ok(())
}

fn copy(from: &Path, to: &Path) -> anyhow::Result<()> {
    // Replace rather than overwrite: a running program may have the old file mapped.
    let _ = std::fs::remove_file(to);
    std::fs::copy(from, to).with_context(|| format!("copy {} to {}", from.display(), to.display()))?;
    Ok(())
}

fn link(target: &str, at: &Path) -> anyhow::Result<()> {
    let _ = std::fs::remove_file(at);
    std::os::unix::fs::symlink(target, at).with_context(|| format!("symlink {}", at.display()))
}

/// The rustc cargo builds with: `RUSTC` where set, else the one cargo gave xtask's
/// build script (`HOMI_XTASK_RUSTC`, recorded by xtask/build.rs: the same toolchain
/// that builds libhomi.a, rustup's selection and `build.rustc` included).
fn rustc() -> PathBuf {
    match std::env::var_os("RUSTC") {
        Some(r) if !r.is_empty() => PathBuf::from(r),
        _ => PathBuf::from(env!("HOMI_XTASK_RUSTC")),
    }
}

/// The system libraries a Rust static library needs (`rustc --print
/// native-static-libs` of an empty one: the crate's own dependencies add none).
fn native_static_libs(target: &Path) -> anyhow::Result<String> {
    let dir = target.join("capi/probe");
    std::fs::create_dir_all(&dir)?;
    let src = dir.join("empty.rs");
    std::fs::write(&src, "")?;
    let rustc = rustc();
    let out = Command::new(&rustc)
        .args(["--crate-type", "staticlib", "--crate-name", "probe", "--print", "native-static-libs", "-o"])
        .arg(dir.join("libprobe.a"))
        .arg(&src)
        .output()
        .with_context(|| format!("run {}", rustc.display()))?;
    let text = String::from_utf8_lossy(&out.stderr);
    match text.lines().find_map(|l| l.split("native-static-libs: ").nth(1)) {
        Some(libs) if out.status.success() => Ok(libs.trim().to_string()),
        _ => bail!("rustc did not print native-static-libs: {text}"),
    }
}

/// Compiles the C example and the C test against the installation under `prefix`,
/// with the flags pkg-config gives, linked with libhomi.a so that they need nothing
/// at run time.
fn build_c(target: &Path, prefix: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let pkg = |args: &[&str]| -> anyhow::Result<Vec<String>> {
        let out = Command::new("pkg-config")
            .args(args)
            .arg("homi")
            .env("PKG_CONFIG_PATH", prefix.join("lib/pkgconfig"))
            .output()
            .context("run pkg-config (apt-get install pkg-config)")?;
        if !out.status.success() {
            bail!("pkg-config {args:?} homi: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).split_whitespace().map(str::to_owned).collect())
    };
    let cflags = pkg(&["--cflags"])?;
    // The static library by its file name; the system libraries it needs as listed.
    let libs: Vec<String> = pkg(&["--static", "--libs"])?
        .into_iter()
        .map(|f| if f == "-lhomi" { "-l:libhomi.a".to_string() } else { f })
        .collect();
    let root = repo_root();
    let out = bin_dir(target);
    std::fs::create_dir_all(&out)?;
    let mut built = Vec::new();
    for (src, name) in [("capi/examples/readwrite.c", "readwrite"), ("capi/tests/c/homi_test.c", "homi_test")] {
        let exe = out.join(name);
        run_checked(
            Command::new("cc")
                .args(["-std=c99", "-Wall", "-Wextra", "-Werror", "-O2", "-g"])
                .args(&cflags)
                .arg(root.join(src))
                .arg("-o")
                .arg(&exe)
                .args(&libs),
        )?;
        built.push(exe);
    }
    Ok(built)
}
