//! Typed NVMe I/O commands (NVM command set) and completion statuses.
//!
//! Every opcode and status homi uses is named here; nothing else in the crate writes a
//! raw opcode.

use std::fmt;

/// NVM command set I/O opcodes.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Opcode {
    /// Commit volatile write cache contents to media.
    Flush = 0x00,
    /// Write logical blocks.
    Write = 0x01,
    /// Read logical blocks.
    Read = 0x02,
    /// Compare logical blocks against a buffer.
    Compare = 0x05,
    /// Write zeroes to logical blocks without a data buffer.
    WriteZeroes = 0x08,
    /// Dataset Management (deallocate, "trim").
    DatasetManagement = 0x09,
}

/// A 64-byte submission queue entry.
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sqe(pub [u32; 16]);

/// One NVMe I/O command, built with required fields first and optional ones with
/// defaults.
///
/// It holds its submission queue entry ready-made, so submitting copies 64 bytes and
/// sets the command identifier.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Command {
    sqe: Sqe,
}

impl Command {
    fn new(opcode: Opcode, nsid: u32) -> Self {
        let mut d = [0u32; 16];
        d[0] = opcode as u32;
        d[1] = nsid;
        Self { sqe: Sqe(d) }
    }

    fn blocks(mut self, slba: u64, blocks: u32) -> Self {
        assert!((1..=65536).contains(&blocks), "an I/O command moves 1..=65536 blocks");
        self.sqe.0[10] = slba as u32;
        self.sqe.0[11] = (slba >> 32) as u32;
        // Number of Logical Blocks, zero-based.
        self.sqe.0[12] = blocks - 1;
        self
    }

    /// Reads `blocks` logical blocks from `slba` of namespace `nsid`.
    pub fn read(nsid: u32, slba: u64, blocks: u32) -> Self {
        Self::new(Opcode::Read, nsid).blocks(slba, blocks)
    }

    /// Writes `blocks` logical blocks at `slba` of namespace `nsid`.
    pub fn write(nsid: u32, slba: u64, blocks: u32) -> Self {
        Self::new(Opcode::Write, nsid).blocks(slba, blocks)
    }

    /// Compares `blocks` logical blocks at `slba` with the data buffer.
    pub fn compare(nsid: u32, slba: u64, blocks: u32) -> Self {
        Self::new(Opcode::Compare, nsid).blocks(slba, blocks)
    }

    /// Zeroes `blocks` logical blocks at `slba`; needs no data buffer.
    pub fn write_zeroes(nsid: u32, slba: u64, blocks: u32) -> Self {
        Self::new(Opcode::WriteZeroes, nsid).blocks(slba, blocks)
    }

    /// Flushes the namespace's volatile write cache.
    pub fn flush(nsid: u32) -> Self {
        Self::new(Opcode::Flush, nsid)
    }

    /// Deallocates ranges: the data buffer holds `ranges` 16-byte range descriptors.
    pub fn deallocate(nsid: u32, ranges: u32) -> Self {
        assert!((1..=256).contains(&ranges), "Dataset Management takes 1..=256 ranges");
        let mut c = Self::new(Opcode::DatasetManagement, nsid);
        // Number of Ranges, zero-based; attribute: Deallocate.
        c.sqe.0[10] = ranges - 1;
        c.sqe.0[11] = 1 << 2;
        c
    }

    /// Sets the data pointer (PRP entry 1 and 2).
    pub fn with_prps(mut self, prp1: u64, prp2: u64) -> Self {
        self.sqe.0[6] = prp1 as u32;
        self.sqe.0[7] = (prp1 >> 32) as u32;
        self.sqe.0[8] = prp2 as u32;
        self.sqe.0[9] = (prp2 >> 32) as u32;
        self
    }

    /// Forces the write (or read) to media (Force Unit Access); only for commands that
    /// move logical blocks.
    pub fn with_fua(mut self, fua: bool) -> Self {
        if self.block_count() > 0 {
            self.sqe.0[12] = (self.sqe.0[12] & !(1 << 30)) | (u32::from(fua) << 30);
        }
        self
    }

    /// The opcode.
    pub fn opcode(&self) -> Opcode {
        match self.sqe.0[0] as u8 {
            0x00 => Opcode::Flush,
            0x01 => Opcode::Write,
            0x02 => Opcode::Read,
            0x05 => Opcode::Compare,
            0x08 => Opcode::WriteZeroes,
            _ => Opcode::DatasetManagement,
        }
    }

    /// Logical blocks moved (0 for commands without an LBA range).
    pub fn block_count(&self) -> u32 {
        match self.opcode() {
            Opcode::Flush | Opcode::DatasetManagement => 0,
            _ => (self.sqe.0[12] & 0xffff) + 1,
        }
    }

    /// The wire format, with command identifier `cid`.
    #[inline(always)]
    pub fn to_sqe(&self, cid: u16) -> Sqe {
        let mut s = self.sqe;
        s.0[0] |= u32::from(cid) << 16;
        s
    }
}

/// Status Code Type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatusType {
    /// Generic Command Status.
    Generic,
    /// Command Specific Status.
    CommandSpecific,
    /// Media and Data Integrity Errors.
    Media,
    /// Path Related Status.
    Path,
    /// Vendor specific.
    Vendor,
    /// A reserved type.
    Reserved(u8),
}

