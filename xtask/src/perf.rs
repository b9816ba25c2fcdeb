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
        "one VM ({}, {} vCPUs, emulated NVMe, dbcs off), 4 KiB I/O, one thread, {runtime} s per run:\n",
        run.accel, opts.smp
    );
    print!("{}", std::fs::read_to_string(dest.join("results.md"))?);
    println!("\nwritten to {}", dest.display());
    Ok(0)
}
