//! The `fio` suite: fio driving homi queue pairs through the external ioengine
//! `target/fio/libfio_homi.so` (fio/homi_engine.c, built on the host by `cargo xtask
//! fio`), beside the kernel's nvme driver.
//!
//! - fio's own `verify=crc32c` on random writes at iodepth 1, 32 and 128 (the depth
//!   reached, from fio's `iodepth_level`), two jobs each on separate ranges, as processes and as threads; the kernel's block device
//!   must see none of that I/O, and homi must hold nothing once fio exits;
//! - one queue pair per job while fio runs;
//! - data written by the kernel (fio's psync engine, O_DIRECT) read and verified
//!   through homi, and the reverse;
//! - trims as Dataset Management (the range reads back as zeros through the kernel)
//!   and fsyncs as Flush;
//! - iodepth 300 with 64 KiB blocks: more commands than the queue has PRP-list pages;
//! - io_uring, io_uring_cmd (`/dev/ng0n1`) and homi side by side, the same 4 KiB
//!   random read at QD 32, `stonewall`: `$HOMI_OUT/fio-table.md`;
//! - bad engine options refused with the engine's message, and a controller reset
//!   under a running job ends it with the engine's message.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use serde_json::Value;

use crate::common::{self, ensure_nothing_held, open_live, NS};
use crate::harness::Harness;
use crate::kmod;

/// The namespace's passthrough char device, for io_uring_cmd.
const NG: &str = "/dev/ng0n1";
/// How long one fio run may take before it counts as hung.
const FIO_TIMEOUT: Duration = Duration::from_secs(180);
/// Bytes each verify job writes and checks.
const JOB_BYTES: u64 = 16 << 20;

/// Why there is no engine to test.
enum NoEngine {
    /// fio or its source cannot be had where it was built: the checks are skipped.
    Unavailable(String),
    /// The build failed, or never ran: the checks fail.
    Failed(String),
}

/// The engine, as `cargo xtask fio` leaves it (`HOMI_FIO_ENGINE` overrides): beside
/// this binary's `target/release`, in `target/fio`.
fn engine() -> Result<PathBuf, NoEngine> {
    if let Some(p) = std::env::var_os("HOMI_FIO_ENGINE") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe().map_err(|e| NoEngine::Failed(format!("current_exe: {e}")))?;
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .map(|t| t.join("fio"))
        .ok_or_else(|| NoEngine::Failed("no target directory".into()))?;
    let so = dir.join("libfio_homi.so");
    if so.exists() {
        return Ok(so);
    }
    if let Ok(why) = std::fs::read_to_string(dir.join("failed.txt")) {
        return Err(NoEngine::Failed(why.trim().to_string()));
    }
    Err(match std::fs::read_to_string(dir.join("unavailable.txt")) {
        Ok(why) => NoEngine::Unavailable(why.trim().to_string()),
        Err(_) => NoEngine::Failed(format!("{} was not built (run `cargo xtask fio` on the host)", so.display())),
    })
}

/// One fio run: its exit status, its JSON report (if it wrote one) and its stderr.
struct FioRun {
    ok: bool,
    json: Option<Value>,
    stderr: String,
}

/// Runs fio on `job` (a job file's text), saving job file, report and stderr under
/// `$HOMI_OUT/fio/NAME.*` for a look afterwards.
fn fio(name: &str, job: &str) -> anyhow::Result<FioRun> {
    let keep = std::env::var_os("HOMI_OUT").map_or_else(std::env::temp_dir, PathBuf::from).join("fio");
    std::fs::create_dir_all(&keep)?;
    let jobfile = keep.join(format!("{name}.fio"));
    let json = keep.join(format!("{name}.json"));
    std::fs::write(&jobfile, job)?;
    let _ = std::fs::remove_file(&json);
    // fio saves verify state files in its working directory; the guest's root is
    // read-only.
    let mut child = Command::new("fio")
        .current_dir(std::env::temp_dir())
        .arg("--output-format=json")
        .arg(format!("--output={}", json.display()))
        .arg(&jobfile)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("spawn fio")?;
    let mut stderr = child.stderr.take().expect("piped");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut s);
        s
    });
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if start.elapsed() > FIO_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            bail!("fio {name} still running after {} s; killed", FIO_TIMEOUT.as_secs());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stderr = reader.join().unwrap_or_default();
    let _ = std::fs::write(keep.join(format!("{name}.stderr")), &stderr);
    let json = std::fs::read_to_string(&json).ok().and_then(|t| {
        // fio may print notes before the report in the same file.
        t.find('{').and_then(|at| serde_json::from_str(&t[at..]).ok())
    });
    Ok(FioRun { ok: status.success(), json, stderr })
}

