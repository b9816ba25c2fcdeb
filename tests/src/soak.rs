//! Long runs: controller resets under combined homi and kernel I/O (how long homi I/O
//! takes to resume after each), the CLI's read and write beside resets and fio, and
//! queue holders killed mid-I/O; each ends with a clean unload.

use std::path::Path;
use std::process::Command as Proc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use homi::uapi::*;
use homi::Controller;

use crate::common::*;
use crate::hardening::{spawn_reader, wait_nothing_held};
use crate::harness::Harness;
use crate::kmod;

/// Long runs for the debug kernel: resets under combined homi and kernel I/O, and
/// holders killed mid-I/O; each ends with a clean unload.
pub fn soak(kmod_path: &Path, h: &mut Harness, resets: u32, kills: u32) -> anyhow::Result<()> {
    if !kmod::loaded("homi") {
        kmod::load(kmod_path, "").context("load homi.ko")?;
    }
    h.check(&format!("soak: homi write + read round trips beside fio and {resets} resets 0.4 s apart"), || {
        cli_beside_resets(resets)
    });
    h.check(&format!("soak: {resets} resets under homi and kernel I/O; homi resumes after each"), || {
        let stop = Arc::new(AtomicBool::new(false));
        let kernel_io = {
            let stop = stop.clone();
            std::thread::spawn(move || -> anyhow::Result<u64> {
                let mut n = 0;
                while !stop.load(Ordering::Acquire) {
                    // Errors are expected while the controller resets.
                    if kernel_write(LBA + 8192 + (n % 64) * 16, &pattern(n, 8192)).is_ok() {
                        n += 1;
                    }
                }
                Ok(n)
            })
        };
        let ctrl = open_live()?;
        let mut qp = ctrl.create_qpair(64)?;
        let mut resume = Vec::new();
        let mut reset_times = Vec::new();
        for r in 0..resets {
            roundtrip(&ctrl, &mut qp, LBA + u64::from(r % 16) * 32, u64::from(r))?;
            // The sysfs write returns when nvme-pci's reset work is done.
            let r0 = Instant::now();
            reset_controller()?;
            reset_times.push(r0.elapsed());
            let t = Instant::now();
            loop {
                match homi_resume(&ctrl, &mut qp, u64::from(r)) {
                    Ok(()) => break,
                    Err(e) if t.elapsed() < Duration::from_secs(30) => {
                        let _ = e;
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(e) => bail!("reset {r}: homi I/O did not resume in 30 s: {e:#}"),
                }
            }
            resume.push(t.elapsed());
        }
        stop.store(true, Ordering::Release);
        let kernel_ios = kernel_io.join().map_err(|_| anyhow::anyhow!("kernel I/O thread panicked"))??;
        resume.sort();
        reset_times.sort();
        println!(
            "# soak: the controller reset took median {:?}, max {:?}; homi I/O resumed after it in median {:?}, \
             max {:?} ({kernel_ios} kernel writes beside)",
            reset_times[reset_times.len() / 2],
            reset_times[reset_times.len() - 1],
            resume[resume.len() / 2],
            resume[resume.len() - 1]
        );
        Ok(())
    });
    h.check(&format!("soak: {kills} holders SIGKILLed mid-I/O leave nothing behind"), || {
        for k in 0..kills {
            let mut child = spawn_reader()?;
            std::thread::sleep(Duration::from_millis(u64::from(k % 7)));
            child.kill()?;
            child.wait()?;
        }
        wait_nothing_held()
    });
    h.check("soak: the module unloads cleanly afterwards", || {
        wait_nothing_held()?;
        kmod::unload("homi").context("delete_module(homi)")?;
        kmod::load(kmod_path, "")
    });
    Ok(())
}

/// One homi round trip after a reset: rearms the queue if the reset killed it.
fn homi_resume(ctrl: &Controller, qp: &mut homi::QueuePair, seed: u64) -> anyhow::Result<()> {
    if qp.queue_state() == Some(HOMI_QUEUE_DEAD) {
        qp.rearm()?;
    }
    let buf = ctrl.alloc(4096)?;
    let data = pattern(seed, 4096);
    homi_write(qp, &buf, LBA + 4096, &data)?;
    ensure!(homi_read(qp, &buf, LBA + 4096, 4096)? == data, "read back differs");
    Ok(())
}

/// `homi write` then `homi read` of 1 MiB, compared, in a loop, while fio runs on
/// another part of the namespace and the controller is reset every 0.4 s. Every round
/// trip must match, and none may take longer than 30 s: a reset surfaces as a rearm.
fn cli_beside_resets(resets: u32) -> anyhow::Result<()> {
    let homi = std::env::current_exe()?.with_file_name("homi");
    let dir = std::env::var("HOMI_OUT").unwrap_or_else(|_| "/tmp".into());
    let (a, b) = (Path::new(&dir).join("rt-a"), Path::new(&dir).join("rt-b"));
    let secs = f64::from(resets) * 0.4;
    let fio = Proc::new("fio")
        .args(["--name=beside", "--filename=/dev/nvme0n1", "--direct=1", "--rw=randrw", "--bs=4k"])
        .args(["--iodepth=8", "--ioengine=io_uring", "--time_based", "--offset=512m", "--size=256m"])
        .arg(format!("--runtime={}", secs.ceil() as u64 + 5))
        .args(["--output-format=terse", "--continue_on_error=all"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .context("start fio")?;
    let stop = Arc::new(AtomicBool::new(false));
    let done_resets = Arc::new(AtomicU32::new(0));
    let resetter = {
        let (stop, done_resets) = (stop.clone(), done_resets.clone());
        std::thread::spawn(move || {
            for _ in 0..resets {
                if stop.load(Ordering::Acquire) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(400));
                if reset_controller().is_ok() {
                    done_resets.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    let (mut trips, mut failures, mut longest) = (0u32, Vec::new(), Duration::ZERO);
    let start = Instant::now();
    while !resetter.is_finished() {
        let data = pattern(u64::from(trips) + 1000, 1 << 20);
        std::fs::write(&a, &data)?;
        let t = Instant::now();
        let w = Proc::new(&homi).args(["write", "--lba", "65536", "--file"]).arg(&a).output()?;
        let r = Proc::new(&homi).args(["read", "--lba", "65536", "--blocks", "2048", "--file"]).arg(&b).output()?;
        longest = longest.max(t.elapsed());
        if !w.status.success() || !r.status.success() {
            failures.push(format!(
                "{}{}",
                String::from_utf8_lossy(&w.stderr).trim(),
                String::from_utf8_lossy(&r.stderr).trim()
            ));
        } else {
            ensure!(std::fs::read(&b)? == data, "round trip {trips}: the data read back differs");
            trips += 1;
        }
        // Each CLI waits out the resets it meets; on the debug kernel one reset takes
        // seconds, and with resets 0.4 s apart a round trip may meet many of them.
        ensure!(t.elapsed() < Duration::from_secs(120), "one round trip took {:?}: a hang", t.elapsed());
    }
    stop.store(true, Ordering::Release);
    let _ = resetter.join();
    let fio_ok = fio.wait_with_output().map(|o| o.status.success()).unwrap_or(false);
    println!(
        "# soak: {trips} homi write+read round trips of 1 MiB in {:.0} s beside fio (exit ok: {fio_ok}) and {} resets; \
         0 mismatches; {} failed; longest round trip {:?}",
        start.elapsed().as_secs_f64(),
        done_resets.load(Ordering::Relaxed),
        failures.len(),
        longest
    );
    ensure!(failures.is_empty(), "round trips failed: {failures:?}");
    ensure!(trips > 0, "no round trip completed");
    wait_for("controller live", || {
        std::fs::read_to_string("/sys/class/nvme/nvme0/state").is_ok_and(|s| s.trim() == "live")
    })
}
