//! `cargo xtask test`: every suite, one closing line.

use std::process::Command;

use anyhow::{bail, Context};
use clap::Args;

use crate::kbuild;
use crate::tally::Tally;
use crate::vm::{self, VmOptions};
use crate::{build_guest_binaries, cargo, repo_root};

/// `cargo xtask test`.
#[derive(Args, Debug)]
pub struct TestArgs {
    /// Skip `setup` (package installs); for machines already set up.
    #[arg(long)]
    pub no_setup: bool,
    /// Host checks only: no kernel, no kmod, no VM.
    #[arg(long)]
    pub host_only: bool,
    /// Skip the debug-kernel boot (KASAN, lockdep, kmemleak, soak and fuzz runs).
    #[arg(long)]
    pub no_debug_kernel: bool,
    /// Controller resets in the debug kernel's soak run.
    #[arg(long, default_value_t = 50)]
    pub soak_resets: u32,
    /// Queue holders SIGKILLed mid-I/O in the debug kernel's soak run.
    #[arg(long, default_value_t = 200)]
    pub soak_kills: u32,
    /// Seconds of ioctl and mmap fuzzing on the debug kernel.
    #[arg(long, default_value_t = 120)]
    pub fuzz_secs: u64,
    #[command(flatten)]
    pub opts: VmOptions,
}

/// Runs everything and prints `N passed, N failed` last.
pub fn run(args: &TestArgs) -> anyhow::Result<i32> {
    if !args.no_setup {
        crate::run_checked(Command::new("bash").arg(repo_root().join("qemu/setup.sh")))?;
    }
    // Choose the kernel first, so that a kernel that cannot be had stops the run at
    // once, before the host checks.
    if !args.host_only && std::env::var_os("HOMI_KDIR").is_none() {
        kbuild::selected()?;
    }
    let mut t = Tally::default();
    host(&mut t);
    if !args.host_only {
        in_vm(args, &mut t);
    }
    Ok(t.finish())
}

/// Host unit tests, formatting and lints of the cargo workspace.
fn host(t: &mut Tally) {
    let fmt = cargo().args(["fmt", "--all", "--check"]).output();
    let fmt = fmt.map_err(anyhow::Error::from).and_then(|o| {
        if o.status.success() {
            Ok(())
        } else {
            bail!("{}", String::from_utf8_lossy(&o.stdout))
        }
    });
    t.result("host: cargo fmt --check", &fmt);

    let clippy =
        crate::run_checked(cargo().args(["clippy", "--workspace", "--all-targets", "--quiet", "--", "-D", "warnings"]));
    t.result("host: cargo clippy -D warnings", &clippy);
    let clippy = crate::run_checked(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--quiet",
        "--features",
        CUDA_FEATURES,
        "--",
        "-D",
        "warnings",
    ]));
    t.result("host: cargo clippy -D warnings, feature cuda (CUDA loaded at run time)", &clippy);

    let mut doc = cargo();
    doc.args([
        "doc",
        "--quiet",
        "--no-deps",
        "-p",
        "homi",
        "-p",
        "homi-uapi",
        "-p",
        "homi-instruments",
        "-p",
        "homi-cli",
        "--features",
        CUDA_FEATURES,
    ])
    .env("RUSTDOCFLAGS", "-D warnings");
    t.result("host: cargo doc, warnings denied", &crate::run_checked(&mut doc));

    match cargo().args(["test", "--workspace", "--features", CUDA_FEATURES]).output() {
        Ok(o) => {
            let text = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
            let (p, f) = cargo_test_counts(&text);
            if f > 0 || !o.status.success() {
                print!("{text}");
            }
            println!("host: cargo test: {p} passed, {f} failed");
            if !o.status.success() && f == 0 {
                t.record("host: cargo test", false, &text);
            }
            t.add_counts("host: cargo test failure", p, f);
        }
        Err(e) => t.record("host: cargo test", false, &e.to_string()),
    }
    gpu(t);
}

/// The crates' `cuda` features, all on.
const CUDA_FEATURES: &str = "homi/cuda,homi-instruments/cuda,homi-cli/cuda";

/// The device engine and the GPU instruments: their CUDA sources compile with NVRTC
/// alone (fetched by setup; no GPU needed), and `homi-gpucheck` runs its GPU checks,
/// which report themselves skipped where there is no CUDA driver.
fn gpu(t: &mut Tally) {
    let build = crate::run_checked(cargo().args([
        "build",
        "--release",
        "--quiet",
        "-p",
        "homi-instruments",
        "--features",
        "cuda",
        "--bin",
        "homi-gpucheck",
    ]));
    if !t.result("host: homi-gpucheck builds (feature cuda)", &build) {
        return;
    }
    let bin = repo_root().join("target/release/homi-gpucheck");
    let nvrtc = crate::kbuild::cache_var("HOMI_TOOLS").map(|d| format!("{d}/nvrtc")).unwrap_or_default();
    for (what, args) in [("compile", &["--compile-only"][..]), ("GPU", &[][..])] {
        let mut cmd = Command::new(&bin);
        cmd.args(args);
        if what == "compile" {
            cmd.env("LD_LIBRARY_PATH", &nvrtc);
        }
        match cmd.output() {
            Ok(o) => {
                let text = String::from_utf8_lossy(&o.stdout);
                let n = t.add_tap(&text);
                if n == 0 || (!o.status.success() && !text.contains("not ok")) {
                    t.record(
                        &format!("host: homi-gpucheck ({what}) reported its checks"),
                        false,
                        &String::from_utf8_lossy(&o.stderr),
                    );
                }
            }
            Err(e) => t.record(&format!("host: homi-gpucheck ({what}) runs"), false, &e.to_string()),
        }
    }
}

