// SPDX-License-Identifier: GPL-2.0

//! The NVMe admin commands homi sends through the driver's admin queue (NVMe Base
//! Specification 2.0, section 5), and parsing of what they return.

use kernel::prelude::*;

use crate::glue::Ctrl;

/// Admin opcodes homi uses.
#[repr(u8)]
#[derive(Clone, Copy)]
enum Opcode {
    DeleteIoSq = 0x00,
    CreateIoSq = 0x01,
    DeleteIoCq = 0x04,
    CreateIoCq = 0x05,
    Identify = 0x06,
    GetFeatures = 0x0a,
}

/// Feature Identifier: Number of Queues.
const FID_NUMBER_OF_QUEUES: u32 = 0x07;
/// Identify CNS: the Identify Namespace data structure.
const CNS_NAMESPACE: u32 = 0x00;
/// Identify CNS: the active namespace ID list.
const CNS_ACTIVE_NSIDS: u32 = 0x02;
/// Create I/O CQ/SQ dword 11: physically contiguous.
const QUEUE_PHYS_CONTIG: u32 = 1 << 0;

/// A 64-byte submission queue entry; the driver fills in the command identifier.
fn sqe(opcode: Opcode, nsid: u32, prp1: u64, cdw10: u32, cdw11: u32) -> [u32; 16] {
    let mut c = [0u32; 16];
    c[0] = opcode as u32;
    c[1] = nsid;
    c[6] = prp1 as u32;
    c[7] = (prp1 >> 32) as u32;
    c[10] = cdw10;
    c[11] = cdw11;
    c
}

/// I/O queues the controller granted: Get Features, Number of Queues. Both counts are
/// zero-based; a queue pair needs one of each.
pub(crate) fn granted_io_queues(ctrl: &Ctrl) -> Result<u32> {
    let dw0 = ctrl.admin(
        &sqe(Opcode::GetFeatures, 0, 0, FID_NUMBER_OF_QUEUES, 0),
        None,
    )?;
    Ok((dw0 & 0xffff).min(dw0 >> 16) + 1)
}

/// What a Create I/O CQ or SQ did.
pub(crate) enum Created {
    /// The queue exists now.
    Yes,
    /// The controller refused (the status is logged): no queue was created, and
    /// whatever holds that qid, if anything, is not ours to delete.
    Refused,
}

/// Status code type 3 (path related): the host gave up on the command (aborted it in a
/// reset, or never sent it), so it says nothing of what the controller did.
const SCT_PATH: u16 = 0x300;

fn create(ctrl: &Ctrl, sqe: &[u32; 16]) -> Result<Created> {
    Ok(match ctrl.admin_status(sqe, None)? {
        Ok(_) => Created::Yes,
        Err(status) if status & 0x700 == SCT_PATH => return Err(EIO),
        Err(status) => {
            if crate::glue::log_ratelimit() {
                pr_warn!(
                    "nvme{}: create (opcode {:#04x}) refused: status {:#x}\n",
                    ctrl.instance(),
                    sqe[0] & 0xff,
                    status
                );
            }
            Created::Refused
        }
    })
}

/// Creates an I/O completion queue with interrupts disabled: homi's queues are polled,
/// and every MSI-X vector belongs to nvme-pci. An error means the outcome is unknown.
pub(crate) fn create_cq(ctrl: &Ctrl, qid: u16, depth: u32, dma: u64) -> Result<Created> {
    let cdw10 = ((depth - 1) << 16) | u32::from(qid);
    create(
        ctrl,
        &sqe(Opcode::CreateIoCq, 0, dma, cdw10, QUEUE_PHYS_CONTIG),
    )
}

/// Creates an I/O submission queue bound to the completion queue of the same qid.
pub(crate) fn create_sq(ctrl: &Ctrl, qid: u16, depth: u32, dma: u64) -> Result<Created> {
    let cdw10 = ((depth - 1) << 16) | u32::from(qid);
    let cdw11 = (u32::from(qid) << 16) | QUEUE_PHYS_CONTIG;
    create(ctrl, &sqe(Opcode::CreateIoSq, 0, dma, cdw10, cdw11))
}

/// Status: command specific (type 1), Invalid Queue Identifier (0x01).
const SC_INVALID_QID: u16 = 0x101;

/// What a Delete I/O SQ or CQ found.
pub(crate) enum Deleted {
    /// The queue existed and is deleted.
    Now,
    /// The controller has no such queue (a reset took it).
    NotThere,
}

fn delete(ctrl: &Ctrl, op: Opcode, qid: u16) -> Result<Deleted> {
    match ctrl.admin_status(&sqe(op, 0, 0, u32::from(qid), 0), None)? {
        Ok(_) => Ok(Deleted::Now),
        Err(SC_INVALID_QID) => Ok(Deleted::NotThere),
        Err(status) => {
            if crate::glue::log_ratelimit() {
                pr_warn!(
                    "nvme{}: delete of qid {} (opcode {:#04x}) failed: status {:#x}\n",
                    ctrl.instance(),
                    qid,
                    op as u8,
                    status
                );
            }
            Err(EIO)
        }
    }
}

/// Deletes an I/O submission queue; the controller aborts what it still holds, and
/// after it completes no command of the queue touches memory any more.
pub(crate) fn delete_sq(ctrl: &Ctrl, qid: u16) -> Result<Deleted> {
    delete(ctrl, Opcode::DeleteIoSq, qid)
}

/// Deletes an I/O completion queue (its SQ must be gone first).
pub(crate) fn delete_cq(ctrl: &Ctrl, qid: u16) -> Result<Deleted> {
    delete(ctrl, Opcode::DeleteIoCq, qid)
}

/// One active namespace.
pub(crate) struct Namespace {
    pub(crate) nsid: u32,
    pub(crate) lba_shift: u32,
    pub(crate) blocks: u64,
    pub(crate) meta_size: u32,
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// The active namespaces, lowest nsid first, at most `max`; also says whether more
/// exist.
pub(crate) fn namespaces(ctrl: &Ctrl, max: usize) -> Result<(KVec<Namespace>, bool)> {
    // Identify data must be DMA-able, hence a heap page rather than the stack.
    let mut page = KVec::from_elem(0u8, 4096, GFP_KERNEL)?;
    ctrl.admin(
        &sqe(Opcode::Identify, 0, 0, CNS_ACTIVE_NSIDS, 0),
        Some(&mut page),
    )?;
    let mut nsids = KVec::new();
    for i in 0..1024 {
        match le32(&page, i * 4) {
            0 => break,
            id => nsids.push(id, GFP_KERNEL)?,
        }
    }
    let more = nsids.len() > max;
    let mut out = KVec::new();
    for &nsid in nsids.iter().take(max) {
        page.fill(0);
        ctrl.admin(
            &sqe(Opcode::Identify, nsid, 0, CNS_NAMESPACE, 0),
            Some(&mut page),
        )?;
        let blocks = u64::from(le32(&page, 0)) | (u64::from(le32(&page, 4)) << 32);
        // FLBAS bits 3:0 (and 6:5 as the high bits) select the current LBA format.
        let flbas = usize::from(page[26]);
        let format = (flbas & 0xf) | ((flbas >> 5) & 0x3) << 4;
        let lbaf = le32(&page, 128 + 4 * format);
        out.push(
            Namespace {
                nsid,
                lba_shift: (lbaf >> 16) & 0xff,
                blocks,
                meta_size: lbaf & 0xffff,
            },
            GFP_KERNEL,
        )?;
    }
    Ok((out, more))
}
