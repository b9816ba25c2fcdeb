//! `cargo xtask fio`: the fio ioengine `fio/homi_engine.c`, built into
//! `target/fio/libfio_homi.so` against the headers of the installed fio (Debian's
//! source package of the same version, `qemu/fetch-fio.sh`) and linked with homi's C
//! library (`libhomi.a`, installed by `cargo xtask capi` into `target/fio/capi`), so
//! that it needs nothing but fio and the C library at run time.
//!
//! Before linking, the structures the engine touches are compared with the fio binary
//! that will load it: the size of `struct thread_data` and the offset of each of its
//! fields the engine uses must appear in the machine code of an exported fio
//! function whose source uses that field (`fio/layout_probe.c` prints them under the
//! fetched headers, each with its function).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};

use crate::repo_root;
use crate::tally::Tally;

/// Where the engine is built; `homi-vmtest`'s `fio` suite looks for it here.
pub fn engine_dir() -> PathBuf {
    repo_root().join("target/fio")
}

/// Why the engine cannot be built on this machine (not a failure: the fio checks
/// report themselves skipped with it), written beside where the engine would be.
const UNAVAILABLE: &str = "unavailable.txt";

/// Why the engine build failed where it could have been built (a layout mismatch, a
/// compile error): the VM's fio checks fail with it rather than skip.
const FAILED: &str = "failed.txt";

/// What came of building the engine.
pub enum Built {
    /// The engine, at this path.
    Engine(PathBuf),
    /// It cannot be built here, and why (fio or its source cannot be had).
    Unavailable(String),
}

/// `cargo xtask fio`: builds the engine and prints its path.
pub fn run() -> anyhow::Result<i32> {
    match build()? {
        Built::Engine(so) => {
            println!("{}", so.display());
            Ok(0)
        }
        Built::Unavailable(why) => {
            eprintln!("xtask fio: cannot build the fio engine here: {why}");
            Ok(2)
        }
    }
}

/// The test runner's step: builds the engine for the VM's `fio` suite and records
/// the outcome (skipped, with the reason, where fio's source cannot be had).
pub fn for_tests(t: &mut Tally) {
    match build() {
        Ok(Built::Engine(_)) => {
            t.record("host: fio engine builds against Debian's fio headers, layout checked", true, "")
        }
        Ok(Built::Unavailable(why)) => {
            t.add_tap(&format!("skip - host: fio engine builds: {why}"));
        }
        Err(e) => {
            t.record("host: fio engine builds against Debian's fio headers, layout checked", false, &format!("{e:#}"))
        }
    }
}

/// Builds `target/fio/libfio_homi.so`, or says why it cannot be built here.
pub fn build() -> anyhow::Result<Built> {
    let dir = engine_dir();
    std::fs::create_dir_all(&dir)?;
    let so = dir.join("libfio_homi.so");
    // Nothing stale may stand in for a build that failed.
    for f in [&so, &dir.join(UNAVAILABLE), &dir.join(FAILED)] {
        if f.exists() {
            std::fs::remove_file(f).with_context(|| format!("remove {}", f.display()))?;
        }
    }
    let outcome = build_into(&dir, &so);
    match &outcome {
        Ok(Built::Unavailable(why)) => std::fs::write(dir.join(UNAVAILABLE), why)?,
        Err(e) => std::fs::write(dir.join(FAILED), format!("the engine build failed: {e:#}"))?,
        Ok(Built::Engine(_)) => {}
    }
    outcome
}

