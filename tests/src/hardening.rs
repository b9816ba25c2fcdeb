//! The lifetime rules and the trust model of homi.ko, each shown by a check that fails
//! on a module that breaks it: homi's own reset accounting, Delete whenever a queue may
//! exist, quarantine of memory a queue may still reach, mappings that cannot outlive
//! what they map, the controller's file list, pinned-memory accounting, status slots
//! for every qid, rate-limited logging, lockdown and swiotlb refusals.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use homi::uapi::*;
use homi::{Command, Controller, Error};
use nix::errno::Errno;

use crate::common::*;
use crate::harness::Harness;
use crate::kmod;

/// The nvme debugfs fault injector of the debug kernel (`CONFIG_FAULT_INJECTION_DEBUG_FS`).
const FAULT_INJECT: &str = "/sys/kernel/debug/nvme0/fault_inject";

fn info_now() -> anyhow::Result<HomiInfo> {
    Ok(Controller::open(NVME)?.info()?)
}

/// Waits until nothing homi held is left: queues, DMA memory, pins, quarantine.
pub(crate) fn wait_nothing_held() -> anyhow::Result<()> {
    let mut last = None;
    let ok = (0..1500).any(|_| {
        let i = info_now();
        let clean = matches!(&i, Ok(i) if (i.qpairs, i.dma_bytes, i.pinned_pages, i.quarantined_bytes) == (0, 0, 0, 0));
        if !clean {
            last = Some(i.map(|i| (i.qpairs, i.dma_bytes, i.pinned_pages, i.quarantined_bytes)));
            std::thread::sleep(Duration::from_millis(10));
        }
        clean
    });
    ensure!(ok, "homi still holds (qpairs, dma bytes, pinned pages, quarantined bytes) = {last:?}");
    Ok(())
}

/// `VmPin` of this process, in kB: what homi charged to its `pinned_vm`.
fn vm_pin_kb() -> anyhow::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let line = status.lines().find(|l| l.starts_with("VmPin:")).context("no VmPin line")?;
    Ok(line.split_whitespace().nth(1).context("VmPin value")?.parse()?)
}

fn pci_bdf() -> anyhow::Result<String> {
    let pci = std::fs::read_link("/sys/class/nvme/nvme0/device")?;
    Ok(pci.file_name().context("pci address")?.to_string_lossy().into_owned())
}

/// Unbinds nvme0 from its driver, runs `check` while it is unbound, and binds it again.
pub(crate) fn unbind_rebind(check: impl FnOnce() -> anyhow::Result<()>) -> anyhow::Result<()> {
    let bdf = pci_bdf()?;
    std::fs::write("/sys/bus/pci/drivers/nvme/unbind", &bdf).context("unbind")?;
    let res = check();
    rebind(&bdf)?;
    res
}

fn rebind(bdf: &str) -> anyhow::Result<()> {
    std::fs::write("/sys/bus/pci/drivers/nvme/bind", bdf).context("bind")?;
    wait_for("nvme0 live again", || {
        std::fs::read_to_string("/sys/class/nvme/nvme0/state").is_ok_and(|s| s.trim() == "live")
    })?;
    wait_for("nvme0n1 back", || Path::new(NS).exists())
}

/// Maps the status page of a raw `/dev/homi` file and reads `ctrl_state`.
fn raw_ctrl_state(homi: &File) -> anyhow::Result<u32> {
    // SAFETY: a fresh read-only shared mapping of the file's status page.
    let p = unsafe {
        nix::libc::mmap(std::ptr::null_mut(), 4096, nix::libc::PROT_READ, nix::libc::MAP_SHARED, homi.as_raw_fd(), 0)
    };
    ensure!(p != nix::libc::MAP_FAILED, "mmap status page: {}", std::io::Error::last_os_error());
    // SAFETY: the page is mapped; `ctrl_state` is the u32 at offset 8.
    let state = unsafe { std::ptr::read_volatile(p.cast::<u8>().add(8).cast::<u32>()) };
    // SAFETY: unmapping what was mapped above.
    unsafe { nix::libc::munmap(p, 4096) };
    Ok(state)
}

