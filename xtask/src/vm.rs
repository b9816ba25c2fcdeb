//! The test VM: QEMU with emulated NVMe, the guest kernel, and the host's root shared
//! read-only over 9p so host-built binaries run inside unchanged.

use std::fmt;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};

use crate::kbuild::{self, Kernel, KernelArgs};
use crate::repo_root;

/// Which accelerator QEMU uses.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accel {
    /// Software emulation: slow, but boots everywhere (the default).
    Tcg,
    /// KVM, without a probe: fails or hangs where KVM guests do.
    Kvm,
    /// KVM if a cached boot probe on this machine succeeded, else TCG.
    Auto,
}

impl fmt::Display for Accel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Accel::Tcg => "tcg",
            Accel::Kvm => "kvm",
            Accel::Auto => "auto",
        })
    }
}

/// The VM's shape: controllers, namespaces, features of the emulated NVMe.
#[derive(Args, Clone, Debug)]
pub struct VmOptions {
    #[command(flatten)]
    pub kernel: KernelArgs,
    /// Shadow doorbells (NVMe Doorbell Buffer Config) on the emulated controllers.
    /// Off is how a bare-metal controller without them behaves.
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set)]
    pub dbcs: bool,
    /// I/O queue pairs each emulated controller grants.
    #[arg(long, default_value_t = 64)]
    pub max_ioqpairs: u32,
    /// Controller Memory Buffer size in MiB (0: none).
    #[arg(long, default_value_t = 0)]
    pub cmb_size_mb: u32,
    /// Namespaces per controller.
    #[arg(long, default_value_t = 1)]
    pub namespaces: u32,
    /// Size of each namespace in MiB (sparse image files).
    #[arg(long, default_value_t = 1024)]
    pub ns_size_mb: u64,
    /// Give the last namespace of each controller 4096-byte LBAs (the others have 512).
    #[arg(long)]
    pub last_ns_4k: bool,
    /// Add a second NVMe controller.
    #[arg(long)]
    pub second_controller: bool,
    /// Shadow doorbells on the second controller (default: as `--dbcs`).
    #[arg(long, action = clap::ArgAction::Set)]
    pub second_dbcs: Option<bool>,
    /// The second controller's CMB size in MiB (default: as `--cmb-size-mb`).
    #[arg(long)]
    pub second_cmb_size_mb: Option<u32>,
    /// Put the controllers behind one emulated PCIe switch (a root port, an X3130
    /// upstream port, a downstream port per controller), where P2PDMA lets one
    /// controller reach another's CMB. Without it they sit on q35's root bus, whose
    /// host bridge P2PDMA does not know.
    #[arg(long)]
    pub switch: bool,
    /// Put the controllers behind an emulated Intel IOMMU, in strict mode.
    #[arg(long)]
    pub iommu: bool,
    /// Virtual CPUs.
    #[arg(long, default_value_t = 2)]
    pub smp: u32,
    /// Guest memory.
    #[arg(long, default_value = "2G")]
    pub mem: String,
    /// Accelerator.
    #[arg(long, value_enum, default_value_t = Accel::Tcg)]
    pub accel: Accel,
    /// Extra guest kernel command-line parameters (e.g. `nvme.poll_queues=1`).
    #[arg(long, default_value = "")]
    pub append: String,
    /// Kill the VM after this many seconds.
    #[arg(long, default_value_t = 900)]
    pub timeout: u64,
    /// Do not echo the serial console (it is still logged).
    #[arg(long)]
    pub quiet: bool,
}

/// `cargo xtask vm`.
#[derive(Args, Debug)]
pub struct VmArgs {
    #[command(flatten)]
    pub opts: VmOptions,
    /// Do not load homi.ko before the command.
    #[arg(long)]
    pub no_kmod: bool,
    /// The run's directory under target/vm/ (several VMs may run side by side).
    #[arg(long, default_value = "vm")]
    pub name: String,
    /// The command to run in the guest (after `--`), in the repository root.
    #[arg(trailing_var_arg = true, required = true, allow_hyphen_values = true)]
    pub cmd: Vec<String>,
}