fn build_into(dir: &Path, so: &Path) -> anyhow::Result<Built> {
    let Some(fio) = which("fio") else {
        return Ok(Built::Unavailable("fio is not installed (qemu/setup.sh installs it)".into()));
    };
    // Debian's source of the installed version, configured (cached after the first run).
    let out =
        Command::new("bash").arg(repo_root().join("qemu/fetch-fio.sh")).output().context("run qemu/fetch-fio.sh")?;
    let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
    match out.status.code() {
        Some(0) => {}
        Some(2) => return Ok(Built::Unavailable(err)),
        _ => bail!("qemu/fetch-fio.sh failed ({}): {err}", out.status),
    }
    let tree = PathBuf::from(String::from_utf8(out.stdout)?.trim());
    let tree_flags = |cmd: &mut Command| {
        cmd.args(["-O2", "-g", "-Wall", "-Wextra", "-Werror", "-D_GNU_SOURCE", "-include"])
            .arg(tree.join("config-host.h"))
            .arg("-isystem")
            .arg(&tree);
    };

    // The layout of what the engine touches, against the binary that will load it.
    let probe = dir.join("layout_probe");
    let mut cc = Command::new("cc");
    tree_flags(&mut cc);
    cc.arg("-o").arg(&probe).arg(repo_root().join("fio/layout_probe.c"));
    crate::run_checked(&mut cc)?;
    let layout = Command::new(&probe).output().context("run layout_probe")?;
    if !layout.status.success() {
        bail!("fio/layout_probe failed: {}", layout.status);
    }
    let layout = String::from_utf8(layout.stdout)?;
    let disasm =
        Command::new("objdump").args(["-d", "--no-show-raw-insn"]).arg(&fio).output().context("run objdump")?;
    if !disasm.status.success() {
        bail!("objdump -d {} failed: {}", fio.display(), String::from_utf8_lossy(&disasm.stderr));
    }
    let missing = layout_mismatches(&layout, &String::from_utf8_lossy(&disasm.stdout), &exported_functions(&fio)?);
    std::fs::write(dir.join("layout.txt"), &layout)?;
    if !missing.is_empty() {
        bail!(
            "{} was built with other struct layouts than the headers in {} give (rebuild after `rm -r {}`):\n{}",
            fio.display(),
            tree.display(),
            tree.display(),
            missing.join("\n")
        );
    }

    // homi's C library, installed by `cargo xtask capi` under a prefix of our own.
    let capi = dir.join("capi");
    // Its report goes to stderr: this command's stdout is the engine's path alone.
    crate::run_checked(
        Command::new(std::env::current_exe()?)
            .arg("capi")
            .arg("--prefix")
            .arg(&capi)
            .stdout(std::process::Stdio::from(std::io::stderr())),
    )?;
    let lib = capi.join("lib/libhomi.a");
    if !lib.exists() {
        bail!("`cargo xtask capi` installed no {}", lib.display());
    }
    // The libraries libhomi.a itself needs (the Rust standard library's).
    let pc = Command::new("pkg-config")
        .args(["--static", "--libs-only-l", "homi"])
        .env("PKG_CONFIG_PATH", capi.join("lib/pkgconfig"))
        .output()
        .context("run pkg-config")?;
    if !pc.status.success() {
        bail!("pkg-config --static homi: {}", String::from_utf8_lossy(&pc.stderr));
    }
    let pc = String::from_utf8(pc.stdout)?;
    let mut cc = Command::new("cc");
    tree_flags(&mut cc);
    cc.args(["-shared", "-fPIC", "-fvisibility=hidden"])
        .arg("-I")
        .arg(capi.join("include"))
        .arg("-o")
        .arg(so)
        .arg(repo_root().join("fio/homi_engine.c"))
        .arg(&lib)
        // The C library's symbols stay inside: fio sees `ioengine` only.
        .args(["-Wl,--exclude-libs,ALL", "-Wl,--as-needed"])
        .args(pc.split_whitespace().filter(|l| *l != "-lhomi"));
    crate::run_checked(&mut cc)?;
    check_symbols(so, &fio)?;
    Ok(Built::Engine(so.to_owned()))
}

/// `path` on `$PATH`.
fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| Path::new(d).join(name)).find(|p| p.is_file())
}

/// `(start, end)` of each function `/usr/bin/fio` exports (`nm -D -S`: fio is
/// linked with `-rdynamic` for external engines, so its functions keep their names).
fn exported_functions(fio: &Path) -> anyhow::Result<HashMap<String, (u64, u64)>> {
    let o = Command::new("nm").args(["-D", "-S", "--defined-only"]).arg(fio).output().context("run nm")?;
    if !o.status.success() {
        bail!("nm -D -S {}: {}", fio.display(), String::from_utf8_lossy(&o.stderr));
    }
    Ok(function_table(&String::from_utf8_lossy(&o.stdout)))
}

/// Parses `nm -S` lines (`ADDR SIZE T NAME`) of text symbols.
fn function_table(nm: &str) -> HashMap<String, (u64, u64)> {
    nm.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let [addr, size, kind, name] = f[..] else { return None };
            if !kind.eq_ignore_ascii_case("t") {
                return None;
            }
            let (addr, size) = (u64::from_str_radix(addr, 16).ok()?, u64::from_str_radix(size, 16).ok()?);
            Some((name.to_string(), (addr, addr + size)))
        })
        .collect()
}

/// The instructions of `objdump -d` output whose address lies in `[start, end)`.
fn instructions_in(disasm: &str, (start, end): (u64, u64)) -> String {
    let mut out = String::new();
    for line in disasm.lines() {
        let Some((addr, insn)) = line.trim_start().split_once(":\t") else { continue };
        let Ok(addr) = u64::from_str_radix(addr, 16) else { continue };
        if (start..end).contains(&addr) {
            out.push(' ');
            out.push_str(insn);
            out.push('\n');
        }
    }
    out
}

