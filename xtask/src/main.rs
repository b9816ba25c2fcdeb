//! `cargo xtask`: homi's one runner.
//!
//! - `setup`: install everything the harness needs (qemu/setup.sh);
//! - `kernel`: build (or reuse) the cached guest kernel (qemu/kernel.sh), chosen as
//!   kselect.rs says; `--check-upstream` checks what Debian offers instead;
//! - `kmod`: build homi.ko against it with `W=1 CLIPPY=1`, rustfmt-checked;
//! - `vm -- CMD`: boot the test VM with emulated NVMe and run CMD inside;
//! - `test`: host tests, the kmod build and the in-VM suites, ending `N passed, N failed`;
//! - `demo`: the main job, end to end;
//! - `bench`: the engine's hot path against the software controller;
//! - `perf`: every I/O path side by side in one VM (`homi bench`);
//! - `capi`: the C library, its header and pkg-config file, installed under a prefix;
//! - `gpu`: the binaries (feature `cuda`) and script to run on a GPU machine;
//! - `fio`: the fio ioengine on homi queue pairs (fio/), built against Debian's fio.

mod bench;
mod capi;
mod fio;
mod kbuild;
mod kselect;
mod perf;
mod tally;
mod test;
mod upstream;
mod vm;

use std::path::PathBuf;
use std::process::{Command, ExitCode};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "homi's runner")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install packages and tools (idempotent; needs root or sudo).
    Setup,
    /// Build the guest kernel, or reuse the cached build; prints its directory.
    /// `HOMI_KERNEL=X.Y`, an exact Debian version or `newest` overrides the verified one.
    Kernel {
        #[command(flatten)]
        args: kbuild::KernelArgs,
        /// Build nothing: list the kernel sources Debian offers and check, for each,
        /// that it fetches, that qemu/patches applies, and (with --build-module) that
        /// homi.ko builds against it.
        #[arg(long)]
        check_upstream: bool,
        /// With --check-upstream: configure and `modules_prepare` each tree and build
        /// homi.ko against it (minutes per version).
        #[arg(long, requires = "check_upstream")]
        build_module: bool,
    },
    /// Build kmod/homi.ko against the guest kernel, W=1 CLIPPY=1, warnings are errors.
    Kmod(kbuild::KernelArgs),
    /// Boot the test VM and run a command inside it.
    Vm(vm::VmArgs),
    /// Run every test: host, kmod build, in-VM suites.
    Test(test::TestArgs),
    /// The main job: boot the VM, load homi.ko, talk to it, show what happened.
    Demo(vm::VmOptions),
    /// Hot-path benchmark against the software controller: ns/IO and instructions/IO.
    Bench,
    /// Every I/O path side by side on one emulated controller, in one VM.
    Perf(perf::PerfArgs),
    /// Build the C library (libhomi.so, libhomi.a, homi.h, homi.pc), install it under
    /// --prefix, and build the C example and test against it.
    Capi(capi::CapiArgs),
    /// Build the GPU binaries (`homi`, `homi-gpucheck`, feature cuda) and
    /// `tools/gpu-run.sh` into target/gpu: copy that folder to a GPU machine (no Rust
    /// needed there) and run `./gpu-run.sh OUT`.
    Gpu,
    /// MMIO doorbell writes per I/O with and without shadow doorbells, QD 1, 8, 32:
    /// one VM, one controller of each kind, nvme-pci user queues.
    Doorbells {
        #[command(flatten)]
        opts: vm::VmOptions,
        /// Seconds per run.
        #[arg(long, default_value_t = 3.0)]
        runtime: f64,
    },
    /// Build the fio ioengine (fio/) into target/fio/libfio_homi.so; prints its path.
    Fio,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Setup => setup(),
        Cmd::Kernel { check_upstream: true, build_module, .. } => upstream::check(build_module),
        Cmd::Kernel { args, .. } => kbuild::kernel(&args).map(|k| {
            println!("{}", k.dir.display());
            0
        }),
        Cmd::Kmod(a) => kbuild::kernel(&a).and_then(|k| kbuild::kmod(&k)).map(|_| 0),
        Cmd::Vm(a) => vm::run_cli(&a),
        Cmd::Test(a) => test::run(&a),
        Cmd::Demo(o) => demo(&o),
        Cmd::Bench => bench::run(),
        Cmd::Gpu => gpu_bundle(),
        Cmd::Capi(a) => capi::run(&a),
        Cmd::Perf(a) => perf::run(&a),
        Cmd::Doorbells { opts, runtime } => perf::doorbells(&opts, runtime),
        Cmd::Fio => fio::run(),
    };
    match result {
        Ok(0) => ExitCode::SUCCESS,
        Ok(code) => ExitCode::from(code.clamp(1, 255) as u8),
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The repository root (the parent of xtask/).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask has a parent").to_owned()
}