/// What one boot produced.
pub struct VmRun {
    /// The guest command's exit status.
    pub exit_status: i32,
    /// Seconds from starting QEMU to the guest running the command.
    pub boot_secs: f64,
    /// The accelerator used.
    pub accel: Accel,
    /// The run's directory: serial.log, out/ (the guest's results share), images.
    pub dir: PathBuf,
}

impl VmRun {
    /// The guest's kernel log, dumped after the command finished.
    pub fn dmesg(&self) -> String {
        fs::read_to_string(self.dir.join("out/dmesg.txt")).unwrap_or_default()
    }

    /// A file the guest wrote under `$HOMI_OUT`.
    pub fn out_file(&self, name: &str) -> Option<String> {
        fs::read_to_string(self.dir.join("out").join(name)).ok()
    }
}

/// The lines of `log` that match a pattern of `tests/splats.txt`: the kernel warned or
/// crashed.
pub fn splats(log: &str) -> Vec<&str> {
    let patterns: Vec<&str> =
        include_str!("../../tests/splats.txt").lines().filter(|l| !l.is_empty() && !l.starts_with('#')).collect();
    log.lines().filter(|l| patterns.iter().any(|s| l.contains(s))).collect()
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// `cargo xtask vm`: loads homi.ko (unless told not to), runs the command, returns
/// its exit status.
pub fn run_cli(args: &VmArgs) -> anyhow::Result<i32> {
    let k = kbuild::kernel(&args.opts.kernel)?;
    let mut script = String::from("set -e\n");
    if !args.no_kmod {
        let ko = kbuild::kmod(&k)?;
        script += &format!("insmod {}\n", shell_quote(&ko.display().to_string()));
    }
    script += "exec";
    for a in &args.cmd {
        script += " ";
        script += &shell_quote(a);
    }
    script += "\n";
    let run = boot_named(&k, &args.opts, &script, &args.name)?;
    eprintln!(
        "vm: booted to the command in {:.2}s ({}); exit status {}; serial log {}",
        run.boot_secs,
        run.accel,
        run.exit_status,
        run.dir.join("serial.log").display()
    );
    let dmesg = run.dmesg();
    let bad = splats(&dmesg);
    if !bad.is_empty() {
        eprintln!("vm: the guest kernel warned:\n{}", bad.join("\n"));
        return Ok(run.exit_status.max(1));
    }
    Ok(run.exit_status)
}

/// Boots the VM under `target/vm/demo`, runs `script` with `/bin/sh` in the repository
/// root, and powers off.
pub fn boot(k: &Kernel, opts: &VmOptions, script: &str) -> anyhow::Result<VmRun> {
    boot_named(k, opts, script, "demo")
}

/// Boots the VM with its files under `target/vm/NAME` (recreated for each run).
pub fn boot_named(k: &Kernel, opts: &VmOptions, script: &str, name: &str) -> anyhow::Result<VmRun> {
    let accel = resolve_accel(k, opts)?;
    match boot_with(k, opts, script, name, accel) {
        Err(e) if e.downcast_ref::<BootStalled>().is_some() => {
            // Seen once on a 2-core host saturated by a kernel build: the guest printed
            // nothing at all. Say so, keep the evidence, and try once more.
            let kept = repo_root().join("target/vm").join(format!("{name}.stalled"));
            let _ = fs::remove_dir_all(&kept);
            let _ = fs::rename(repo_root().join("target/vm").join(name), &kept);
            eprintln!("vm: WARNING: {e}; its files are in {}; booting again", kept.display());
            boot_with(k, opts, script, name, accel)
        }
        other => other,
    }
}

/// The guest showed no sign of life within [`BOOT_DEADLINE`].
#[derive(Debug)]
struct BootStalled;

impl fmt::Display for BootStalled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the guest did not reach its init within {}s", BOOT_DEADLINE.as_secs())
    }
}

impl std::error::Error for BootStalled {}

