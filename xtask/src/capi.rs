//! `cargo xtask capi`: builds the C library (crate homi-capi) in release mode and
//! installs `lib/libhomi.so` (SONAME `libhomi.so.0`), `lib/libhomi.a`,
//! `include/homi.h` and `lib/pkgconfig/homi.pc` under a prefix; then compiles the C
//! example and the C test against that installation, through pkg-config, linked with
//! the static library, into `target/capi/bin` (where the in-VM suite `capi` finds
//! them).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};

use crate::{cargo, repo_root, run_checked};

/// `cargo xtask capi` arguments.
#[derive(clap::Args, Debug)]
pub struct CapiArgs {
    /// Where to install (default: target/capi/install).
    #[arg(long)]
    pub prefix: Option<PathBuf>,
}

/// `cargo xtask capi`.
pub fn run(a: &CapiArgs) -> anyhow::Result<i32> {
    let prefix = match &a.prefix {
        Some(p) => std::path::absolute(p).context("absolute --prefix")?,
        None => default_prefix(),
    };
    install(&prefix)?;
    let bins = build_c(&prefix)?;
    println!("installed into {}", prefix.display());
    for b in bins {
        println!("built {}", b.display());
    }
    Ok(0)
}

fn default_prefix() -> PathBuf {
    repo_root().join("target/capi/install")
}

/// The directory the C programs are built into, which the `capi` suite reads.
pub fn bin_dir() -> PathBuf {
    repo_root().join("target/capi/bin")
}

/// Installs into the default prefix and builds the C programs the `capi` suite runs;
/// returns their directory.
pub fn guest_binaries() -> anyhow::Result<PathBuf> {
    let prefix = default_prefix();
    install(&prefix)?;
    build_c(&prefix)?;
    Ok(bin_dir())
}

/// Builds the libraries and installs them, the header and homi.pc under `prefix`.
fn install(prefix: &Path) -> anyhow::Result<()> {
    run_checked(cargo().args(["build", "--release", "--quiet", "-p", "homi-capi"]))?;
    let root = repo_root();
    let (lib, include, pc) = (prefix.join("lib"), prefix.join("include"), prefix.join("lib/pkgconfig"));
    for d in [&lib, &include, &pc] {
        std::fs::create_dir_all(d).with_context(|| format!("create {}", d.display()))?;
    }
    let version = env!("CARGO_PKG_VERSION");
    let real = format!("libhomi.so.{version}");
    copy(&root.join("target/release/libhomi_capi.so"), &lib.join(&real))?;
    link(&real, &lib.join("libhomi.so.0"))?;
    link("libhomi.so.0", &lib.join("libhomi.so"))?;
    copy(&root.join("target/release/libhomi_capi.a"), &lib.join("libhomi.a"))?;
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
        native_static_libs()?
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

/// The system libraries a Rust static library needs (`rustc --print
/// native-static-libs` of an empty one: the crate's own dependencies add none).
fn native_static_libs() -> anyhow::Result<String> {
    let dir = repo_root().join("target/capi/probe");
    std::fs::create_dir_all(&dir)?;
    let src = dir.join("empty.rs");
    std::fs::write(&src, "")?;
    let out = Command::new("rustc")
        .args(["--crate-type", "staticlib", "--crate-name", "probe", "--print", "native-static-libs", "-o"])
        .arg(dir.join("libprobe.a"))
        .arg(&src)
        .output()
        .context("run rustc")?;
    let text = String::from_utf8_lossy(&out.stderr);
    match text.lines().find_map(|l| l.split("native-static-libs: ").nth(1)) {
        Some(libs) if out.status.success() => Ok(libs.trim().to_string()),
        _ => bail!("rustc did not print native-static-libs: {text}"),
    }
}

/// Compiles the C example and the C test against the installation under `prefix`,
/// with the flags pkg-config gives, linked with libhomi.a so that they need nothing
/// at run time.
fn build_c(prefix: &Path) -> anyhow::Result<Vec<PathBuf>> {
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
    let out = bin_dir();
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