/// Sums the `test result: ok. N passed; M failed; ...` lines of `cargo test`.
fn cargo_test_counts(text: &str) -> (usize, usize) {
    let (mut p, mut f) = (0, 0);
    for line in text.lines().filter(|l| l.starts_with("test result:")) {
        let num = |key: &str| -> usize {
            line.split(';')
                .find_map(|part| part.trim().strip_suffix(key).map(str::trim))
                .and_then(|n| n.rsplit(' ').next())
                .and_then(|n| n.parse().ok())
                .unwrap_or(0)
        };
        p += num("passed");
        f += num("failed");
    }
    (p, f)
}

/// The kmod build and the in-VM suites.
fn in_vm(args: &TestArgs, t: &mut Tally) {
    let k = kbuild::kernel(&args.opts.kernel);
    if !t.result("kernel: guest kernel built or cached", &k) {
        return;
    }
    let k = k.expect("checked");
    t.result("kernel: checkpatch.pl --strict is clean on qemu/patches", &kbuild::checkpatch(&k));
    let stock_ko = kbuild::kmod_stock(&k);
    t.result("kmod: homi.ko builds as for a stock kernel (HOMI_STOCK=1), no warnings", &stock_ko);
    let ko = kbuild::kmod(&k);
    if !t.result("kmod: homi.ko builds with W=1 CLIPPY=1, no warnings, rustfmt-clean", &ko) {
        return;
    }
    let ko = ko.expect("checked");
    let bin = build_guest_binaries();
    if !t.result("host: guest binaries build", &bin) {
        return;
    }
    crate::fio::for_tests(t);
    let bin = bin.expect("checked");
    // The C library, its example and C test, which the `capi` suite runs.
    t.result("host: C library, example and C test build (cargo xtask capi)", &crate::capi::guest_binaries());

    let base = VmOptions { quiet: true, ..args.opts.clone() };
    let with = |o: &VmOptions, params: &str| VmOptions { append: format!("{} {params}", o.append), ..o.clone() };
    let dbcs = VmOptions { dbcs: true, ..base.clone() };
    // One boot per controller shape; each runs its suites in order. Stock mode is
    // nvme-pci with user_queues=0 (the default) and no shadow doorbells.
    let boots = [
        ("stock", base.clone(), "basic queues hardening stress unbind dmabuf"),
        ("dbcs-on", dbcs.clone(), "dbcs"),
        // The C library, the fio engine and `homi bench`, as their users run them.
        ("tools", base.clone(), "capi fio bench"),
        // File-backed I/O on file systems of their own: XFS on nsid 1, on nsid 2 a
        // partition table with ext4, XFS and a scratch partition at odd offsets, and XFS
        // on nsid 3, whose LBAs are 4096 bytes.
        ("files", VmOptions { namespaces: 3, last_ns_4k: true, ..base.clone() }, "files"),
        ("user-queues-shadow", with(&dbcs, "nvme.user_queues=16"), "basic queues stress shadow unbind capi"),
        ("user-queues-own-page", VmOptions { max_ioqpairs: 600, ..with(&dbcs, "nvme.user_queues=4") }, "placement"),
        ("no-spare", VmOptions { max_ioqpairs: base.smp, ..base.clone() }, "nospare"),
        (
            "iommu-2ctrl",
            VmOptions { iommu: true, second_controller: true, namespaces: 2, cmb_size_mb: 16, ..base.clone() },
            "shapes dmabuf",
        ),
        // Both controllers behind one PCIe switch and no IOMMU, a CMB on nvme1 only:
        // P2PDMA maps it for nvme0 with bus addresses (see the README for the IOMMU case).
        (
            "p2p-switch",
            VmOptions { second_controller: true, switch: true, second_cmb_size_mb: Some(16), ..base.clone() },
            "dmabuf",
        ),
        ("poll-queues", with(&base, "nvme.poll_queues=1 nvme.user_queues=4"), "paths"),
        ("many-queues", VmOptions { max_ioqpairs: 1100, ..base.clone() }, "manyq"),
        ("swiotlb-lockdown", with(&base, "swiotlb=force"), "swiotlb lockdown"),
    ];
    for (name, opts, suites) in boots {
        let mut flags = String::new();
        if opts.dbcs {
            flags += " --dbcs";
        }
        if let (Ok(stock), "dbcs") = (&stock_ko, suites) {
            flags += &format!(" --stock-kmod {}", stock.display());
        }
        let script = format!("{}/homi-vmtest --kmod {}{flags} {suites}\n", bin.display(), ko.display());
        vm_suites(t, &k, &opts, name, &script);
    }
    if !args.no_debug_kernel {
        debug_kernel(args, t, &bin);
    }
}