/// LIST_QPAIRS entries of process `pid`.
fn listed_for(pid: u32) -> anyhow::Result<usize> {
    let homi = open_homi()?;
    let mut entries = vec![HomiQpairEntry::default(); 4096];
    let mut l = HomiList { entries: entries.as_mut_ptr() as u64, capacity: entries.len() as u32, count: 0 };
    raw(&homi, HOMI_IOCTL_LIST_QPAIRS, &mut l)?;
    Ok(entries[..l.count.min(l.capacity) as usize].iter().filter(|e| e.pid == pid).count())
}

/// Fills the queue with reads of `len` bytes into `dma` and rings; returns how many.
pub(crate) fn flood_reads(qp: &mut homi::QueuePair, dma: u64, len: u32) -> u64 {
    let mut n = 0;
    while qp.free_slots() > 0 {
        let cmd = Command::read(1, LBA + n * 8, len / 512).with_prps(dma, 0);
        // SAFETY: the test keeps the target alive in the module's quarantine, which is
        // what these checks are about; the data read is never looked at.
        if unsafe { qp.push(&cmd, n) }.is_err() {
            break;
        }
        n += 1;
    }
    qp.ring();
    n
}

/// The suite on a stock `dbcs=off` controller.
pub fn hardening(kmod_path: &Path, h: &mut Harness) -> anyhow::Result<()> {
    if !kmod::loaded("homi") {
        kmod::load(kmod_path, "").context("load homi.ko")?;
    }

    h.check("hardening: reset_count rewritten between CREATE and DESTROY: DESTROY still deletes the queue", || {
        let ctrl = Controller::open(NVME)?;
        let g = ctrl.generation();
        let mut qp = ctrl.create_qpair(16)?;
        let qid = qp.qid();
        roundtrip(&ctrl, &mut qp, LBA, 30)?;
        std::fs::write("/sys/class/nvme/nvme0/diag/reset_count", "12345").context("rewrite diag/reset_count")?;
        ensure!(ctrl.generation() == g, "homi's generation followed the rewritten reset_count");
        drop(qp);
        // The same qid again: a Create I/O CQ fails (Invalid Queue Identifier) if the
        // first hardware queue was never deleted.
        let mut qp = ctrl.create_qpair(16).context("CREATE_QPAIR after the rewrite")?;
        ensure!(qp.qid() == qid, "got qid {} instead of the freed {qid}", qp.qid());
        roundtrip(&ctrl, &mut qp, LBA, 31)
    });

    h.check("hardening: reserved and flag fields must be zero", || {
        let (homi, _nvme, q) = raw_qpair(16)?;
        let mut bad = HomiQpair { depth: 16, reserved: 1, ..Default::default() };
        expect_errno("CREATE_QPAIR reserved=1", raw(&homi, HOMI_IOCTL_CREATE_QPAIR, &mut bad), Errno::EINVAL)?;
        let mut bad = HomiQpair { qid: q.qid, reserved: 7, ..Default::default() };
        expect_errno("REARM_QPAIR reserved=7", raw(&homi, HOMI_IOCTL_REARM_QPAIR, &mut bad), Errno::EINVAL)?;
        let mut bad = HomiAlloc { size: 4096, id: 3, ..Default::default() };
        expect_errno("ALLOC id=3", raw(&homi, HOMI_IOCTL_ALLOC, &mut bad), Errno::EINVAL)?;
        ensure!(q.status_slot < HOMI_STATUS_SLOTS as u32 && q.reserved == 0, "reply {q:?}");
        Ok(())
    });

    h.check("hardening: a refused second ATTACH leaves the file listed; unbind then revokes its queue", || {
        let homi = open_homi()?;
        let nvme = OpenOptions::new().read(true).write(true).open(NVME)?;
        attach_raw(&homi, &nvme).context("ATTACH")?;
        expect_errno("second ATTACH", attach_raw(&homi, &nvme), Errno::EBUSY)?;
        let mut q = HomiQpair { depth: 16, ..Default::default() };
        raw(&homi, HOMI_IOCTL_CREATE_QPAIR, &mut q).context("CREATE_QPAIR")?;
        let me = std::process::id();
        ensure!(listed_for(me)? == 1, "LIST_QPAIRS shows {} queues of this process, not 1", listed_for(me)?);
        let bdf = pci_bdf()?;
        std::fs::write("/sys/bus/pci/drivers/nvme/unbind", &bdf).context("unbind")?;
        let state = raw_ctrl_state(&homi)?;
        let listed = listed_for(me)?;
        drop((homi, nvme));
        rebind(&bdf)?;
        ensure!(state == HOMI_CTRL_GONE, "the unbind missed the file: status says {state}");
        ensure!(listed == 0, "{listed} queue pairs still listed after unbind");
        Ok(())
    });

    h.check("hardening: FREE with reads in flight quarantines the buffer until the queue is deleted", || {
        let ctrl = Controller::open(NVME)?;
        let mut qp = ctrl.create_qpair(256)?;
        let buf = ctrl.alloc(64 << 10)?;
        let before = ctrl.info()?.quarantined_bytes;
        let n = flood_reads(&mut qp, buf.dma_addr(), 4096);
        ensure!(n > 0, "nothing submitted");
        drop(buf);
        let held = ctrl.info()?.quarantined_bytes - before;
        ensure!(held >= 64 << 10, "FREE released the buffer at once ({held} bytes quarantined)");
        drop(qp);
        let after = ctrl.info()?;
        ensure!(after.quarantined_bytes == before, "still quarantined after DESTROY: {}", after.quarantined_bytes);
        Ok(())
    });

    h.check("hardening: UNREGISTER with a live queue keeps the pages pinned and charged (VmPin) until DESTROY", || {
        let ctrl = Controller::open(NVME)?;
        let pin0 = vm_pin_kb()?;
        let qp = ctrl.create_qpair(16)?;
        let pin_q = vm_pin_kb()?;
        ensure!(pin_q > pin0, "rings are not charged to VmPin ({pin0} -> {pin_q} kB)");
        let reg = ctrl.register(256 << 10)?;
        let pin_r = vm_pin_kb()?;
        ensure!(pin_r == pin_q + 256, "registering 256 KiB moved VmPin {pin_q} -> {pin_r} kB");
        drop(reg);
        ensure!(vm_pin_kb()? == pin_r, "UNREGISTER unpinned while the queue may reach the pages");
        drop(qp);
        ensure!(vm_pin_kb()? == pin0, "VmPin {} kB after DESTROY, {pin0} before", vm_pin_kb()?);
        Ok(())
    });

    h.check("hardening: RLIMIT_MEMLOCK bounds a process without CAP_IPC_LOCK across all its files", || {
        let out = std::process::Command::new("/proc/self/exe")
            .args(["helper", "memlock"])
            .output()
            .context("run the memlock helper")?;
        let text = String::from_utf8_lossy(&out.stdout);
        ensure!(out.status.success(), "helper failed: {text}{}", String::from_utf8_lossy(&out.stderr));
        ensure!(text.trim() == "ok ok ENOMEM", "three 128 KiB registrations under a 256 KiB limit gave {text:?}");
        Ok(())
    });

    h.check("hardening: mmap racing FREE in two threads, 10000 rounds: nothing stale, nothing left", || {
        mmap_race(10_000, false)
    });
    h.check("hardening: mmap racing DESTROY in two threads, 500 rounds: nothing stale, nothing left", || {
        mmap_race(500, true)
    });

    h.check("hardening: 2000 refused calls are counted and leave few log lines", || {
        let homi = open_homi()?;
        let before_log = kmod::kernel_log()?.lines().filter(|l| l.contains("homi")).count();
        let before = info_now()?.refused_calls;
        for _ in 0..2000 {
            let mut a = HomiAttach { nvme_fd: homi.as_raw_fd(), flags: 0 };
            let _ = raw(&homi, HOMI_IOCTL_ATTACH, &mut a);
        }
        let counted = info_now()?.refused_calls - before;
        let lines = kmod::kernel_log()?.lines().filter(|l| l.contains("homi")).count() - before_log;
        ensure!(counted >= 2000, "INFO counts {counted} refused calls");
        ensure!(lines <= 40, "2000 bad calls wrote {lines} kernel log lines");
        Ok(())
    });

    h.check("hardening: INFO says whether the doorbell page is shared with the kernel's", || {
        let i = info_now()?;
        let shared_expected = u64::from(i.first_spare_qid) * 2 * u64::from(i.doorbell_stride) < 4096;
        ensure!(
            (i.flags & HOMI_INFO_SHARED_DOORBELLS != 0) == shared_expected,
            "flags {:#x}, first spare qid {}",
            i.flags,
            i.first_spare_qid
        );
        if shared_expected {
            ensure!(kmod::kernel_log()?.contains("share a page with the kernel's"), "no warning logged");
        }
        Ok(())
    });

    races_with_reset(h)?;

    if Path::new("/sys/kernel/debug").is_dir() && !Path::new(FAULT_INJECT).exists() {
        let _ = std::process::Command::new("mount").args(["-t", "debugfs", "none", "/sys/kernel/debug"]).status();
    }
    if Path::new(FAULT_INJECT).exists() {
        h.check("hardening: a failed Delete quarantines the queue and keeps its qid until a reset", failed_delete);
    } else {
        h.skip(
            "hardening: a failed Delete quarantines the queue and keeps its qid until a reset",
            "needs the debug kernel's nvme fault injection (CONFIG_FAULT_INJECTION_DEBUG_FS)",
        );
    }

    h.check("hardening: nothing held after the suite", wait_nothing_held);
    Ok(())
}