/// A completion status (the 15 bits above the phase tag).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Status(pub u16);

impl Status {
    /// Success.
    pub const SUCCESS: Status = Status(0);
    /// Generic: Invalid Command Opcode.
    pub const INVALID_OPCODE: Status = Status(0x01);
    /// Generic: Invalid Field in Command.
    pub const INVALID_FIELD: Status = Status(0x02);
    /// Generic: Data Transfer Error.
    pub const DATA_TRANSFER_ERROR: Status = Status(0x04);
    /// Generic: Internal Error.
    pub const INTERNAL_ERROR: Status = Status(0x06);
    /// Generic: Command Abort Requested.
    pub const ABORT_REQUESTED: Status = Status(0x07);
    /// Generic: Command Aborted due to SQ Deletion.
    pub const ABORTED_SQ_DELETION: Status = Status(0x08);
    /// Generic: Invalid Namespace or Format.
    pub const INVALID_NAMESPACE: Status = Status(0x0b);
    /// Generic: LBA Out of Range.
    pub const LBA_OUT_OF_RANGE: Status = Status(0x80);
    /// Generic: Capacity Exceeded.
    pub const CAPACITY_EXCEEDED: Status = Status(0x81);
    /// Generic: Namespace Not Ready.
    pub const NAMESPACE_NOT_READY: Status = Status(0x82);
    /// Media: Write Fault.
    pub const WRITE_FAULT: Status = Status(0x280);
    /// Media: Unrecovered Read Error.
    pub const UNRECOVERED_READ_ERROR: Status = Status(0x281);
    /// Media: Compare Failure.
    pub const COMPARE_FAILURE: Status = Status(0x285);
    /// Media: Access Denied.
    pub const ACCESS_DENIED: Status = Status(0x286);

    /// Mask of the Status Code and Status Code Type, without the flags.
    const CODE_MASK: u16 = 0x7ff;

    /// Whether the command succeeded.
    pub fn is_success(self) -> bool {
        self.0 & Self::CODE_MASK == 0
    }

    /// Status Code.
    pub fn code(self) -> u8 {
        self.0 as u8
    }

    /// Status Code Type.
    pub fn kind(self) -> StatusType {
        match (self.0 >> 8) & 0x7 {
            0 => StatusType::Generic,
            1 => StatusType::CommandSpecific,
            2 => StatusType::Media,
            3 => StatusType::Path,
            7 => StatusType::Vendor,
            t => StatusType::Reserved(t as u8),
        }
    }

    /// Do Not Retry.
    pub fn dnr(self) -> bool {
        self.0 & (1 << 14) != 0
    }

    /// The same status without its flags (More, DNR, CRD): what the constants hold.
    pub fn code_only(self) -> Status {
        Status(self.0 & Self::CODE_MASK)
    }

    fn name(self) -> Option<&'static str> {
        Some(match self.code_only() {
            Self::SUCCESS => "success",
            Self::INVALID_OPCODE => "invalid command opcode",
            Self::INVALID_FIELD => "invalid field in command",
            Self::DATA_TRANSFER_ERROR => "data transfer error",
            Self::INTERNAL_ERROR => "internal error",
            Self::ABORT_REQUESTED => "command abort requested",
            Self::ABORTED_SQ_DELETION => "aborted: submission queue deleted",
            Self::INVALID_NAMESPACE => "invalid namespace or format",
            Self::LBA_OUT_OF_RANGE => "LBA out of range",
            Self::CAPACITY_EXCEEDED => "capacity exceeded",
            Self::NAMESPACE_NOT_READY => "namespace not ready",
            Self::WRITE_FAULT => "media: write fault",
            Self::UNRECOVERED_READ_ERROR => "media: unrecovered read error",
            Self::COMPARE_FAILURE => "media: compare failure",
            Self::ACCESS_DENIED => "media: access denied",
            _ => return None,
        })
    }
}

impl fmt::Debug for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Status({:#05x} {:?} {})", self.0, self.kind(), self.name().unwrap_or("unnamed"))
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => write!(f, "{n} ({:#05x})", self.0),
            None => write!(f, "{:?} status {:#04x} ({:#05x})", self.kind(), self.code(), self.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_encodes_lba_count_and_cid() {
        let s = Command::read(1, 0x1_0000_0002, 8).with_prps(0x1000, 0x2000).to_sqe(7);
        assert_eq!(s.0[0], 0x02 | 7 << 16);
        assert_eq!(s.0[1], 1);
        assert_eq!((s.0[6], s.0[8]), (0x1000, 0x2000));
        assert_eq!((s.0[10], s.0[11]), (2, 1));
        assert_eq!(s.0[12], 7);
    }

    #[test]
    fn statuses_decode() {
        let media = Status(0x281 | 1 << 14);
        assert_eq!(media.kind(), StatusType::Media);
        assert!(media.dnr());
        assert_eq!(media.code_only(), Status::UNRECOVERED_READ_ERROR);
        assert!(media.to_string().contains("unrecovered read error"));
        assert!(Status(0).is_success());
        assert_eq!(Status(0x1_0c).kind(), StatusType::CommandSpecific);
    }
}
