//! Doorbells: the MMIO register alone, or NVMe's shadow doorbells with event index.
//!
//! With Doorbell Buffer Config (shadow doorbells) the controller reads a queue's SQ
//! tail and CQ head from host memory, the shadow slot, and publishes in a second
//! page, the event index slot, the value after which it wants an MMIO write. The host
//! stores the new value in the shadow slot, then reads the event index, and writes
//! the MMIO register only if the new value passed it. A controller that is still
//! working through the queue needs no MMIO write, which in a VM is an exit saved.

use std::sync::atomic::{fence, AtomicU32, Ordering};

/// Whether moving a doorbell from `old` to `new` passed `event_idx`: the controller
/// asked for an MMIO write once the value moves past `event_idx` (NVMe's shadow
/// doorbell rule, the same arithmetic as virtio's `vring_need_event`, modulo 2^16).
#[inline(always)]
pub fn need_event(event_idx: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(event_idx).wrapping_sub(1) < new.wrapping_sub(old)
}

/// Doorbell writes of a queue pair, SQ tail and CQ head together.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DoorbellStats {
    /// Doorbell updates: new SQ tails and CQ heads published.
    pub updates: u64,
    /// Of those, the ones that wrote the MMIO register (every one without shadow
    /// doorbells).
    pub mmio: u64,
}

/// One doorbell register of a queue, with its shadow slots when the controller uses
/// shadow doorbells: three addresses, for [`RawQueue`](crate::RawQueue).
#[derive(Clone, Copy, Debug)]
pub struct Doorbell {
    mmio: *mut u32,
    /// The shadow slot and event index slot, or null for MMIO only.
    shadow: *mut u32,
    eventidx: *const u32,
}

impl Doorbell {
    /// An MMIO-only doorbell: a 4-aligned register (or word) that lives as long as the
    /// queue pair that rings it.
    pub fn mmio(mmio: *mut u8) -> Self {
        Self { mmio: mmio.cast(), shadow: std::ptr::null_mut(), eventidx: std::ptr::null() }
    }

    /// A doorbell with shadow and event index slots, each 4-aligned and living as long
    /// as the queue pair that rings it.
    pub fn shadowed(mmio: *mut u8, shadow: *mut u8, eventidx: *const u8) -> Self {
        Self { mmio: mmio.cast(), shadow: shadow.cast(), eventidx: eventidx.cast() }
    }

    /// The addresses: MMIO register, shadow slot and event index slot (null without
    /// shadow doorbells).
    pub fn addrs(&self) -> (*mut u32, *mut u32, *const u32) {
        (self.mmio, self.shadow, self.eventidx)
    }

    /// Whether the doorbell goes through shadow slots.
    pub fn is_shadowed(&self) -> bool {
        !self.shadow.is_null()
    }

    /// Publishes `value` (a new SQ tail or CQ head); returns whether it wrote the MMIO
    /// register. Stores to the rings must already be ordered before this call.
    ///
    /// The pointers must be live, 4-aligned slots: the constructors' callers map them
    /// for as long as the queue pair uses this doorbell.
    #[inline(always)]
    pub(crate) fn ring(&self, value: u32) -> bool {
        if !self.shadow.is_null() {
            // SAFETY: a live, 4-aligned shadow slot (see above); only this queue pair
            // writes it, and the controller reads it.
            let shadow = unsafe { AtomicU32::from_ptr(self.shadow) };
            let old = shadow.load(Ordering::Relaxed);
            shadow.store(value, Ordering::Release);
            // The new value must be visible before the event index is read, or both
            // sides could miss each other's update (a store-load barrier: mfence).
            fence(Ordering::SeqCst);
            // SAFETY: a live, 4-aligned event index slot, which the controller writes.
            let event_idx = unsafe { AtomicU32::from_ptr(self.eventidx.cast_mut()) }.load(Ordering::Acquire);
            if !need_event(event_idx as u16, value as u16, old as u16) {
                return false;
            }
        }
        // SAFETY: a live, 4-aligned doorbell register of the mapped doorbell page.
        unsafe { AtomicU32::from_ptr(self.mmio) }.store(value, Ordering::Release);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::need_event;

    #[test]
    fn event_index_rule() {
        // The controller has seen tail 4 and wants to hear of anything past it.
        assert!(need_event(4, 5, 4));
        assert!(need_event(4, 9, 4));
        // It still works on the queue, up to 7: moving 5 -> 6 needs no MMIO write.
        assert!(!need_event(7, 6, 5));
        // Moving past the event index needs one, however far.
        assert!(need_event(7, 9, 6));
        assert!(!need_event(7, 7, 6));
        assert!(need_event(7, 8, 7));
        // Wrapping at 2^16, as the slots are compared modulo 2^16.
        assert!(need_event(u16::MAX, 1, u16::MAX));
        assert!(!need_event(3, 2, u16::MAX));
        // No movement never needs one.
        for e in [0u16, 5, u16::MAX] {
            assert!(!need_event(e, 9, 9));
        }
    }
}