/// One thread allocates objects (buffers, or queue pairs) and maps them, touching every
/// page; the other frees (destroys) them as soon as they exist. Mapped pages must read
/// as the object or as the sink page, and nothing may be held afterwards.
fn mmap_race(rounds: u32, queues: bool) -> anyhow::Result<()> {
    let homi = Arc::new(open_homi()?);
    let nvme = OpenOptions::new().read(true).write(true).open(NVME)?;
    attach_raw(&homi, &nvme).context("ATTACH")?;
    let latest = Arc::new(AtomicU32::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let freer = {
        let (homi, latest, done) = (homi.clone(), latest.clone(), done.clone());
        std::thread::spawn(move || {
            let mut rng = Rng(0x5eed);
            while !done.load(Ordering::Acquire) {
                let id = latest.swap(0, Ordering::AcqRel);
                if id != 0 {
                    // A varying head start, so that the free lands before, during and
                    // after the other thread's mmap and faults.
                    std::thread::sleep(Duration::from_micros(rng.below(300)));
                    let req = if queues { HOMI_IOCTL_DESTROY_QPAIR } else { HOMI_IOCTL_FREE };
                    let _ = raw(&homi, req, &mut HomiId { id, flags: 0 });
                }
            }
        })
    };
    let mut mapped = 0u32;
    let result = (|| -> anyhow::Result<()> {
        for round in 0..rounds {
            // The freeing thread has taken the last object: one in flight at a time.
            while latest.load(Ordering::Acquire) != 0 {
                std::thread::yield_now();
            }
            let (id, offset, len) = if queues {
                let mut q = HomiQpair { depth: 64, ..Default::default() };
                raw(&homi, HOMI_IOCTL_CREATE_QPAIR, &mut q).context("CREATE_QPAIR")?;
                (q.qid, q.sq_offset, q.sq_size as usize)
            } else {
                let mut a = HomiAlloc { size: 8192, ..Default::default() };
                raw(&homi, HOMI_IOCTL_ALLOC, &mut a).context("ALLOC")?;
                (a.id, a.offset, 8192)
            };
            latest.store(id, Ordering::Release);
            let prot = nix::libc::PROT_READ | nix::libc::PROT_WRITE;
            // SAFETY: a fresh shared mapping of the object just handed out.
            let p = unsafe {
                nix::libc::mmap(std::ptr::null_mut(), len, prot, nix::libc::MAP_SHARED, homi.as_raw_fd(), offset as i64)
            };
            if p == nix::libc::MAP_FAILED {
                continue; // freed before the mmap: refused, as it should be
            }
            mapped += 1;
            for page in (0..len).step_by(4096) {
                // SAFETY: inside the mapping; a revoked page reads and writes the sink.
                unsafe {
                    let at = p.cast::<u8>().add(page).cast::<u64>();
                    std::ptr::write_volatile(at, u64::from(round));
                    let _ = std::ptr::read_volatile(at);
                }
            }
            // SAFETY: unmapping what was mapped above.
            unsafe { nix::libc::munmap(p, len) };
        }
        Ok(())
    })();
    done.store(true, Ordering::Release);
    freer.join().map_err(|_| anyhow::anyhow!("freeing thread panicked"))?;
    result?;
    ensure!(mapped > 0, "no mmap ever won the race");
    drop((homi, nvme));
    wait_nothing_held()
}

/// DESTROY, close and SIGKILL of a holder racing a controller reset while its reads
/// are in flight. Afterwards nothing may be held, and pages recycled from what the
/// holders freed must not be written by late DMA (a canary pattern stays intact).
fn races_with_reset(h: &mut Harness) -> anyhow::Result<()> {
    h.check(
        "hardening: DESTROY, close and SIGKILL racing a reset with reads in flight: no late DMA, nothing left",
        || {
            const CANARY_LEN: usize = 32 << 20;
            for round in 0..12u64 {
                let how = ["destroy", "close", "kill"][(round % 3) as usize];
                let mut child = spawn_reader()?;
                let resetter = std::thread::spawn(reset_controller);
                std::thread::sleep(Duration::from_micros(200 * round));
                match how {
                    "kill" => child.kill()?,
                    // The reader destroys or closes on its own when it sees stdin close.
                    _ => nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(child.id() as i32),
                        if how == "destroy" { nix::sys::signal::SIGUSR1 } else { nix::sys::signal::SIGUSR2 },
                    )?,
                }
                let _ = child.wait()?;
                let _ = resetter.join();
                wait_for("controller live", || {
                    std::fs::read_to_string("/sys/class/nvme/nvme0/state").is_ok_and(|s| s.trim() == "live")
                })?;
                wait_nothing_held().with_context(|| format!("round {round} ({how})"))?;
                // Recycle what the reader freed: late DMA would land in these pages.
                let mut canary = vec![0xa5u8; CANARY_LEN];
                canary[0] = 0xa5;
                std::thread::sleep(Duration::from_millis(100));
                ensure!(canary.iter().all(|&b| b == 0xa5), "round {round} ({how}): recycled pages were written");
            }
            Ok(())
        },
    );
    Ok(())
}