/// The checked lines of `layout_probe`'s output that the disassembly contradicts:
/// a `disp` offset must be a displacement (`0x2e610(%rbx)`), an `imm` size an
/// immediate (`$0x2ee38,`), written exactly (a neighbouring field's value 8 bytes off
/// is another string and does not count). A line naming a function is looked for in
/// that function's instructions only: the fio source has that function read or write
/// the field, so the value that fio was compiled with must be there. A line without
/// one is looked for anywhere in the binary, which proves little (large constants
/// recur), and says so in the reasons a caller can print.
fn layout_mismatches(layout: &str, disasm: &str, funcs: &HashMap<String, (u64, u64)>) -> Vec<String> {
    let mut missing = Vec::new();
    for line in layout.lines() {
        let mut it = line.split_whitespace();
        let (Some(kind), Some(name), Some(value)) = (it.next(), it.next(), it.next()) else {
            continue;
        };
        let Ok(value) = value.parse::<u64>() else {
            continue;
        };
        let func = it.next();
        let scope = match func {
            Some(f) => match funcs.get(f) {
                Some(&range) => std::borrow::Cow::Owned(instructions_in(disasm, range)),
                None => {
                    missing.push(format!("  {name}: the binary exports no function {f} to check it in"));
                    continue;
                }
            },
            None => std::borrow::Cow::Borrowed(disasm),
        };
        let found = match kind {
            "disp" => scope.contains(&format!(" {value:#x}(%")) || scope.contains(&format!(",{value:#x}(%")),
            "imm" => scope.contains(&format!("${value:#x},")),
            _ => continue,
        };
        if !found {
            let place = func.map_or_else(|| "the binary".to_string(), |f| format!("{f}()"));
            missing.push(format!("  {name} = {value} ({value:#x}) never appears as {kind} in {place}"));
        }
    }
    missing
}

/// The engine exports `ioengine` alone, and what it needs outright (not weakly) is
/// fio's or a versioned system library's: nothing of homi's is left undefined.
fn check_symbols(so: &Path, fio: &Path) -> anyhow::Result<()> {
    // (type letter, name) of each symbol `nm` lists.
    let nm = |args: &[&str], f: &Path| -> anyhow::Result<Vec<(String, String)>> {
        let o = Command::new("nm").args(args).arg(f).output().context("run nm")?;
        if !o.status.success() {
            bail!("nm {}: {}", f.display(), String::from_utf8_lossy(&o.stderr));
        }
        Ok(String::from_utf8(o.stdout)?
            .lines()
            .filter_map(|l| {
                let mut it = l.split_whitespace().rev();
                let name = it.next()?;
                Some((it.next()?.to_owned(), name.to_owned()))
            })
            .collect())
    };
    let exported: Vec<String> =
        nm(&["-D", "--defined-only"], so)?.into_iter().map(|(_, n)| n).filter(|n| !n.starts_with('_')).collect();
    if exported != ["ioengine"] {
        bail!("{} exports {exported:?}; only `ioengine` should be visible", so.display());
    }
    let from_fio: Vec<String> = nm(&["-D", "--defined-only"], fio)?.into_iter().map(|(_, n)| n).collect();
    let unresolved: Vec<String> = nm(&["-D", "--undefined-only"], so)?
        .into_iter()
        .filter(|(t, n)| t == "U" && !n.contains('@') && !from_fio.contains(n))
        .map(|(_, n)| n)
        .collect();
    if !unresolved.is_empty() {
        bail!("{} needs symbols neither fio nor a system library defines: {unresolved:?}", so.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{function_table, layout_mismatches};

    #[test]
    fn layout_constants_are_found_in_their_functions() {
        let nm = "0000000000003000 0000000000000010 T close_ioengine\n0000000000004000 0000000000000008 T other\n";
        let funcs = function_table(nm);
        let disasm = "  2db62:\timul   $0x2ee38,%rbx,%rbx\n  3000:\tmov    0x2e610(%rbx),%rax\n  \
                      4000:\tmov    0x2e618(%rbx),%rax\n";
        let layout = "imm sizeof(thread_data) 192056\ndisp thread_data.io_ops_data 189968 close_ioengine\n\
                      info io_u.ddir 44\n";
        assert!(layout_mismatches(layout, disasm, &funcs).is_empty());
        // Moved by 8: the value is in the binary, but not in the function that uses it.
        let moved = "disp thread_data.io_ops_data 189976 close_ioengine\n";
        assert_eq!(layout_mismatches(moved, disasm, &funcs).len(), 1);
        let anywhere = "disp thread_data.io_ops_data 189976\n";
        assert!(layout_mismatches(anywhere, disasm, &funcs).is_empty());
        let unknown = "disp thread_data.io_ops_data 189968 no_such_function\n";
        assert_eq!(layout_mismatches(unknown, disasm, &funcs).len(), 1);
    }
}
