//! `cargo xtask perf`: boots one VM and runs `homi bench` on its emulated controller,
//! every path side by side; copies the results to `target/bench/vm/`.

use anyhow::{bail, Context};

use crate::vm::{self, VmOptions};
use crate::{build_guest_binaries, kbuild, repo_root};

pub fn run(opts: &VmOptions, runtime: f64) -> anyhow::Result<i32> {
    let k = kbuild::kernel(&opts.kernel)?;
    let ko = kbuild::kmod(&k)?;
    let bin = build_guest_binaries()?;
    // io_uring-poll needs polled queues in the nvme driver.
    let append = format!("{} nvme.poll_queues=1", opts.append).trim().to_string();
    let opts = VmOptions { append, quiet: true, ..opts.clone() };
    let script = format!(
        "set -e\ninsmod {}\n{}/homi bench --out \"$HOMI_OUT/bench\" --runtime {runtime}\n",
        ko.display(),
        bin.display()
    );
    let run = vm::boot_named(&k, &opts, &script, "perf")?;
    if run.exit_status != 0 {
        bail!("homi bench failed in the VM (exit {}); see {}", run.exit_status, run.dir.join("serial.log").display());
    }
    let dest = repo_root().join("target/bench/vm");
    std::fs::create_dir_all(&dest)?;
    for f in ["results.json", "results.csv", "results.svg", "results.md"] {
        std::fs::copy(run.dir.join("out/bench").join(f), dest.join(f)).with_context(|| format!("copy {f}"))?;
    }
    println!(
        "one VM ({}, {} vCPUs, emulated NVMe, dbcs {}{}), 4 KiB I/O, one thread, {runtime} s per run:\n",
        run.accel,
        opts.smp,
        if opts.dbcs { "on" } else { "off" },
        if opts.append.is_empty() { String::new() } else { format!(", kernel: {}", opts.append) }
    );
    print!("{}", std::fs::read_to_string(dest.join("results.md"))?);
    println!("\nwritten to {}", dest.display());
    Ok(0)
}

/// `cargo xtask doorbells`: the homi path at QD 1, 8 and 32 on two controllers of one
/// VM, one with shadow doorbells (`dbcs=on`) and one without, through nvme-pci's user
/// queues; prints MMIO doorbell writes per I/O side by side.
pub fn doorbells(opts: &VmOptions, runtime: f64) -> anyhow::Result<i32> {
    let k = kbuild::kernel(&opts.kernel)?;
    let ko = kbuild::kmod(&k)?;
    let bin = build_guest_binaries()?;
    let append = format!("{} nvme.user_queues=4", opts.append).trim().to_string();
    let opts = VmOptions {
        append,
        quiet: true,
        dbcs: true,
        second_controller: true,
        second_dbcs: Some(false),
        ..opts.clone()
    };
    let mut script = format!("set -e\ninsmod {}\n", ko.display());
    for c in 0..2 {
        for qd in QDS {
            script += &format!(
                "{}/homi perf --path homi --rw randread --qd {qd} --runtime {runtime} --nvme /dev/nvme{c} --json \
                 > \"$HOMI_OUT/nvme{c}-qd{qd}.json\"\n",
                bin.display()
            );
        }
    }
    let run = vm::boot_named(&k, &opts, &script, "doorbells")?;
    if run.exit_status != 0 {
        bail!("homi perf failed in the VM (exit {}); see {}", run.exit_status, run.dir.join("serial.log").display());
    }
    println!(
        "one VM ({}, {} vCPUs), two emulated controllers, nvme.user_queues=4, homi path, 4 KiB random reads, \
         one thread, {runtime} s per run:\n",
        run.accel, opts.smp
    );
    println!("| QD | doorbells | IOPS | doorbell updates/IO | MMIO writes/IO |");
    println!("|---:|---|---:|---:|---:|");
    for qd in QDS {
        for c in 0..2 {
            let text = run.out_file(&format!("nvme{c}-qd{qd}.json")).context("a perf report is missing")?;
            let v: serde_json::Value = serde_json::from_str(&text)?;
            let d = &v["doorbells"];
            let kind =
                if d["shadow"].as_bool().context("doorbells.shadow")? { "shadow + event index" } else { "MMIO only" };
            println!(
                "| {qd} | {kind} | {:.0} | {:.3} | {:.3} |",
                v["iops"].as_f64().unwrap_or(0.0),
                d["updates_per_io"].as_f64().unwrap_or(0.0),
                d["mmio_per_io"].as_f64().unwrap_or(0.0)
            );
        }
    }
    Ok(0)
}

const QDS: [u32; 3] = [1, 8, 32];