/// Starts a `reader` helper (see [`helper`]) and waits until its reads are in flight.
pub(crate) fn spawn_reader() -> anyhow::Result<std::process::Child> {
    let mut child = std::process::Command::new("/proc/self/exe")
        .args(["helper", "reader"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("spawn reader")?;
    let mut ready = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.as_mut().context("reader stdout")?),
        &mut ready,
    )?;
    ensure!(ready.trim() == "ready", "reader said {ready:?}");
    Ok(child)
}

/// With the nvme fault injector failing the next admin command, DESTROY cannot delete
/// the queue: homi must keep its memory and qid until a reset disables the controller.
fn failed_delete() -> anyhow::Result<()> {
    let ctrl = Controller::open(NVME)?;
    let mut qp = ctrl.create_qpair(16)?;
    roundtrip(&ctrl, &mut qp, LBA, 40)?;
    let i0 = ctrl.info()?;
    let inject = |name: &str, v: &str| std::fs::write(Path::new(FAULT_INJECT).join(name), v);
    inject("verbose", "0")?; // no stack trace in the kernel log
    inject("status", "6")?; // Internal Error
    inject("dont_retry", "1")?;
    inject("times", "1")?;
    inject("probability", "100")?;
    drop(qp);
    inject("probability", "0")?;
    let i1 = ctrl.info()?;
    ensure!(i1.quarantined_bytes > i0.quarantined_bytes, "the rings were freed though the Delete failed");
    ensure!(i1.spare_free < i0.spare_free + 1, "the qid was freed though the queue may exist");
    reset_controller()?;
    wait_for("quarantine released by the reset", || {
        ctrl.info().is_ok_and(|i| i.quarantined_bytes == 0 && i.spare_free == i0.spare_free + 1)
    })
}

