//! Controller shapes: two controllers and namespaces behind an IOMMU, every I/O path,
//! shadow doorbells and user queue placement.

use std::path::Path;
use std::process::Command as Proc;
use std::sync::Arc;

use anyhow::{bail, ensure, Context};
use homi::uapi::*;
use homi::{Command, Controller, Error};
use nix::errno::Errno;

use crate::common::*;
use crate::harness::Harness;
use crate::kmod;

/// Two controllers, two namespaces each, a CMB, all behind a strict Intel IOMMU.
pub fn shapes(kmod_path: &Path, h: &mut Harness) -> anyhow::Result<()> {
    kmod::load(kmod_path, "").context("load homi.ko")?;
    h.check("shapes: the IOMMU translates for the controllers", || {
        let group = Path::new("/sys/class/nvme/nvme0/device/iommu_group");
        ensure!(group.exists(), "nvme0 is in no IOMMU group: is intel_iommu on?");
        let domain = std::fs::read_to_string(group.join("type"))?;
        ensure!(domain.trim() == "DMA", "IOMMU domain type {domain:?}, expected translated DMA");
        Ok(())
    });
    h.check("shapes: INFO sees two namespaces and the CMB", || {
        let i = Controller::open(NVME)?.info()?;
        ensure!(i.nr_namespaces == 2, "{} namespaces", i.nr_namespaces);
        ensure!(i.flags & HOMI_INFO_CMB != 0, "no CMB flag: {:#x}", i.flags);
        Ok(())
    });
    h.check("shapes: both namespaces of both controllers match the kernel, through the IOMMU", || {
        let c0 = Controller::open(NVME)?;
        let c1 = Controller::open("/dev/nvme1")?;
        roundtrip_ns(&c0, 1, 30)?;
        roundtrip_ns(&c0, 2, 32)?;
        roundtrip_ns(&c1, 1, 34)?;
        roundtrip_ns(&c1, 2, 36)
    });
    h.check("shapes: a DMA address nobody registered neither hangs nor breaks the queue (IOMMU)", || {
        let ctrl = Controller::open(NVME)?;
        let mut qp = ctrl.create_qpair(4)?;
        let bogus = Command::read(1, LBA, 8).with_prps(0x7ead_0000, 0);
        // SAFETY: the address is no memory of ours; the IOMMU must stop the transfer.
        // QEMU's vIOMMU drops the write and records a fault, but its nvme model still
        // reports success, so any completion status is accepted; what matters is that
        // the command completes, nothing splats, and the queue keeps working.
        match unsafe { qp.execute(&bogus, TIMEOUT) } {
            Ok(c) => println!("# bogus DMA address: completed with {}", c.status),
            Err(Error::Nvme(s)) => println!("# bogus DMA address: failed with {s}"),
            Err(e) => bail!("the bogus command did not complete: {e}"),
        }
        // The queue and the controller carry on.
        let mut buf = vec![0u8; 4096];
        let dma = Arc::new(ctrl.alloc(4096)?);
        qp.execute_io(Command::read(1, LBA, 8), &dma, 0, 4096, TIMEOUT)?;
        dma.read_at(0, &mut buf)?;
        let path = ns_path(0, 1)?;
        ensure!(buf == kernel_read_at(&path, LBA, 4096)?, "the queue returned other data than the kernel reads");
        Ok(())
    });
    Ok(())
}