/// `cargo`, the one that runs this xtask, in the repository root.
pub fn cargo() -> Command {
    let mut c = Command::new(env!("CARGO"));
    c.current_dir(repo_root());
    c
}

/// Runs `cmd`, failing with its description if it does not exit 0.
pub fn run_checked(cmd: &mut Command) -> anyhow::Result<()> {
    let what = format!("{cmd:?}");
    let status = cmd.status().with_context(|| format!("spawn {what}"))?;
    if !status.success() {
        bail!("{what} failed: {status}");
    }
    Ok(())
}

/// `cargo xtask gpu`.
fn gpu_bundle() -> anyhow::Result<i32> {
    run_checked(cargo().args([
        "build",
        "--release",
        "--quiet",
        "-p",
        "homi-cli",
        "-p",
        "homi-instruments",
        "--features",
        "homi-cli/cuda,homi-instruments/cuda",
    ]))?;
    let root = repo_root();
    let dir = root.join("target/gpu");
    std::fs::create_dir_all(&dir)?;
    for (from, to) in [
        ("target/release/homi", "homi"),
        ("target/release/homi-gpucheck", "homi-gpucheck"),
        ("tools/gpu-run.sh", "gpu-run.sh"),
    ] {
        std::fs::copy(root.join(from), dir.join(to)).with_context(|| format!("copy {from}"))?;
    }
    println!("{}: copy it to a GPU machine and run ./gpu-run.sh OUT_DIR", dir.display());
    Ok(0)
}

fn setup() -> anyhow::Result<i32> {
    run_checked(Command::new("bash").arg(repo_root().join("qemu/setup.sh")))?;
    Ok(0)
}

/// Builds the workspace binaries the guest runs, in release mode.
pub fn build_guest_binaries() -> anyhow::Result<PathBuf> {
    run_checked(cargo().args(["build", "--release", "--quiet", "-p", "homi-vmtests", "-p", "homi-cli"]))?;
    run_checked(cargo().args(["build", "--release", "--quiet", "-p", "homi", "--example", "readwrite"]))?;
    Ok(repo_root().join("target/release"))
}