/// Queue pairs up to and past qid 1000 (a controller granting 1100 queues): the status
/// page has a slot for each, and one past qid 1000 rearms after a reset.
pub fn manyq(kmod_path: &Path, h: &mut Harness) -> anyhow::Result<()> {
    if !kmod::loaded("homi") {
        kmod::load(kmod_path, "").context("load homi.ko")?;
    }
    h.check("manyq: a queue with qid >= 1000 is marked dead by a reset and rearms", || {
        let ctrl = Controller::open(NVME)?;
        let mut held = Vec::new();
        let mut high = loop {
            let qp = ctrl.create_qpair(2).context("CREATE_QPAIR")?;
            if qp.qid() >= 1000 {
                break qp;
            }
            held.push(qp);
            ensure!(held.len() < 1100, "no qid >= 1000 after {} queues", held.len());
        };
        drop(held);
        let mut qp = ctrl.create_qpair(16)?;
        std::mem::swap(&mut qp, &mut high);
        drop(qp);
        ensure!(high.queue_state() == Some(HOMI_QUEUE_LIVE), "qid {} not live", high.qid());
        let g = ctrl.generation();
        reset_controller()?;
        wait_for("queue marked dead", || high.queue_state() == Some(HOMI_QUEUE_DEAD))?;
        wait_for("controller live", || ctrl.state() == HOMI_CTRL_LIVE)?;
        ensure!(ctrl.generation() > g, "generation did not move");
        high.rearm().context("rearm")?;
        ensure!(high.queue_state() == Some(HOMI_QUEUE_LIVE), "not live after rearm");
        roundtrip(&ctrl, &mut high, LBA, 50)
    });
    h.check("manyq: nothing held afterwards", wait_nothing_held);
    Ok(())
}