/// `homi perf` through every path, briefly, on a guest whose nvme driver has a poll
/// queue (for io_uring-poll): each run completes its I/Os and its JSON report parses.
pub fn paths(kmod_path: &Path, h: &mut Harness) -> anyhow::Result<()> {
    if !kmod::loaded("homi") {
        kmod::load(kmod_path, "").context("load homi.ko")?;
    }
    let homi = std::env::current_exe()?.with_file_name("homi");
    for (path, qd) in [("pread", 1), ("io_uring", 8), ("io_uring-poll", 8), ("passthru", 8), ("homi", 8)] {
        for rw in ["randread", "randwrite"] {
            h.check(&format!("paths: homi perf --path {path} --rw {rw} completes and reports JSON"), || {
                let out = Proc::new(&homi)
                    .args(["perf", "--path", path, "--rw", rw, "--qd", &qd.to_string(), "--ios", "300", "--json"])
                    .output()?;
                ensure!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
                let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
                ensure!(v["path"] == path && v["rw"] == rw, "report names {} {}", v["path"], v["rw"]);
                ensure!(v["ios"] == 300, "ios {}", v["ios"]);
                ensure!(v["iops"].as_f64().is_some_and(|x| x > 0.0), "iops {}", v["iops"]);
                Ok(())
            });
        }
    }
    h.check("paths: bad perf arguments are refused with the argument's name", || {
        for (args, name) in
            [(vec!["--qd", "0"], "--qd"), (vec!["--bs", "1000"], "--bs"), (vec!["--threads", "0"], "--threads")]
        {
            let out = Proc::new(&homi).args(["perf", "--path", "homi", "--ios", "10"]).args(&args).output()?;
            let err = String::from_utf8_lossy(&out.stderr);
            ensure!(!out.status.success() && err.contains(name), "{args:?}: {err}");
        }
        Ok(())
    });
    Ok(())
}

/// With shadow doorbells on and nvme-pci's user queues reserved (`nvme.user_queues`),
/// homi queues live on reserved qids and ring through their shadow slots.
pub fn shadow(kmod_path: &Path, h: &mut Harness) -> anyhow::Result<()> {
    if !kmod::loaded("homi") {
        kmod::load(kmod_path, "").context("load homi.ko")?;
    }
    let ctrl = Controller::open(NVME)?;
    let reserved = user_queues_param();

    h.check("shadow: queues take reserved qids and use shadow doorbells", || {
        let i = ctrl.info()?;
        let want = HOMI_INFO_USER_QUEUES | HOMI_INFO_SHADOW_DOORBELLS;
        ensure!(i.flags & want == want, "flags {:#x}", i.flags);
        ensure!(reserved > 0 && i.spare_free == reserved, "spare_free {} of {reserved} reserved", i.spare_free);
        let range = i.first_spare_qid..i.first_spare_qid + reserved;
        ensure!(range.start > i.driver_io_queues, "reserved range {range:?} overlaps the driver's queues");
        let mut qp = ctrl.create_qpair(32)?;
        ensure!(range.contains(&u32::from(qp.qid())), "qid {} outside {range:?}", qp.qid());
        ensure!(qp.shadow_doorbells(), "qid {} rings MMIO only", qp.qid());
        roundtrip(&ctrl, &mut qp, LBA + 4096, 40)?;
        let st = qp.doorbell_stats();
        ensure!(st.updates >= 4 && st.mmio <= st.updates, "doorbell stats {st:?}");
        Ok(())
    });

    h.check("shadow: the event index page maps read-only, the shadow page read-write, one page each", || {
        use nix::sys::mman::{mmap, munmap, MapFlags, ProtFlags};
        use std::num::NonZeroUsize;
        let (homi, _nvme, q) = raw_qpair(16)?;
        ensure!(q.flags & HOMI_QPAIR_SHADOW != 0, "flags {:#x}", q.flags);
        ensure!(q.shadow_offset != 0 && q.eventidx_offset != 0, "offsets {q:?}");
        ensure!(q.shadow_cq == q.shadow_sq + 4, "slots {} {}", q.shadow_sq, q.shadow_cq);
        let page = NonZeroUsize::new(4096).unwrap();
        let two = NonZeroUsize::new(8192).unwrap();
        let rw = ProtFlags::PROT_READ | ProtFlags::PROT_WRITE;
        let shared = MapFlags::MAP_SHARED;
        // SAFETY: fresh mappings of homi's pages; each is unmapped before the file closes.
        unsafe {
            ensure!(
                mmap(None, page, rw, shared, &homi, q.eventidx_offset as i64).err() == Some(Errno::EACCES),
                "writable event index page"
            );
            ensure!(
                mmap(None, two, rw, shared, &homi, q.shadow_offset as i64).err() == Some(Errno::EINVAL),
                "two-page shadow mapping"
            );
            let ei = mmap(None, page, ProtFlags::PROT_READ, shared, &homi, q.eventidx_offset as i64)
                .context("read-only event index page")?;
            let sh = mmap(None, page, rw, shared, &homi, q.shadow_offset as i64).context("shadow page")?;
            let tail = std::ptr::read_volatile(sh.as_ptr().cast::<u8>().add(q.shadow_sq as usize).cast::<u32>());
            munmap(ei, 4096)?;
            munmap(sh, 4096)?;
            ensure!(tail == 0, "a new queue's shadow tail is {tail}");
        }
        Ok(())
    });

    h.check("shadow: a queue created again on the same qid starts from zeroed slots", || {
        let mut qp = ctrl.create_qpair(16)?;
        let qid = qp.qid();
        for k in 0..5 {
            roundtrip(&ctrl, &mut qp, LBA + 4096 + 16 * k, 50 + k)?;
        }
        drop(qp);
        let mut again = ctrl.create_qpair(16)?;
        ensure!(again.qid() == qid, "got qid {} instead of {qid}", again.qid());
        // Stale tails would make the controller run old SQ slots, or wait for ever.
        roundtrip(&ctrl, &mut again, LBA + 4096, 60)
    });
    Ok(())
}

