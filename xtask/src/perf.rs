//! `cargo xtask perf`: boots one VM and runs `homi bench` on its emulated controller:
//! every path on the fixed matrix, repeated and interleaved, for the README table, and
//! (unless `--no-sweep`) a small QD x size sweep of io_uring and homi for the plots;
//! copies the results to `target/bench/vm/` and `target/bench/vm/sweep/`.

use std::time::Instant;

use anyhow::{bail, Context};

use crate::vm::{self, VmOptions};
use crate::{build_guest_binaries, kbuild, repo_root};

/// `cargo xtask perf` arguments. The defaults take about 4 minutes under TCG.
#[derive(clap::Args, Debug)]
pub struct PerfArgs {
    #[command(flatten)]
    pub opts: VmOptions,
    /// Seconds per run of the matrix.
    #[arg(long, default_value_t = 1.5)]
    pub runtime: f64,
    /// Repetitions of each matrix run, interleaved across the paths.
    #[arg(long, default_value_t = 7)]
    pub reps: u32,
    /// Skip the QD x size sweep (and its plots).
    #[arg(long)]
    pub no_sweep: bool,
    /// Seconds per run of the sweep.
    #[arg(long, default_value_t = 1.0)]
    pub sweep_runtime: f64,
    /// Repetitions of each sweep run.
    #[arg(long, default_value_t = 3)]
    pub sweep_reps: u32,
    /// Instead of the matrix: `homi perf --file` on a 256 MiB file of XFS on a second
    /// namespace (io_uring with O_DIRECT on the file, passthrough at the file's LBAs and
    /// homi through a file map, reading the same blocks), random and sequential 4 KiB
    /// reads at QD 1 and 32, `--runtime` seconds each.
    #[arg(long)]
    pub file: bool,
}

/// The sweep: io_uring against homi, 4 KiB to 64 KiB, QD 1 to 32, random reads.
const SWEEP: &str = "--paths io_uring,homi --rw randread --bs 4k,16k,64k --qd 1,8,32";

pub fn run(a: &PerfArgs) -> anyhow::Result<i32> {
    if a.file {
        return file(a);
    }
    let start = Instant::now();
    let k = kbuild::kernel(&a.opts.kernel)?;
    let ko = kbuild::kmod(&k)?;
    let bin = build_guest_binaries()?;
    // io_uring-poll needs polled queues in the nvme driver.
    let append = format!("{} nvme.poll_queues=1", a.opts.append).trim().to_string();
    let opts = VmOptions { append, quiet: true, ..a.opts.clone() };
    let homi = bin.join("homi");
    let mut script = format!(
        "set -e\ninsmod {}\n{} bench --out \"$HOMI_OUT/bench\" --runtime {} --reps {}\n",
        ko.display(),
        homi.display(),
        a.runtime,
        a.reps
    );
    if !a.no_sweep {
        script += &format!(
            "{} bench --out \"$HOMI_OUT/sweep\" {SWEEP} --runtime {} --reps {}\n",
            homi.display(),
            a.sweep_runtime,
            a.sweep_reps
        );
    }
    let run = vm::boot_named(&k, &opts, &script, "perf")?;
    if run.exit_status != 0 {
        bail!("homi bench failed in the VM (exit {}); see {}", run.exit_status, run.dir.join("serial.log").display());
    }
    let dest = repo_root().join("target/bench/vm");
    let copy_dir = |from: &str, to: &std::path::Path| -> anyhow::Result<Vec<String>> {
        std::fs::create_dir_all(to)?;
        let mut names = Vec::new();
        for e in std::fs::read_dir(run.dir.join("out").join(from)).with_context(|| format!("read out/{from}"))? {
            let e = e?;
            let name = e.file_name().to_string_lossy().into_owned();
            std::fs::copy(e.path(), to.join(&name)).with_context(|| format!("copy {name}"))?;
            names.push(name);
        }
        names.sort();
        Ok(names)
    };
    copy_dir("bench", &dest)?;
    let plots: Vec<String> = if a.no_sweep {
        Vec::new()
    } else {
        copy_dir("sweep", &dest.join("sweep"))?.into_iter().filter(|n| n.ends_with(".svg")).collect()
    };
    println!(
        "one VM ({}, {} vCPUs, emulated NVMe, dbcs {}{}), 4 KiB I/O, one thread; each path {} times for {} s, \
         interleaved; median (min-max); vs io_uring: per repetition pair:\n",
        run.accel,
        opts.smp,
        if opts.dbcs { "on" } else { "off" },
        if opts.append.is_empty() { String::new() } else { format!(", kernel: {}", opts.append) },
        a.reps,
        a.runtime
    );
    print!("{}", std::fs::read_to_string(dest.join("results.md"))?);
    println!("\nwritten to {}", dest.display());
    if !plots.is_empty() {
        println!(
            "sweep (`homi bench {SWEEP} --reps {} --runtime {}`): {}/sweep/{{{}}}",
            a.sweep_reps,
            a.sweep_runtime,
            dest.display(),
            plots.join(",")
        );
    }
    println!("took {:.0} s", start.elapsed().as_secs_f64());
    Ok(0)
}

/// `cargo xtask perf --file`: `homi perf --file` in one VM; the tables go to
/// `target/bench/vm/file-perf.txt`.
fn file(a: &PerfArgs) -> anyhow::Result<i32> {
    let start = Instant::now();
    let k = kbuild::kernel(&a.opts.kernel)?;
    let ko = kbuild::kmod(&k)?;
    let bin = build_guest_binaries()?;
    let opts = VmOptions { quiet: true, namespaces: a.opts.namespaces.max(2), ..a.opts.clone() };
    let script = format!(
        r#"set -e
insmod {ko}
mkfs.xfs -q -f /dev/nvme0n2
mkdir -p "$TMPDIR/x"
mount /dev/nvme0n2 "$TMPDIR/x"
f="$TMPDIR/x/data"
dd if=/dev/urandom of="$f" bs=1M count=256 conv=fsync status=none
for rw in randread read; do
  for qd in 1 32; do
    echo "== {homi} perf --file <256 MiB on XFS> --rw $rw --bs 4096 --qd $qd --runtime {rt}" >> "$HOMI_OUT/file-perf.txt"
    {homi} perf --file "$f" --rw $rw --bs 4096 --qd $qd --runtime {rt} >> "$HOMI_OUT/file-perf.txt"
  done
done
"#,
        ko = ko.display(),
        homi = bin.join("homi").display(),
        rt = a.runtime,
    );
    let run = vm::boot_named(&k, &opts, &script, "perf-file")?;
    if run.exit_status != 0 {
        bail!(
            "homi perf --file failed in the VM (exit {}); see {}",
            run.exit_status,
            run.dir.join("serial.log").display()
        );
    }
    let dest = repo_root().join("target/bench/vm");
    std::fs::create_dir_all(&dest)?;
    let text = std::fs::read_to_string(run.dir.join("out/file-perf.txt")).context("read out/file-perf.txt")?;
    std::fs::write(dest.join("file-perf.txt"), &text)?;
    println!("one VM ({}, {} vCPUs, emulated NVMe), one thread, a 256 MiB file on XFS:\n", run.accel, opts.smp);
    print!("{text}");
    println!("\nwritten to {}; took {:.0} s", dest.join("file-perf.txt").display(), start.elapsed().as_secs_f64());
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