/// Under kernel lockdown (integrity), ATTACH is refused: a queue holder has raw PCI
/// access. Lockdown cannot be lifted, so this suite runs last in its VM.
pub fn lockdown(kmod_path: &Path, h: &mut Harness) -> anyhow::Result<()> {
    if !kmod::loaded("homi") {
        kmod::load(kmod_path, "").context("load homi.ko")?;
    }
    h.check("lockdown: ATTACH refused under lockdown=integrity", || {
        let _ = std::process::Command::new("mount").args(["-t", "securityfs", "none", "/sys/kernel/security"]).status();
        std::fs::write("/sys/kernel/security/lockdown", "integrity").context("enable lockdown")?;
        let homi = open_homi()?;
        let nvme = OpenOptions::new().read(true).write(true).open(NVME)?;
        expect_errno("ATTACH under lockdown", attach_raw(&homi, &nvme), Errno::EPERM)?;
        ensure!(kmod::kernel_log()?.contains("lockdown"), "no kernel log line names lockdown");
        Ok(())
    });
    Ok(())
}

/// With `swiotlb=force`, DMA to user pages would go through bounce buffers that the
/// controller's writes never leave: REGISTER is refused; module memory still works.
pub fn swiotlb(kmod_path: &Path, h: &mut Harness) -> anyhow::Result<()> {
    if !kmod::loaded("homi") {
        kmod::load(kmod_path, "").context("load homi.ko")?;
    }
    h.check("swiotlb: REGISTER refused when DMA would bounce; module buffers still work", || {
        let ctrl = Controller::open(NVME)?;
        match ctrl.register(64 << 10) {
            Err(Error::Ioctl { source: Errno::EOPNOTSUPP, .. }) => {}
            other => bail!("REGISTER under swiotlb=force: {:?}", other.map(|_| "registered")),
        }
        ensure!(ctrl.info()?.pinned_pages == 0, "pages left pinned");
        let mut qp = ctrl.create_qpair(16)?;
        roundtrip(&ctrl, &mut qp, LBA, 60)
    });
    if !Path::new("/dev/udmabuf").exists() {
        h.skip("swiotlb: REGISTER_DMABUF of a udmabuf refused when DMA would bounce", "no /dev/udmabuf");
        return Ok(());
    }
    h.check("swiotlb: REGISTER_DMABUF of a udmabuf refused when DMA would bounce, logged, nothing held", || {
        let ctrl = Controller::open(NVME)?;
        let fd = crate::dmabuf::udmabuf(256 << 10)?;
        // The refusal's log line is rate-limited: let REGISTER's line above age out.
        std::thread::sleep(Duration::from_secs(6));
        match ctrl.register_dmabuf(std::os::fd::AsFd::as_fd(&fd), 0, 64 << 10) {
            Err(Error::Ioctl { source: Errno::EOPNOTSUPP, .. }) => {}
            other => bail!("REGISTER_DMABUF under swiotlb=force: {:?}", other.map(|_| "registered")),
        }
        ensure!(
            kmod::kernel_log()?.contains("register_dmabuf: DMA to this dma-buf would need syncs"),
            "no kernel log line names the refusal"
        );
        let i = ctrl.info()?;
        ensure!(i.pinned_pages == 0 && i.dma_bytes == 0, "left held: {} pages, {} bytes", i.pinned_pages, i.dma_bytes);
        Ok(())
    });
    Ok(())
}

