//! Loading and unloading homi.ko, and reading the kernel log.

use std::ffi::CString;
use std::fs::File;
use std::io::Read;
use std::path::Path;

use anyhow::{bail, Context};
use nix::kmod::{delete_module, finit_module, DeleteModuleFlags, ModuleInitFlags};

/// Loads the module at `path` with `params` (e.g. `"foo=1"`).
pub fn load(path: &Path, params: &str) -> anyhow::Result<()> {
    let f = File::open(path).with_context(|| format!("open {}", path.display()))?;
    finit_module(&f, &CString::new(params)?, ModuleInitFlags::empty())
        .with_context(|| format!("finit_module({})", path.display()))?;
    Ok(())
}

/// Unloads the module `name`, failing rather than waiting if it is in use.
pub fn unload(name: &str) -> nix::Result<()> {
    delete_module(&CString::new(name).expect("no NUL"), DeleteModuleFlags::O_NONBLOCK)
}

/// Whether the module `name` is loaded.
pub fn loaded(name: &str) -> bool {
    Path::new("/sys/module").join(name).exists()
}

/// Kernel log patterns that mean the kernel warned or crashed: `tests/splats.txt`.
fn splat_patterns() -> impl Iterator<Item = &'static str> {
    include_str!("../splats.txt").lines().filter(|l| !l.is_empty() && !l.starts_with('#'))
}

/// Returns the kernel log lines that look like a warning or a crash.
pub fn splats() -> anyhow::Result<Vec<String>> {
    Ok(kernel_log()?.lines().filter(|l| splat_patterns().any(|s| l.contains(s))).map(str::to_owned).collect())
}

/// Reads the whole kernel ring buffer through `/dev/kmsg`, without blocking.
pub fn kernel_log() -> anyhow::Result<String> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK)
        .open("/dev/kmsg")
        .context("open /dev/kmsg")?;
    let mut out = String::new();
    let mut rec = vec![0u8; 8192];
    loop {
        match f.read(&mut rec) {
            Ok(0) => break,
            Ok(n) => {
                // Each read returns one record: "prio,seq,usec,flags;message\n".
                let s = String::from_utf8_lossy(&rec[..n]);
                if let Some((_, msg)) = s.split_once(';') {
                    out.push_str(msg.lines().next().unwrap_or(""));
                    out.push('\n');
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            // A record overwritten while we read; carry on with the next one.
            Err(e) if e.raw_os_error() == Some(nix::libc::EPIPE) => continue,
            Err(e) => bail!("read /dev/kmsg: {e}"),
        }
    }
    Ok(out)
}