/// The main job. The controller keeps QEMU's default, shadow doorbells on, and the
/// guest kernel reserves nvme-pci user queues for homi. A second controller with a CMB
/// sits behind the same PCIe switch, so that nvme0 can write into its memory (P2P).
fn demo(opts: &vm::VmOptions) -> anyhow::Result<i32> {
    let opts = &vm::VmOptions {
        dbcs: true,
        second_controller: true,
        switch: true,
        second_cmb_size_mb: Some(opts.second_cmb_size_mb.unwrap_or(16)),
        // The second namespace holds a file system for the file-map steps.
        namespaces: opts.namespaces.max(2),
        append: format!("{} nvme.user_queues=4", opts.append).trim().to_string(),
        ..opts.clone()
    };
    setup()?;
    if std::env::var_os("HOMI_KDIR").is_none() {
        kbuild::selected()?;
    }
    let k = kbuild::kernel(&opts.kernel)?;
    let ko = kbuild::kmod(&k)?;
    let bin = build_guest_binaries()?;
    let capi = capi::guest_binaries()?;
    // Where fio's source cannot be had the demo says so at that step.
    fio::build()?;
    let script = format!(
        r#"set -e
B={bin}
cd "$TMPDIR"
echo "== the kernel's nvme driver owns nvme0 and uses $(ls /sys/block/nvme0n1/mq | wc -l) I/O queues"
[ "$(cat /sys/class/nvme/nvme0/transport)" = pcie ] || {{ echo "   nvme0 is not nvme-pci's"; exit 1; }}
dmesg | grep -o 'nvme nvme0: .*user queues.*' || {{ echo "   nvme-pci reserved no user queues"; exit 1; }}
insmod {ko}
echo "== homi info"
$B/homi info | tee info.txt
grep -q 'shadow doorbells: ON; homi queues ring them with event index' info.txt ||
  {{ echo "   homi does not ring nvme-pci's shadow doorbells here"; exit 1; }}
echo "== 20000 random 4 KiB reads at QD 32 through a homi queue, shadow doorbells with event index"
$B/homi perf --path homi --qd 32 --ios 20000 2> perf.err | tee perf.txt || {{ cat perf.err; exit 1; }}
grep -q 'doorbells (shadow, event index)' perf.txt || {{ echo "   the queue did not use shadow doorbells"; exit 1; }}
echo "== 1 MiB written through a homi queue, read back by the kernel (O_DIRECT)"
head -c 1048576 /dev/urandom > a
$B/homi write --lba 2048 --file a
dd if=/dev/nvme0n1 of=a.kernel bs=1M skip=1 count=1 iflag=direct status=none
cmp a a.kernel || {{ echo "   the kernel read something else"; exit 1; }}
echo "   identical"
echo "== 1 MiB written by the kernel (O_DIRECT), read back through a homi queue"
head -c 1048576 /dev/urandom > b
dd if=b of=/dev/nvme0n1 bs=1M seek=2 oflag=direct conv=fsync status=none
$B/homi read --lba 4096 --blocks 2048 --file b.homi
cmp b b.homi || {{ echo "   homi read something else"; exit 1; }}
echo "   identical"
echo "== 1 MiB read through a homi queue into a udmabuf (memfd pages imported with REGISTER_DMABUF)"
head -c 1048576 /dev/urandom > d
dd if=d of=/dev/nvme0n1 bs=1M seek=48 oflag=direct conv=fsync status=none
dd if=/dev/nvme0n1 of=d.kernel bs=1M skip=48 count=1 iflag=direct status=none
$B/homi read-into --into udmabuf --lba 98304 --blocks 2048 --file d.udmabuf
cmp d.kernel d.udmabuf || {{ echo "   the udmabuf holds something else than the kernel reads"; exit 1; }}
echo "   identical to the kernel's O_DIRECT view"
echo "== the same 1 MiB into nvme1's CMB (peer-to-peer: both controllers behind one PCIe switch), rings there too"
$B/homi read-into --into cmb --rings-in-memory --lba 98304 --blocks 2048 --file d.cmb
cmp d.kernel d.cmb || {{ echo "   the CMB holds something else than the kernel reads"; exit 1; }}
echo "   identical to the kernel's O_DIRECT view"
echo "== the library's example program: 128 KiB through PRP lists, module and registered memory"
$B/examples/readwrite /dev/nvme0
echo "== the C library (libhomi.a, C99): its example writes 128 KiB through a homi queue and reads it back"
{capi}/readwrite /dev/nvme0n1 163840
echo "== fio with the homi engine: 2 jobs x 4 MiB of 4 KiB random writes at iodepth 32, every block read back and checked (crc32c)"
if [ -f {fio}/libfio_homi.so ]; then
  fio --name=homi --ioengine=external:{fio}/libfio_homi.so --filename=/dev/nvme0n1 --rw=randwrite --bs=4k \
    --iodepth=32 --numjobs=2 --size=4m --offset=64m --offset_increment=4m --verify=crc32c --do_verify=1 \
    --group_reporting --output-format=json > fio.json 2> fio.err || {{ cat fio.err; exit 1; }}
  grep -q '"error" : 0' fio.json && ! grep -q '"error" : [1-9]' fio.json || {{ echo "   fio reported an error"; exit 1; }}
  w=$(grep -A3 '"write" :' fio.json | grep -m1 '"io_bytes"' | tr -dc 0-9)
  r=$(grep -A3 '"read" :' fio.json | grep -m1 '"io_bytes"' | tr -dc 0-9)
  [ "$w" = 8388608 ] && [ "$r" = 8388608 ] || {{ echo "   fio wrote $w and verified $r bytes, not 8 MiB each"; exit 1; }}
  echo "   fio wrote 8 MiB through homi queues and verified all of it"
else
  echo "   skipped: $(cat {fio}/unavailable.txt 2>/dev/null || echo 'the fio engine was not built')"
fi
echo "== while a process holds queues, homi queues names it"
$B/homi perf --path homi --qd 4 --threads 2 --ios 200000 --json > perf.json &
perf=$!
until $B/homi queues | grep -q " $perf "; do
  kill -0 $perf 2>/dev/null || {{ echo "   homi perf ended before homi queues listed it"; exit 1; }}
  sleep 0.05
done
$B/homi queues
wait $perf
echo "== a controller reset in the middle of a 32 MiB homi write: the queue is rearmed, the write completes"
head -c 33554432 /dev/urandom > c
$B/homi write --lba 16384 --file c --qd 2 2> write.err &
writer=$!
until $B/homi queues | grep -q qid; do sleep 0.05; done
gen=$($B/homi info --json | grep '"generation"' | tr -dc 0-9)
echo 1 > /sys/class/nvme/nvme0/reset_controller
wait $writer || {{ cat write.err; exit 1; }}
cat write.err
grep -q 'controller reset(s) during the transfer' write.err || {{ echo "   the reset did not land during the write"; exit 1; }}
dd if=/dev/nvme0n1 of=c.kernel bs=1M skip=8 count=32 iflag=direct status=none
cmp c c.kernel || {{ echo "   the kernel read something else"; exit 1; }}
gen2=$($B/homi info --json | grep '"generation"' | tr -dc 0-9)
[ "$gen2" -gt "$gen" ] || {{ echo "   homi's reset count did not move ($gen)"; exit 1; }}
echo "   identical to the kernel's view; homi's reset count moved from $gen to $gen2"
echo "== file data through homi queues: XFS on nvme0n2, holes and unwritten extents, the file system keeping its authority"
mkfs.xfs -q -f /dev/nvme0n2
mkdir -p x && mount /dev/nvme0n2 x
head -c 3145728 /dev/urandom > x/f
truncate -s 8m x/f
xfs_io -c "pwrite -q -S 0x5a 6m 64k" -c "falloc 4m 1m" x/f
$B/homi map x/f | tee map.txt
grep -q ' hole ' map.txt && grep -q ' unwritten ' map.txt && grep -q ' mapped ' map.txt ||
  {{ echo "   the map lacks a hole, an unwritten or a mapped extent"; exit 1; }}
$B/homi cat x/f > f.homi
cmp x/f f.homi || {{ echo "   homi read something else than the file system"; exit 1; }}
echo "   homi cat is byte-identical to the kernel's read"
echo "== a truncate while homi reads the file in a loop: the lease breaks, homi lets go, then the truncate completes"
$B/homi cat --loop-secs 3 x/f 2> loop.err &
reader=$!
sleep 1
truncate -s 1m x/f
wait $reader || {{ cat loop.err; exit 1; }}
tail -1 loop.err
grep -q 'revocations=[1-9]' loop.err || {{ echo "   the truncate did not revoke homi's map"; exit 1; }}
umount x
echo "== after the tools exit, homi holds nothing"
$B/homi info | grep -A1 'homi holds'
$B/homi info --json > held.json
for f in qpairs_held dma_bytes pinned_pages quarantined_bytes; do
  grep -q "\"$f\": 0," held.json || {{ echo "   homi still holds $f: $(grep $f held.json)"; exit 1; }}
done
rmmod homi
echo "== done: homi.ko unloaded"
"#,
        ko = ko.display(),
        bin = bin.display(),
        capi = capi.display(),
        fio = fio::engine_dir().display(),
    );
    let run = vm::boot(&k, opts, &script)?;
    println!(
        "demo: booted to the command in {:.2}s ({}); guest exit status {}",
        run.boot_secs, run.accel, run.exit_status
    );
    let dmesg = run.dmesg();
    let bad = vm::splats(&dmesg);
    if !bad.is_empty() {
        eprintln!("demo: the guest kernel warned:\n{}", bad.join("\n"));
        return Ok(run.exit_status.max(1));
    }
    Ok(run.exit_status)
}