/// With more queues than a doorbell page holds (`max_ioqpairs=600`), nvme-pci puts its
/// user queues on a page of their own: qid 512 on, with 4-byte doorbells.
pub fn placement(kmod_path: &Path, h: &mut Harness) -> anyhow::Result<()> {
    kmod::load(kmod_path, "").context("load homi.ko")?;
    let ctrl = Controller::open(NVME)?;
    h.check("placement: user queues start at qid 512, on a doorbell page of their own", || {
        let i = ctrl.info()?;
        ensure!(i.flags & HOMI_INFO_USER_QUEUES != 0, "flags {:#x}", i.flags);
        ensure!(i.first_spare_qid == 512, "first reserved qid {}", i.first_spare_qid);
        ensure!(i.spare_free == user_queues_param(), "spare_free {}", i.spare_free);
        let log = kmod::kernel_log()?;
        ensure!(log.contains("user queues from qid 512"), "nvme-pci did not log the reservation");
        Ok(())
    });
    h.check("placement: I/O on the first qid of the page matches the kernel's view", || {
        let mut qp = ctrl.create_qpair(64)?;
        ensure!(qp.qid() >= 512, "qid {}", qp.qid());
        ensure!(qp.shadow_doorbells() == shape().dbcs, "shadow doorbells {}", qp.shadow_doorbells());
        roundtrip(&ctrl, &mut qp, LBA + 8192, 70)
    });
    h.check("placement: past the reservation, CREATE_QPAIR says no spare queues and names it", || {
        let n = user_queues_param();
        let qps = (0..n).map(|_| ctrl.create_qpair(16)).collect::<Result<Vec<_>, _>>()?;
        ensure!(qps.iter().all(|q| (512..512 + n).contains(&u32::from(q.qid()))), "qids outside the reservation");
        match ctrl.create_qpair(16) {
            Err(Error::NoSpareQueues) => {}
            other => bail!("expected no spare queues, got {other:?}"),
        }
        let log = kmod::kernel_log()?;
        ensure!(log.contains("homi holds all of nvme-pci's user queues"), "no kernel log line names the reservation");
        Ok(())
    });
    h.check("placement: its doorbell sits at the start of its page", || {
        let (_homi, _nvme, q) = raw_qpair(16)?;
        ensure!(q.sq_doorbell == 8 * (q.qid % 512), "qid {} doorbell at {:#x}", q.qid, q.sq_doorbell);
        ensure!(q.flags & HOMI_QPAIR_SHADOW == 0 || q.shadow_sq == q.sq_doorbell, "shadow slot {}", q.shadow_sq);
        Ok(())
    });
    Ok(())
}
