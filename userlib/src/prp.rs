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
pub(crate) enum Prps<'a> {
    /// PRP1 and PRP2 name the data directly (PRP2 is 0 for one page).
    Direct(u64, u64),
    /// PRP1 names the first page; PRP2 must point to a list of `pages`.
    List { first: u64, pages: Pages<'a> },
}

/// Where a buffer's pages are, as the device sees them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Layout<'a> {
    /// Contiguous from this address (module allocations, host memory).
    Contiguous(u64),
    /// One address per page (registered user memory).
    Pages(&'a [u64]),
}

impl Layout<'_> {
    fn page(&self, i: usize) -> u64 {
        match self {
            Layout::Contiguous(base) => base + (i * PAGE) as u64,
            Layout::Pages(p) => p[i],
        }
    }
}

/// The page addresses a PRP list holds, in order.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Pages<'a> {
    layout: Layout<'a>,
    next: usize,
    left: usize,
}

impl Iterator for Pages<'_> {
    type Item = u64;

    fn next(&mut self) -> Option<u64> {
        if self.left == 0 {
            return None;
        }
        let a = self.layout.page(self.next);
        self.next += 1;
        self.left -= 1;
        Some(a)
    }
}

/// The PRP entries for `len` bytes at `offset` of a buffer of `buf_len` bytes laid out
/// as `layout` (page-aligned: byte `offset` is in page `offset / PAGE`).
pub(crate) fn span(layout: Layout<'_>, buf_len: usize, offset: usize, len: usize) -> Result<Prps<'_>> {
    if len == 0 || offset.checked_add(len).is_none_or(|end| end > buf_len) {
        return Err(Error::Invalid("range beyond the buffer"));
    }
    let first_page = offset / PAGE;
    let first = layout.page(first_page) + (offset % PAGE) as u64;
    if first % 4 != 0 {
        return Err(Error::Invalid("data must start on a 4-byte boundary"));
    }
    let first_left = PAGE - (first as usize % PAGE);
    if len <= first_left {
        return Ok(Prps::Direct(first, 0));
    }
    let rest = len - first_left;
    if rest <= PAGE {
        return Ok(Prps::Direct(first, layout.page(first_page + 1)));
    }
    let pages = rest.div_ceil(PAGE);
    if pages > LIST_ENTRIES {
        return Err(Error::Invalid("transfer needs more than one PRP list page"));
    }
    Ok(Prps::List { first, pages: Pages { layout, next: first_page + 1, left: pages } })
}

/// PRP1, PRP2 (0 when a list is needed) and the PRP list of one transfer.
pub type PrpEntries = (u64, u64, Vec<u64>);

/// The PRP entries of `len` bytes at `offset` of memory whose 4096-byte page `i` the
/// controller reaches at `pages[i]`: PRP1, PRP2 (0 when a list is needed), and the
/// list PRP2 must then point to (empty otherwise). The rule both engines follow; the
/// device engine (`homi.cuh`) is checked against it on GPUs (`homi-gpucheck`).
pub fn prp_entries(pages: &[u64], offset: usize, len: usize) -> Result<PrpEntries> {
    match span(Layout::Pages(pages), pages.len() * PAGE, offset, len)? {
        Prps::Direct(a, b) => Ok((a, b, Vec::new())),
        Prps::List { first, pages } => Ok((first, 0, pages.collect())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: u64 = 0x10_0000;

    fn span(base: u64, buf_len: usize, offset: usize, len: usize) -> Result<Prps<'static>> {
        super::span(Layout::Contiguous(base), buf_len, offset, len)
    }

    #[test]
    fn scattered_pages_are_listed_one_by_one() {
        let pages = [0x9000, 0x3000, 0x7000, 0x1000];
        let l = Layout::Pages(&pages);
        assert_eq!(super::span(l, 4 * PAGE, 4096 + 8, 100).unwrap(), Prps::Direct(0x3008, 0));
        assert_eq!(super::span(l, 4 * PAGE, 4096, 8192).unwrap(), Prps::Direct(0x3000, 0x7000));
        let Prps::List { first, pages } = super::span(l, 4 * PAGE, 512, 4 * PAGE - 512).unwrap() else { panic!() };
        assert_eq!(first, 0x9200);
        assert_eq!(pages.collect::<Vec<_>>(), vec![0x3000, 0x7000, 0x1000]);
    }

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