impl FioRun {
    /// The run succeeded and reported; its jobs.
    fn jobs(&self) -> anyhow::Result<&Vec<Value>> {
        ensure!(self.ok, "fio failed:\n{}", self.stderr.trim());
        let jobs = self.json.as_ref().and_then(|j| j["jobs"].as_array()).context("no JSON report")?;
        ensure!(!jobs.is_empty(), "the report has no jobs");
        for j in jobs {
            ensure!(j["error"].as_u64() == Some(0), "job {} reports error {}", j["jobname"], j["error"]);
        }
        Ok(jobs)
    }
}

fn num(v: &Value) -> f64 {
    v.as_f64().unwrap_or(0.0)
}

/// Sectors the kernel's block device read and wrote so far (`/sys/block/X/stat`).
fn kernel_sectors() -> anyhow::Result<(u64, u64)> {
    let name = Path::new(NS).file_name().and_then(|n| n.to_str()).context("namespace name")?;
    let stat = std::fs::read_to_string(format!("/sys/block/{name}/stat"))?;
    let f: Vec<u64> = stat.split_whitespace().filter_map(|x| x.parse().ok()).collect();
    ensure!(f.len() >= 7, "short {name}/stat: {stat:?}");
    Ok((f[2], f[6]))
}

/// The lines every homi job shares.
fn homi_global(so: &Path) -> String {
    format!("[global]\nioengine=external:{}\nfilename={NS}\n", so.display())
}

/// A write job with fio's crc32c verify at `qd`: two jobs on separate ranges from
/// `offset`, each writing `JOB_BYTES` at random and reading every block back.
fn verify_job(so: &Path, qd: u32, offset: u64, thread: bool) -> String {
    format!(
        "{}rw=randwrite\nbs=4k\niodepth={qd}\nnumjobs=2\noffset={offset}\nsize={JOB_BYTES}\n\
         offset_increment={JOB_BYTES}\nverify=crc32c\ndo_verify=1\nverify_fatal=1\nverify_state_save=0\n{}\n\
         [verify-qd{qd}]\n",
        homi_global(so),
        if thread { "thread=1" } else { "" }
    )
}

/// The share (0-100) of a job's I/O that fio issued with at least `at` I/Os in
/// flight, from its `iodepth_level` distribution (buckets 1, 2, 4, 8, 16, 32, >=64).
fn depth_share_at_least(job: &Value, at: u32) -> f64 {
    let Some(levels) = job["iodepth_level"].as_object() else { return 0.0 };
    levels
        .iter()
        .filter(|(k, _)| k.trim_start_matches(">=").parse::<u32>().is_ok_and(|d| d >= at))
        .map(|(_, v)| num(v))
        .sum()
}

/// Checks a verify run: every job wrote its range and read all of it back, and at
/// `qd` of 32 or more spent most of its I/O at depth `qd / 2` or deeper.
fn check_verify(run: &FioRun, qd: u32) -> anyhow::Result<()> {
    let jobs = run.jobs()?;
    ensure!(jobs.len() == 2, "{} jobs reported, expected 2", jobs.len());
    for j in jobs {
        if qd >= 32 {
            let at = if qd >= 128 { 64 } else { qd / 2 };
            let share = depth_share_at_least(j, at);
            ensure!(
                share >= 50.0,
                "job {}: {share:.1}% of its I/O at depth >= {at} (iodepth={qd}): {}",
                j["jobname"],
                j["iodepth_level"]
            );
        }
        let w = j["write"]["io_bytes"].as_u64().unwrap_or(0);
        let r = j["read"]["io_bytes"].as_u64().unwrap_or(0);
        ensure!(w == JOB_BYTES, "job {} wrote {w} bytes, not {JOB_BYTES}", j["jobname"]);
        ensure!(r == JOB_BYTES, "job {} read back {r} bytes to verify, not {JOB_BYTES}", j["jobname"]);
    }
    Ok(())
}