/// Helper roles for these checks (run as `homi-vmtest helper ROLE`).
pub fn helper(role: &str) -> anyhow::Result<Option<()>> {
    match role {
        // Keeps reads in flight until SIGUSR1 (destroy the queue, then exit), SIGUSR2
        // (exit, closing everything) or SIGKILL.
        "reader" => {
            static STOP: AtomicU32 = AtomicU32::new(0);
            extern "C" fn on_usr(sig: i32) {
                STOP.store(sig as u32, Ordering::Release);
            }
            let handler = nix::sys::signal::SigHandler::Handler(on_usr);
            // SAFETY: the handler only stores to an atomic.
            unsafe {
                nix::sys::signal::signal(nix::sys::signal::SIGUSR1, handler)?;
                nix::sys::signal::signal(nix::sys::signal::SIGUSR2, handler)?;
            }
            let ctrl = open_live()?;
            let mut qp = ctrl.create_qpair(256)?;
            let buf = ctrl.alloc(1 << 20)?;
            let reg = ctrl.register(1 << 20)?;
            std::io::Write::write_all(&mut std::io::stdout(), b"ready\n")?;
            std::io::Write::flush(&mut std::io::stdout())?;
            let start = Instant::now();
            let mut k = 0u64;
            while STOP.load(Ordering::Acquire) == 0 && start.elapsed() < Duration::from_secs(60) {
                let target = if k % 2 == 0 { buf.dma_addr() } else { reg.page_addrs().map_or(0, |p| p[0]) };
                flood_reads(&mut qp, target, 4096);
                if qp.poll(|_| {}).is_err() {
                    std::thread::sleep(Duration::from_millis(1));
                }
                k += 1;
            }
            if STOP.load(Ordering::Acquire) == nix::sys::signal::SIGUSR1 as u32 {
                drop(qp);
            }
            // Exits without freeing the rest: the file's close must.
            std::process::exit(0);
        }
        // Three 128 KiB registrations, each through its own file, under a 256 KiB
        // RLIMIT_MEMLOCK and without CAP_IPC_LOCK.
        "memlock" => {
            let lim = nix::libc::rlimit { rlim_cur: 256 << 10, rlim_max: 256 << 10 };
            // SAFETY: a valid rlimit for this process.
            ensure!(unsafe { nix::libc::setrlimit(nix::libc::RLIMIT_MEMLOCK, &lim) } == 0, "setrlimit");
            drop_cap(CAP_IPC_LOCK)?;
            let mut out = Vec::new();
            let ctrls = (0..3).map(|_| Controller::open(NVME)).collect::<Result<Vec<_>, _>>()?;
            let mut keep = Vec::new();
            for c in &ctrls {
                match c.register(128 << 10) {
                    Ok(r) => {
                        out.push("ok".to_string());
                        keep.push(r);
                    }
                    Err(Error::Ioctl { source, .. }) => out.push(format!("{source:?}")),
                    Err(e) => out.push(e.to_string()),
                }
            }
            println!("{}", out.join(" "));
            Ok(Some(()))
        }
        _ => Ok(None),
    }
}

/// `CAP_IPC_LOCK` (linux/capability.h): lifts `RLIMIT_MEMLOCK`.
const CAP_IPC_LOCK: u32 = 14;

/// Drops `cap` from this process's effective and permitted sets.
fn drop_cap(cap: u32) -> anyhow::Result<()> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const VERSION_3: u32 = 0x2008_0522;
    let mut hdr = Header { version: VERSION_3, pid: 0 };
    let mut data = [Data::default(); 2];
    // SAFETY: capget with a v3 header and room for two data words.
    ensure!(unsafe { nix::libc::syscall(nix::libc::SYS_capget, &mut hdr, data.as_mut_ptr()) } == 0, "capget");
    let (word, bit) = ((cap / 32) as usize, 1u32 << (cap % 32));
    data[word].effective &= !bit;
    data[word].permitted &= !bit;
    // SAFETY: capset with the sets read above, minus one capability.
    ensure!(unsafe { nix::libc::syscall(nix::libc::SYS_capset, &mut hdr, data.as_ptr()) } == 0, "capset");
    Ok(())
}