/// A guest that boots in 3 s under TCG and has not reached init after this is stuck.
const BOOT_DEADLINE: Duration = Duration::from_secs(120);

fn boot_with(k: &Kernel, opts: &VmOptions, script: &str, name: &str, accel: Accel) -> anyhow::Result<VmRun> {
    let dir = repo_root().join("target/vm").join(name);
    if dir.exists() {
        fs::remove_dir_all(&dir).with_context(|| format!("remove {}", dir.display()))?;
    }
    let out = dir.join("out");
    fs::create_dir_all(&out)?;
    fs::write(out.join("cmd.sh"), format!("cd {}\n{script}", shell_quote(&repo_root().display().to_string())))?;

    let mut qemu = Command::new("qemu-system-x86_64");
    qemu.args(["-machine", "q35", "-accel", &accel.to_string(), "-cpu", "max"])
        .args(["-smp", &opts.smp.to_string(), "-m", &opts.mem])
        .args(["-display", "none", "-monitor", "none", "-serial", "stdio", "-no-reboot"])
        .arg("-kernel")
        .arg(k.bzimage())
        .args(["-append", &kernel_cmdline(opts)]);
    if opts.iommu {
        // The IOMMU must be created before the devices it translates for.
        qemu.args(["-device", "intel-iommu,intremap=off"]);
    }
    for (tag, path, ro) in [("homiroot", Path::new("/"), true), ("homiout", out.as_path(), false)] {
        qemu.arg("-fsdev").arg(format!(
            "local,id={tag},path={},security_model=none,multidevs=remap{}",
            path.display(),
            if ro { ",readonly=on" } else { "" }
        ));
        qemu.args(["-device", &format!("virtio-9p-pci,fsdev={tag},mount_tag={tag}")]);
    }
    let controllers = if opts.second_controller { 2 } else { 1 };
    if opts.switch {
        qemu.args(["-device", "pcie-root-port,id=homirp,bus=pcie.0,chassis=1,slot=1"]);
        qemu.args(["-device", "x3130-upstream,id=homiup,bus=homirp"]);
    }
    for c in 0..controllers {
        let mut dev = format!(
            "nvme,id=nvme{c},serial=homi{c},max_ioqpairs={},dbcs={}",
            opts.max_ioqpairs,
            if (c == 0 && opts.dbcs) || (c == 1 && opts.second_dbcs.unwrap_or(opts.dbcs)) { "on" } else { "off" }
        );
        if opts.switch {
            qemu.args(["-device", &format!("xio3130-downstream,id=homidp{c},bus=homiup,chassis={},slot=0", c + 2)]);
            dev += &format!(",bus=homidp{c}");
        }
        let cmb = if c == 1 { opts.second_cmb_size_mb.unwrap_or(opts.cmb_size_mb) } else { opts.cmb_size_mb };
        if cmb > 0 {
            dev += &format!(",cmb_size_mb={cmb}");
        }
        qemu.args(["-device", &dev]);
        for n in 1..=opts.namespaces {
            let img = dir.join(format!("nvme{c}n{n}.img"));
            fs::File::create(&img)?.set_len(opts.ns_size_mb << 20)?;
            qemu.arg("-drive").arg(format!("file={},if=none,id=c{c}n{n},format=raw,cache=unsafe", img.display()));
            let lba = if opts.last_ns_4k && n == opts.namespaces {
                ",logical_block_size=4096,physical_block_size=4096"
            } else {
                ""
            };
            qemu.args(["-device", &format!("nvme-ns,drive=c{c}n{n},bus=nvme{c},nsid={n}{lba}")]);
        }
    }
    qemu.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::inherit());

    let start = Instant::now();
    let mut child = qemu.spawn().context("start qemu-system-x86_64 (run `cargo xtask setup`)")?;
    let stdout = child.stdout.take().expect("piped");
    let log_path = dir.join("serial.log");
    let quiet = opts.quiet;
    let up = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let up_seen = up.clone();
    let reader = std::thread::spawn(move || -> anyhow::Result<Option<f64>> {
        let mut log = fs::File::create(&log_path)?;
        let mut booted = None;
        for line in BufReader::new(stdout).split(b'\n') {
            let line = line?;
            let line = String::from_utf8_lossy(&line);
            let line = line.trim_end_matches('\r');
            writeln!(log, "{line}")?;
            if booted.is_none() && line.starts_with("homi-guest: up") {
                booted = Some(start.elapsed().as_secs_f64());
                up_seen.store(true, std::sync::atomic::Ordering::Release);
            }
            if !quiet {
                println!("{line}");
            }
        }
        Ok(booted)
    });

    let deadline = start + Duration::from_secs(opts.timeout);
    let mut stalled = false;
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break Some(s);
        }
        stalled = !up.load(std::sync::atomic::Ordering::Acquire) && start.elapsed() > BOOT_DEADLINE;
        if stalled || Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    if stalled {
        let _ = reader.join();
        return Err(BootStalled.into());
    }
    let booted = reader.join().expect("serial reader panicked")?;
    let serial = dir.join("serial.log");
    let Some(status) = status else {
        bail!("the VM ran past {}s and was killed; see {}", opts.timeout, serial.display());
    };
    let exit_status = match fs::read_to_string(out.join("exit-status")) {
        Ok(s) => s.trim().parse().context("parse exit-status")?,
        Err(_) => bail!("the guest did not finish its command (qemu {status}); see {}", serial.display()),
    };
    let boot_secs = booted.context("the guest never reported it was up")?;
    Ok(VmRun { exit_status, boot_secs, accel, dir })
}