/// The debug kernel (KASAN, lockdep, kmemleak, nvme fault injection): the lifetime
/// suites, the soak runs and the fuzzer, then a kmemleak scan.
fn debug_kernel(args: &TestArgs, t: &mut Tally, bin: &std::path::Path) {
    let dk = kbuild::kernel(&kbuild::KernelArgs { debug_kernel: true });
    if !t.result("kernel: debug kernel (KASAN, lockdep, kmemleak) built or cached", &dk) {
        return;
    }
    let dk = dk.expect("checked");
    let ko = kbuild::kmod_copy(&dk, "debug", &[]);
    if !t.result("kmod: homi.ko builds against the debug kernel, no warnings", &ko) {
        return;
    }
    let ko = ko.expect("checked");
    let opts = VmOptions {
        quiet: true,
        timeout: 1800,
        kernel: kbuild::KernelArgs { debug_kernel: true },
        ..args.opts.clone()
    };
    let script = format!(
        "{}/homi-vmtest --kmod {} basic queues hardening unbind dmabuf soak:{}:{} fuzz:{}\n",
        bin.display(),
        ko.display(),
        args.soak_resets,
        args.soak_kills,
        args.fuzz_secs
    );
    vm_suites(t, &dk, &opts, "debug-kernel", &script);
    // File maps under KASAN and lockdep: leases, their breaks, the fence, and the
    // SIGKILLed holder, on file systems of their own (about 3 minutes under TCG).
    let files = VmOptions { namespaces: 3, last_ns_4k: true, ..opts };
    let script = format!("{}/homi-vmtest --kmod {} files\n", bin.display(), ko.display());
    vm_suites(t, &dk, &files, "debug-kernel-files", &script);
}

/// Boots one VM, runs `script`, and tallies what the in-VM suites reported.
///
/// A boot whose kernel log warns only before homi.ko first loaded (the debug kernel
/// has an occasional early-boot KASAN report in interrupt handling, see the README)
/// is not homi's doing: it is booted once more, and says so. The second boot counts.
fn vm_suites(t: &mut Tally, k: &kbuild::Kernel, opts: &VmOptions, name: &str, script: &str) {
    let mut run = vm::boot_named(k, opts, script, &format!("test-{name}")).context("boot the test VM");
    if let Ok(r) = &run {
        let dmesg = r.dmesg();
        if warned_before_homi(&dmesg) {
            println!(
                "vm[{name}]: the guest kernel warned before homi.ko was loaded (not homi's); booting again:\n{}",
                vm::splats(&dmesg).join("\n")
            );
            run = vm::boot_named(k, opts, script, &format!("test-{name}-again")).context("boot the test VM again");
        }
    }
    if !t.result(&format!("vm[{name}]: boots and runs its suites"), &run) {
        return;
    }
    let run = run.expect("checked");
    println!("vm[{name}]: booted to the test command in {:.2}s ({})", run.boot_secs, run.accel);
    let results = run.out_file("results.txt").unwrap_or_default();
    let n = t.add_tap(&results);
    t.record(
        &format!("vm[{name}]: suites reported their checks and exited 0"),
        n > 0 && run.exit_status == 0,
        &format!("{n} checks, exit status {}; see {}", run.exit_status, run.dir.join("serial.log").display()),
    );
    let bad = vm::splats(&run.dmesg()).into_iter().map(str::to_owned).collect::<Vec<_>>();
    t.record(&format!("vm[{name}]: guest kernel log clean"), bad.is_empty(), &bad.join("\n"));
}

/// Whether the kernel log has warnings, all of them before homi.ko first loaded.
fn warned_before_homi(dmesg: &str) -> bool {
    let bad = vm::splats(dmesg);
    let Some(loaded) = dmesg.find("homi: ABI") else {
        return false;
    };
    !bad.is_empty() && bad.iter().all(|line| dmesg.find(line).is_some_and(|at| at < loaded))
}

#[cfg(test)]
mod tests {
    use super::{cargo_test_counts, warned_before_homi};

    #[test]
    fn early_warnings_are_told_apart() {
        let early = "[0.1] BUG: KASAN: wild-memory-access in handle_edge_irq\n[3.0] homi: ABI 0.5 loaded\n";
        assert!(warned_before_homi(early));
        let late = "[3.0] homi: ABI 0.5 loaded\n[4.0] BUG: KASAN: use-after-free in f\n";
        assert!(!warned_before_homi(late));
        let both = "[0.1] WARNING: x\n[3.0] homi: ABI 0.5 loaded\n[4.0] WARNING: y\n";
        assert!(!warned_before_homi(both));
        assert!(!warned_before_homi("[0.1] WARNING: x\n"));
    }

    #[test]
    fn counts_cargo_test_summaries() {
        let text = "test result: ok. 3 passed; 0 failed; 0 ignored\n\
                    noise\n\
                    test result: FAILED. 1 passed; 2 failed; 0 ignored\n";
        assert_eq!(cargo_test_counts(text), (4, 2));
    }
}