/// Runs `f` and fails if the kernel's block device moved data meanwhile: the I/O of
/// the homi engine must not go through it.
fn bypassing_kernel<T>(f: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<T> {
    let before = kernel_sectors()?;
    let r = f()?;
    let after = kernel_sectors()?;
    ensure!(
        after == before,
        "the kernel's {NS} read {} and wrote {} sectors meanwhile: I/O went through the block layer",
        after.0 - before.0,
        after.1 - before.1
    );
    Ok(r)
}

pub fn fio_suite(kmod_path: &Path, h: &mut Harness) -> anyhow::Result<()> {
    const NAMES: &[&str] = &[
        "fio: verify=crc32c randwrite through homi, iodepth 1, 2 processes",
        "fio: verify=crc32c randwrite through homi, iodepth 32, 2 processes",
        "fio: verify=crc32c randwrite through homi, iodepth 128, 2 processes",
        "fio: verify=crc32c randwrite through homi, iodepth 32, 2 threads",
        "fio: verify=crc32c with 4k-256k blocks (PRP lists) in iomem=shm and iomem=mmap buffers",
        "fio: one queue pair per job while fio runs",
        "fio: data the kernel wrote (psync, O_DIRECT) reads back through homi and verifies",
        "fio: data homi wrote reads back through the kernel (psync, O_DIRECT) and verifies",
        "fio: trims (Dataset Management) and fsyncs (Flush) through homi complete",
        "fio: io_uring, io_uring_cmd and homi side by side, 4k randread QD 32",
        "fio: a namespace that does not exist is refused with the engine's message",
        "fio: a file that is no namespace is refused with the engine's message",
        "fio: a block size above the queue's largest transfer, a homi_nsid the block device is not, and io_submit_mode=offload are refused",
        "fio: a controller reset ends a running homi job with the engine's message",
        "fio: homi holds nothing once fio has exited",
        "fio: iodepth 300 with 64k blocks (more PRP lists than the queue keeps) runs at depth",
    ];
    let so = match engine() {
        Ok(so) => so,
        Err(NoEngine::Unavailable(why)) => {
            for n in NAMES {
                h.skip(n, &why);
            }
            return Ok(());
        }
        Err(NoEngine::Failed(why)) => {
            for n in NAMES {
                h.check(n, || bail!("no fio engine: {why}"));
            }
            return Ok(());
        }
    };
    if Command::new("fio").arg("--version").output().map(|o| !o.status.success()).unwrap_or(true) {
        for n in NAMES {
            h.skip(n, "no fio in the guest");
        }
        return Ok(());
    }
    if !kmod::loaded("homi") {
        kmod::load(kmod_path, "").context("load homi.ko")?;
    }
    // A reset an earlier suite left running would fail the first job.
    drop(open_live().context("open /dev/nvme0 through homi")?);

    for (i, (qd, thread)) in [(1, false), (32, false), (128, false), (32, true)].into_iter().enumerate() {
        let offset = (64 << 20) + i as u64 * 2 * JOB_BYTES;
        h.check(NAMES[i], || {
            let run = bypassing_kernel(|| {
                fio(
                    &format!("verify-qd{qd}{}", if thread { "-threads" } else { "" }),
                    &verify_job(&so, qd, offset, thread),
                )
            })?;
            check_verify(&run, qd)
        });
    }

    h.check(NAMES[4], || {
        for (i, mem) in ["shm", "mmap"].into_iter().enumerate() {
            let job = format!(
                "{}rw=randwrite\nbsrange=4k-256k\niodepth=16\noffset={}\nsize={JOB_BYTES}\nverify=crc32c\n\
                 do_verify=1\nverify_fatal=1\nverify_state_save=0\niomem={mem}\n[iomem-{mem}]\n",
                homi_global(&so),
                (376 << 20) + i as u64 * JOB_BYTES
            );
            let run = bypassing_kernel(|| fio(&format!("iomem-{mem}"), &job))?;
            let j = &run.jobs()?[0];
            let (w, r) = (j["write"]["io_bytes"].as_u64().unwrap_or(0), j["read"]["io_bytes"].as_u64().unwrap_or(0));
            ensure!(w > 0 && r == w, "iomem={mem}: wrote {w} bytes, verified {r}");
        }
        Ok(())
    });

    h.check(NAMES[5], || {
        let ctrl = open_live()?;
        let base = ctrl.info()?.qpairs;
        let so = so.clone();
        let runner = std::thread::spawn(move || {
            fio(
                "qpairs",
                &format!(
                    "{}rw=randread\nbs=4k\niodepth=8\nnumjobs=3\ntime_based=1\nruntime=3\n[qpairs]\n",
                    homi_global(&so)
                ),
            )
        });
        let mut seen = 0;
        while !runner.is_finished() {
            seen = seen.max(ctrl.info()?.qpairs.saturating_sub(base));
            std::thread::sleep(Duration::from_millis(20));
        }
        let run = runner.join().map_err(|_| anyhow::anyhow!("fio thread panicked"))??;
        let jobs = run.jobs()?;
        ensure!(jobs.len() == 3, "{} jobs reported, expected 3", jobs.len());
        ensure!(seen == 3, "homi held {seen} queue pairs at most while 3 fio jobs ran");
        Ok(())
    });

    // Same job, two engines: fio's verify header carries offset and sequence, so a
    // verify_only pass (no writes, every block read back and checked) through the
    // other engine checks every block's data.
    let pattern = |engine: &str, only: bool, offset: u64| {
        format!(
            "[global]\nfilename={NS}\nrw=write\nbs=4k\niodepth=16\nsize={JOB_BYTES}\noffset={offset}\n\
             verify=crc32c\nverify_fatal=1\nverify_state_save=0\n{engine}{}\n[pattern]\n",
            if only { "verify_only=1\ndo_verify=1\n" } else { "do_verify=0\n" }
        )
    };
    let homi_engine = format!("ioengine=external:{}\n", so.display());
    let psync = "ioengine=psync\ndirect=1\n".to_string();
    h.check(NAMES[6], || {
        let off = 200 << 20;
        pattern_jobs(&fio("kernel-writes", &pattern(&psync, false, off))?, "write")?;
        let run = bypassing_kernel(|| fio("homi-verifies", &pattern(&homi_engine, true, off)))?;
        pattern_jobs(&run, "read")?;
        // The same pass where nobody wrote the pattern must fail: the check can fail.
        let run = fio("homi-verifies-elsewhere", &pattern(&homi_engine, true, off + 2 * JOB_BYTES))?;
        ensure!(!run.ok, "fio's verify through homi passed on blocks that do not hold the pattern");
        ensure!(run.stderr.contains("verify"), "fio failed, but not on verify:\n{}", run.stderr.trim());
        Ok(())
    });
    h.check(NAMES[7], || {
        let off = 280 << 20;
        let run = bypassing_kernel(|| fio("homi-writes", &pattern(&homi_engine, false, off)))?;
        pattern_jobs(&run, "write")?;
        // The kernel's page cache must not answer for the device.
        pattern_jobs(&fio("kernel-verifies", &pattern(&psync, true, off))?, "read")
    });

    h.check(NAMES[8], || {
        // Data in the range first, so that reading zeros back says the trim landed.
        let (at, len) = (312u64 << 20, JOB_BYTES as usize);
        common::kernel_write(at / 512, &vec![0xa5; len])?;
        ensure!(common::kernel_read(at / 512, len)?.iter().all(|&b| b == 0xa5), "the pattern did not land");
        let trim = fio(
            "trim",
            &format!(
                "{}rw=randtrim\nbs=64k\niodepth=8\nsize={JOB_BYTES}\noffset={}\n[trim]\n",
                homi_global(&so),
                312 << 20
            ),
        )?;
        let bytes = trim.jobs()?[0]["trim"]["io_bytes"].as_u64().unwrap_or(0);
        ensure!(bytes == JOB_BYTES, "trimmed {bytes} bytes, not {JOB_BYTES}");
        // Whether deallocated blocks read back as zeros is the controller's (and for
        // QEMU its drive's discard=) choice: the kernel's own discard of another
        // range says which, and homi's trims must then read back the same way.
        let (ref_at, ref_len) = (360u64 << 20, 1usize << 20);
        common::kernel_write(ref_at / 512, &vec![0xa5; ref_len])?;
        kernel_discard(ref_at, ref_len as u64)?;
        let zeroes = common::kernel_read(ref_at / 512, ref_len)?.iter().all(|&b| b == 0);
        let back = common::kernel_read(at / 512, len)?;
        let left = back.iter().filter(|&&b| b != 0).count();
        if zeroes {
            ensure!(left == 0, "{left} of {len} trimmed bytes read back non-zero through the kernel");
        } else {
            println!(
                "# fio trim: the kernel's own discard leaves data readable on this controller; \
                 only the trimmed byte count is checked ({left} of {len} bytes still non-zero)"
            );
        }
        let sync = fio(
            "fsync",
            &format!(
                "{}rw=randwrite\nbs=4k\niodepth=8\nsize=4m\noffset={}\nfsync=4\nverify=crc32c\n\
                 verify_state_save=0\n[fsync]\n",
                homi_global(&so),
                344 << 20
            ),
        )?;
        let j = &sync.jobs()?[0];
        let flushes = j["sync"]["total_ios"].as_u64().unwrap_or(0);
        ensure!(flushes >= 256, "{flushes} fsyncs reported for 1024 writes with fsync=4");
        ensure!(j["read"]["io_bytes"].as_u64() == Some(4 << 20), "the writes were not all verified");
        Ok(())
    });

    h.check(NAMES[9], || side_by_side(&so));

    h.check(NAMES[10], || {
        let run = fio(
            "bad-nsid",
            &format!(
                "[global]\nioengine=external:{}\nhomi_nvme=/dev/nvme0\nhomi_nsid=99\nfilename=homi-ns99\nrw=read\n\
                 bs=4k\nsize=1m\n[bad-nsid]\n",
                so.display()
            ),
        )?;
        ensure!(!run.ok, "fio succeeded on a namespace that does not exist");
        let want = "fio: homi: /dev/nvme0 has no usable namespace 99";
        ensure!(run.stderr.contains(want), "fio's stderr lacks {want:?}:\n{}", run.stderr.trim());
        Ok(())
    });
    h.check(NAMES[11], || {
        let run = fio(
            "not-a-namespace",
            &format!(
                "[global]\nioengine=external:{}\nfilename=/dev/null\nrw=read\nbs=4k\nsize=1m\n[x]\n",
                so.display()
            ),
        )?;
        ensure!(!run.ok, "fio succeeded on /dev/null");
        let want = "fio: homi: /dev/null is not an NVMe namespace block device";
        ensure!(run.stderr.contains(want), "fio's stderr lacks {want:?}:\n{}", run.stderr.trim());
        Ok(())
    });
    h.check(NAMES[12], || {
        let run = fio("bs-too-large", &format!("{}rw=read\nbs=4m\nsize=8m\n[bs]\n", homi_global(&so)))?;
        ensure!(!run.ok, "fio succeeded with bs=4m");
        let want = "is above the queue's largest transfer";
        ensure!(run.stderr.contains(want), "fio's stderr lacks {want:?}:\n{}", run.stderr.trim());
        let run = fio("nsid-mismatch", &format!("{}homi_nsid=2\nrw=read\nbs=4k\nsize=1m\n[nsid]\n", homi_global(&so)))?;
        ensure!(!run.ok, "fio succeeded with homi_nsid=2 on {NS}");
        let want = format!("{NS} is namespace 1, but homi_nsid=2");
        ensure!(run.stderr.contains(&want), "fio's stderr lacks {want:?}:\n{}", run.stderr.trim());
        let run = fio(
            "offload",
            &format!("{}io_submit_mode=offload\nrw=read\nbs=4k\nsize=1m\n[offload]\n", homi_global(&so)),
        )?;
        ensure!(!run.ok, "fio succeeded with io_submit_mode=offload");
        let want = "io_submit_mode=offload is not supported";
        ensure!(run.stderr.contains(want), "fio's stderr lacks {want:?}:\n{}", run.stderr.trim());
        Ok(())
    });
    h.check(NAMES[13], || {
        let ctrl = open_live()?;
        let so = so.clone();
        let runner = std::thread::spawn(move || {
            fio(
                "reset",
                &format!("{}rw=randread\nbs=4k\niodepth=16\ntime_based=1\nruntime=20\n[reset]\n", homi_global(&so)),
            )
        });
        crate::common::wait_for("fio's queue pair", || ctrl.info().is_ok_and(|i| i.qpairs > 0))?;
        std::thread::sleep(Duration::from_millis(500));
        let t = Instant::now();
        crate::common::reset_controller()?;
        let run = runner.join().map_err(|_| anyhow::anyhow!("fio thread panicked"))??;
        ensure!(!run.ok, "fio went on as if nothing happened");
        ensure!(t.elapsed() < Duration::from_secs(15), "fio took {:?} to stop after the reset", t.elapsed());
        let want = "the queue pair failed";
        ensure!(run.stderr.contains(want), "fio's stderr lacks {want:?}:\n{}", run.stderr.trim());
        Ok(())
    });
    h.check(NAMES[15], || {
        let run = bypassing_kernel(|| {
            fio("qd300-64k", &format!("{}rw=randread\nbs=64k\niodepth=300\nsize=64m\n[qd300]\n", homi_global(&so)))
        })?;
        let j = &run.jobs()?[0];
        let r = j["read"]["io_bytes"].as_u64().unwrap_or(0);
        ensure!(r == 64 << 20, "read {r} bytes, not {}", 64 << 20);
        let share = depth_share_at_least(j, 64);
        ensure!(share >= 50.0, "{share:.1}% of the I/O at depth >= 64: {}", j["iodepth_level"]);
        Ok(())
    });
    h.check(NAMES[14], ensure_nothing_held);
    Ok(())
}

/// Discards `len` bytes at byte `at` of the namespace through the kernel (BLKDISCARD).
fn kernel_discard(at: u64, len: u64) -> anyhow::Result<()> {
    use std::os::fd::AsRawFd;
    const BLKDISCARD: u64 = 0x1277; // _IO(0x12, 119)
    let dev = common::kernel_ns_at(NS)?;
    let range = [at, len];
    // SAFETY: BLKDISCARD reads two u64s (start, length) from the pointer.
    let rc = unsafe { nix::libc::ioctl(dev.as_raw_fd(), BLKDISCARD as _, range.as_ptr()) };
    ensure!(rc == 0, "BLKDISCARD {NS} at {at} for {len}: {}", std::io::Error::last_os_error());
    Ok(())
}

/// Checks a pattern run: one job that moved `JOB_BYTES` in direction `dir`.
fn pattern_jobs(run: &FioRun, dir: &str) -> anyhow::Result<()> {
    let jobs = run.jobs()?;
    let bytes = jobs[0][dir]["io_bytes"].as_u64().unwrap_or(0);
    ensure!(bytes == JOB_BYTES, "{dir}: {bytes} bytes, not {JOB_BYTES}");
    Ok(())
}

/// The three engines on one job file, each job in its own `stonewall` group, twice:
/// with fio's defaults (one submission call or doorbell per I/O) and with batches of
/// up to 8 submissions and 32 completions. Writes the table to
/// `$HOMI_OUT/fio-table.md`.
fn side_by_side(so: &Path) -> anyhow::Result<()> {
    ensure!(Path::new(NG).exists(), "no {NG} (NVMe generic char device) in this kernel");
    let (runtime, reps) = (2, 3);
    const ENGINES: [&str; 3] = ["io_uring", "io_uring_cmd", "homi"];
    const BATCHES: [(&str, &str); 2] =
        [("defaults", ""), ("batch", "iodepth_batch_submit=8\niodepth_batch_complete_max=32\n")];
    let mut job = format!(
        "[global]\nrw=randread\nbs=4k\niodepth=32\ntime_based=1\nruntime={runtime}\nlat_percentiles=1\n\
         randrepeat=0\nnorandommap=1\n"
    );
    // Repetitions interleaved, so that a slow moment of the host does not land on one
    // engine alone.
    for rep in 1..=reps {
        for (batch, opts) in BATCHES {
            for engine in ENGINES {
                let how = match engine {
                    "io_uring" => format!("ioengine=io_uring\ndirect=1\nfilename={NS}\n"),
                    "io_uring_cmd" => format!("ioengine=io_uring_cmd\ncmd_type=nvme\nfilename={NG}\n"),
                    _ => format!("ioengine=external:{}\nfilename={NS}\n", so.display()),
                };
                job += &format!("\n[{engine}-{batch}-{rep}]\nstonewall\n{how}{opts}");
            }
        }
    }
    let run = fio("side-by-side", &job)?;
    let jobs = run.jobs()?;
    // (engine-batch) -> [(IOPS, mean us, p99 us)] over the repetitions.
    let mut rows: BTreeMap<String, Vec<(f64, f64, f64)>> = BTreeMap::new();
    for j in jobs {
        let name = j["jobname"].as_str().unwrap_or_default().to_string();
        let r = &j["read"];
        let iops = num(&r["iops"]);
        ensure!(iops > 0.0, "{name}: no I/O");
        let mean = num(&r["lat_ns"]["mean"]) / 1000.0;
        let p99 = num(&r["lat_ns"]["percentile"]["99.000000"]) / 1000.0;
        let key = name.rsplit_once('-').map_or(name.as_str(), |(k, _)| k).to_string();
        rows.entry(key).or_default().push((iops, mean, p99));
    }
    let median = |v: &[(f64, f64, f64)], f: fn(&(f64, f64, f64)) -> f64| {
        let mut x: Vec<f64> = v.iter().map(f).collect();
        x.sort_by(f64::total_cmp);
        (x[x.len() / 2], x[0], x[x.len() - 1])
    };
    let cpus = std::thread::available_parallelism().map_or(0, usize::from);
    let mut md = format!(
        "{}: 4 KiB random reads, QD 32, one job per engine, each job its own `stonewall` group, {reps} \
         interleaved repetitions of {runtime} s each: medians, IOPS with min-max; QEMU's emulated NVMe, guest \
         with {cpus} CPUs; the job file is below. `defaults`: fio submits and reaps one I/O per call (one \
         homi doorbell per I/O); `batch`: iodepth_batch_submit=8, iodepth_batch_complete_max=32.\n\n\
         | workload | engine | IOPS | IOPS min-max | vs io_uring | mean lat (us) | p99 lat (us) |\n\
         |---|---|---:|---:|---:|---:|---:|\n",
        run.json.as_ref().and_then(|j| j["fio version"].as_str()).unwrap_or("?")
    );
    for (batch, _) in BATCHES {
        let base = rows.get(&format!("io_uring-{batch}")).context("no io_uring job in the report")?;
        let base = median(base, |r| r.0).0;
        for engine in ENGINES {
            let name = format!("{engine}-{batch}");
            let v = rows.get(&name).with_context(|| format!("no {name} job in the report"))?;
            ensure!(v.len() == reps, "{name}: {} repetitions reported, not {reps}", v.len());
            let (iops, lo, hi) = median(v, |r| r.0);
            let (mean, p99) = (median(v, |r| r.1).0, median(v, |r| r.2).0);
            md += &format!(
                "| {batch} | {engine} | {iops:.0} | {lo:.0}-{hi:.0} | {:.2}x | {mean:.1} | {p99:.1} |\n",
                iops / base
            );
        }
    }
    md += &format!("\n```ini\n{job}```\n");
    print!("{md}");
    if let Some(out) = std::env::var_os("HOMI_OUT") {
        std::fs::write(Path::new(&out).join("fio-table.md"), &md)?;
    }
    Ok(())
}
