//! Physical Region Page entries for data in one device-contiguous buffer.
//!
//! PRP1 names the first byte (dword-aligned, any offset in its page); every further
//! page is named whole. Up to two pages fit in PRP1 and PRP2; beyond that PRP2 points
//! to a list page of 8-byte entries. One list page (512 entries, 2 MiB) covers every
//! transfer this crate allows, so lists are never chained.

use crate::{Error, Result};

/// The memory page size homi programs (CC.MPS = 0).
pub const PAGE: usize = 4096;
/// Pages one PRP list page can name.
pub(crate) const LIST_ENTRIES: usize = PAGE / 8;

/// The PRP entries of one transfer.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Prps {
    /// PRP1 and PRP2 name the data directly (PRP2 is 0 for one page).
    Direct(u64, u64),
    /// PRP1 names the first page; PRP2 must point to a list of `pages`.
    List { first: u64, pages: Pages },
}

/// The page addresses a PRP list holds, in order.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Pages {
    next: u64,
    left: usize,
}

impl Iterator for Pages {
    type Item = u64;

    fn next(&mut self) -> Option<u64> {
        if self.left == 0 {
            return None;
        }
        let a = self.next;
        self.next += PAGE as u64;
        self.left -= 1;
        Some(a)
    }
}

/// The PRP entries for `len` bytes at `offset` of a buffer of `buf_len` bytes that the
/// device sees contiguously from `base`.
pub(crate) fn span(base: u64, buf_len: usize, offset: usize, len: usize) -> Result<Prps> {
    if len == 0 || offset.checked_add(len).is_none_or(|end| end > buf_len) {
        return Err(Error::Invalid("range beyond the buffer"));
    }
    let first = base + offset as u64;
    if first % 4 != 0 {
        return Err(Error::Invalid("data must start on a 4-byte boundary"));
    }
    let first_left = PAGE - (first as usize % PAGE);
    if len <= first_left {
        return Ok(Prps::Direct(first, 0));
    }
    let second = first + first_left as u64;
    let rest = len - first_left;
    if rest <= PAGE {
        return Ok(Prps::Direct(first, second));
    }
    let pages = rest.div_ceil(PAGE);
    if pages > LIST_ENTRIES {
        return Err(Error::Invalid("transfer needs more than one PRP list page"));
    }
    Ok(Prps::List { first, pages: Pages { next: second, left: pages } })
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: u64 = 0x10_0000;

    #[test]
    fn one_and_two_pages_are_direct() {
        assert_eq!(span(B, 1 << 20, 0, 4096).unwrap(), Prps::Direct(B, 0));
        assert_eq!(span(B, 1 << 20, 512, 3584).unwrap(), Prps::Direct(B + 512, 0));
        assert_eq!(span(B, 1 << 20, 512, 4096).unwrap(), Prps::Direct(B + 512, B + 4096));
        assert_eq!(span(B, 1 << 20, 0, 8192).unwrap(), Prps::Direct(B, B + 4096));
    }

    #[test]
    fn longer_transfers_list_every_page_after_the_first() {
        let Prps::List { first, pages } = span(B, 4 << 20, 512, 3 * 4096).unwrap() else { panic!() };
        assert_eq!(first, B + 512);
        assert_eq!(pages.collect::<Vec<_>>(), vec![B + 4096, B + 8192, B + 12288]);
        // The largest single-list transfer: 1 + 512 pages.
        let Prps::List { pages, .. } = span(B, 4 << 20, 0, 513 * 4096).unwrap() else { panic!() };
        assert_eq!(pages.count(), 512);
        assert!(span(B, 4 << 20, 0, 514 * 4096).is_err());
    }

    #[test]
    fn bad_ranges_are_refused() {
        assert!(span(B, 8192, 0, 0).is_err());
        assert!(span(B, 8192, 4096, 8192).is_err());
        assert!(span(B, 8192, 2, 512).is_err());
        assert!(span(B, 8192, usize::MAX, 2).is_err());
    }
}