fn kernel_cmdline(opts: &VmOptions) -> String {
    let init = repo_root().join("qemu/guest-init.sh");
    let mut c = format!(
        "console=ttyS0 root=homiroot rootfstype=9p \
         rootflags=trans=virtio,version=9p2000.L,msize=262144,cache=loose ro \
         init={} panic=-1 quiet loglevel=4",
        init.display()
    );
    if opts.iommu {
        c += " intel_iommu=on iommu.strict=1";
    }
    if !opts.append.is_empty() {
        c += " ";
        c += &opts.append;
    }
    c
}

/// Picks the accelerator: `auto` means KVM only where a boot probe on this machine
/// succeeded (cached), since KVM guests hang after firmware on some hosts.
fn resolve_accel(k: &Kernel, opts: &VmOptions) -> anyhow::Result<Accel> {
    if opts.accel != Accel::Auto {
        return Ok(opts.accel);
    }
    if !Path::new("/dev/kvm").exists() {
        return Ok(Accel::Tcg);
    }
    let cache = PathBuf::from(kbuild::cache_var("HOMI_CACHE")?).join("kvm-probe");
    if let Ok(s) = fs::read_to_string(&cache) {
        return Ok(if s.trim() == "ok" { Accel::Kvm } else { Accel::Tcg });
    }
    eprintln!("vm: probing whether KVM guests boot here (once; cached in {})", cache.display());
    let probe = VmOptions { timeout: 60, quiet: true, ..opts.clone() };
    let ok = matches!(boot_with(k, &probe, "true\n", "kvm-probe", Accel::Kvm), Ok(r) if r.exit_status == 0);
    fs::write(&cache, if ok { "ok\n" } else { "fail\n" })?;
    eprintln!("vm: KVM boot probe {}", if ok { "succeeded: using KVM" } else { "failed: using TCG" });
    Ok(if ok { Accel::Kvm } else { Accel::Tcg })
}

#[cfg(test)]
mod tests {
    use super::splats;

    #[test]
    fn splats_finds_warnings_and_ignores_the_rest() {
        let log = "[ 1.0] nvme nvme0: 2/0/0 default/read/poll queues\n\
                   [ 2.0] WARNING: CPU: 0 PID: 1 at mm/x.c:1\n\
                   [ 3.0] BUG: KASAN: use-after-free in f\n";
        assert_eq!(splats(log).len(), 2);
        assert!(splats("[ 1.0] homi: ABI 0.3 loaded\n").is_empty());
    }
}
