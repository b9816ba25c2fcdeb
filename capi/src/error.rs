//! Error codes, the one mapping from `homi::Error`, the thread-local message, and the
//! boundary that keeps Rust panics out of C.

use std::cell::RefCell;
use std::ffi::{c_char, c_int, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};

/// Error codes: every function that returns `int` returns 0 (or a count) on success and
/// one of these, negative, on failure. homi_strerror() names a code;
/// homi_last_error() tells what failed in detail.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(non_camel_case_types)]
pub enum HomiErr {
    /// Opening a device node failed (no such file, permission, no homi.ko loaded).
    HOMI_E_OPEN = -1,
    /// An ioctl on /dev/homi failed; the message names it and the errno.
    HOMI_E_IOCTL = -2,
    /// Mapping part of /dev/homi failed.
    HOMI_E_MMAP = -3,
    /// homi.ko speaks another ABI than this library.
    HOMI_E_ABI_MISMATCH = -4,
    /// The controller cannot reach this memory.
    HOMI_E_UNREACHABLE = -5,
    /// The controller has shadow doorbells on and the kernel reserved no user queues.
    HOMI_E_SHADOW_DOORBELLS = -6,
    /// Every qid the controller granted is in use.
    HOMI_E_NO_SPARE_QUEUES = -7,
    /// The controller is resetting or otherwise not live: try again.
    HOMI_E_NOT_LIVE = -8,
    /// A controller reset destroyed the queue; its in-flight commands are lost.
    HOMI_E_RESET = -9,
    /// The controller left its driver; only closing is left.
    HOMI_E_GONE = -10,
    /// A command completed with an error status.
    HOMI_E_NVME = -11,
    /// No completion arrived in time.
    HOMI_E_TIMEOUT = -12,
    /// The submission queue has no free slot: poll, then submit again.
    HOMI_E_QUEUE_FULL = -13,
    /// An argument is out of range or does not fit the buffer, queue or namespace.
    HOMI_E_INVALID = -14,
    /// A file-system call (sysfs, stat) failed.
    HOMI_E_IO = -15,
    /// A pointer argument that must not be NULL was NULL.
    HOMI_E_NULL_ARG = -16,
    /// A bug: the library panicked; the call was abandoned (the message says where).
    HOMI_E_PANIC = -17,
}

impl HomiErr {
    /// Every code, for tests.
    #[cfg(test)]
    pub(crate) const ALL: [HomiErr; 17] = [
        HomiErr::HOMI_E_OPEN,
        HomiErr::HOMI_E_IOCTL,
        HomiErr::HOMI_E_MMAP,
        HomiErr::HOMI_E_ABI_MISMATCH,
        HomiErr::HOMI_E_UNREACHABLE,
        HomiErr::HOMI_E_SHADOW_DOORBELLS,
        HomiErr::HOMI_E_NO_SPARE_QUEUES,
        HomiErr::HOMI_E_NOT_LIVE,
        HomiErr::HOMI_E_RESET,
        HomiErr::HOMI_E_GONE,
        HomiErr::HOMI_E_NVME,
        HomiErr::HOMI_E_TIMEOUT,
        HomiErr::HOMI_E_QUEUE_FULL,
        HomiErr::HOMI_E_INVALID,
        HomiErr::HOMI_E_IO,
        HomiErr::HOMI_E_NULL_ARG,
        HomiErr::HOMI_E_PANIC,
    ];

    fn from_code(code: c_int) -> Option<Self> {
        Some(match code {
            -1 => HomiErr::HOMI_E_OPEN,
            -2 => HomiErr::HOMI_E_IOCTL,
            -3 => HomiErr::HOMI_E_MMAP,
            -4 => HomiErr::HOMI_E_ABI_MISMATCH,
            -5 => HomiErr::HOMI_E_UNREACHABLE,
            -6 => HomiErr::HOMI_E_SHADOW_DOORBELLS,
            -7 => HomiErr::HOMI_E_NO_SPARE_QUEUES,
            -8 => HomiErr::HOMI_E_NOT_LIVE,
            -9 => HomiErr::HOMI_E_RESET,
            -10 => HomiErr::HOMI_E_GONE,
            -11 => HomiErr::HOMI_E_NVME,
            -12 => HomiErr::HOMI_E_TIMEOUT,
            -13 => HomiErr::HOMI_E_QUEUE_FULL,
            -14 => HomiErr::HOMI_E_INVALID,
            -15 => HomiErr::HOMI_E_IO,
            -16 => HomiErr::HOMI_E_NULL_ARG,
            -17 => HomiErr::HOMI_E_PANIC,
            _ => return None,
        })
    }

    fn text(self) -> &'static CStr {
        match self {
            HomiErr::HOMI_E_OPEN => c"cannot open a device node",
            HomiErr::HOMI_E_IOCTL => c"a homi ioctl failed",
            HomiErr::HOMI_E_MMAP => c"a homi mapping failed",
            HomiErr::HOMI_E_ABI_MISMATCH => c"homi.ko speaks another ABI than this library",
            HomiErr::HOMI_E_UNREACHABLE => c"the controller cannot reach this memory",
            HomiErr::HOMI_E_SHADOW_DOORBELLS => c"shadow doorbells are on and no user queues are reserved",
            HomiErr::HOMI_E_NO_SPARE_QUEUES => c"no spare I/O queues on this controller",
            HomiErr::HOMI_E_NOT_LIVE => c"the controller is not live (resetting?): try again",
            HomiErr::HOMI_E_RESET => {
                c"the controller was reset: in-flight commands are lost; rearm or destroy the queue"
            }
            HomiErr::HOMI_E_GONE => c"the controller left its driver",
            HomiErr::HOMI_E_NVME => c"the command completed with an error status",
            HomiErr::HOMI_E_TIMEOUT => c"no completion in time",
            HomiErr::HOMI_E_QUEUE_FULL => c"submission queue full",
            HomiErr::HOMI_E_INVALID => c"invalid argument",
            HomiErr::HOMI_E_IO => c"a file-system call failed",
            HomiErr::HOMI_E_NULL_ARG => c"a required pointer argument is NULL",
            HomiErr::HOMI_E_PANIC => c"internal error: the library panicked",
        }
    }
}

/// Why a call failed: its code and the detailed message homi_last_error() returns.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) code: HomiErr,
    pub(crate) msg: String,
}

impl Failure {
    pub(crate) fn new(code: HomiErr, msg: impl Into<String>) -> Self {
        Self { code, msg: msg.into() }
    }

    pub(crate) fn invalid(msg: impl Into<String>) -> Self {
        Self::new(HomiErr::HOMI_E_INVALID, msg)
    }

    pub(crate) fn null(arg: &str) -> Self {
        Self::new(HomiErr::HOMI_E_NULL_ARG, format!("{arg} is NULL"))
    }
}

/// The one mapping from the engine's errors to codes.
pub(crate) fn code_of(e: &homi::Error) -> HomiErr {
    use homi::Error as E;
    match e {
        E::Open { .. } => HomiErr::HOMI_E_OPEN,
        E::Ioctl { .. } => HomiErr::HOMI_E_IOCTL,
        E::Mmap { .. } => HomiErr::HOMI_E_MMAP,
        E::AbiMismatch { .. } => HomiErr::HOMI_E_ABI_MISMATCH,
        E::Unreachable => HomiErr::HOMI_E_UNREACHABLE,
        E::ShadowDoorbells => HomiErr::HOMI_E_SHADOW_DOORBELLS,
        E::NoSpareQueues => HomiErr::HOMI_E_NO_SPARE_QUEUES,
        E::NotLive => HomiErr::HOMI_E_NOT_LIVE,
        E::Reset { .. } => HomiErr::HOMI_E_RESET,
        E::Gone => HomiErr::HOMI_E_GONE,
        E::Nvme(_) => HomiErr::HOMI_E_NVME,
        E::Timeout(_) => HomiErr::HOMI_E_TIMEOUT,
        E::QueueFull => HomiErr::HOMI_E_QUEUE_FULL,
        E::Invalid(_) => HomiErr::HOMI_E_INVALID,
        E::Io { .. } => HomiErr::HOMI_E_IO,
        // Variants behind the engine's optional features (CUDA) never reach this crate's
        // calls; without those features this arm is unreachable.
        #[allow(unreachable_patterns)]
        _ => HomiErr::HOMI_E_IO,
    }
}

impl From<homi::Error> for Failure {
    fn from(e: homi::Error) -> Self {
        Self { code: code_of(&e), msg: e.to_string() }
    }
}

thread_local! {
    static LAST: RefCell<CString> = RefCell::new(CString::default());
}

/// Keeps `msg` for homi_last_error(). Never panics: it runs outside the unwind guard,
/// possibly from a C thread's destructor after this thread's storage is gone (then the
/// message is dropped).
fn set_last(msg: String) {
    let msg = CString::new(msg.replace('\0', " ")).unwrap_or_default();
    let _ = LAST.try_with(|l| l.try_borrow_mut().map(|mut l| *l = msg));
}

/// Runs the body of an extern function that returns `int`: `Ok(n)` is returned as is,
/// a failure as its code with its message kept for homi_last_error(), and a panic as
/// `HOMI_E_PANIC`: it never unwinds into C.
pub(crate) fn guard(what: &str, f: impl FnOnce() -> Result<c_int, Failure>) -> c_int {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(n)) => n,
        Ok(Err(e)) => {
            set_last(format!("{what}: {}", e.msg));
            e.code as c_int
        }
        Err(p) => {
            set_last(format!("{what}: panicked: {}", panic_text(&*p)));
            HomiErr::HOMI_E_PANIC as c_int
        }
    }
}

/// As [`guard`] for functions that cannot report a code (getters, destructors):
/// a panic yields `fallback` and leaves its message for homi_last_error().
pub(crate) fn guard_or<T>(what: &str, fallback: T, f: impl FnOnce() -> T) -> T {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|p| {
        set_last(format!("{what}: panicked: {}", panic_text(&*p)));
        fallback
    })
}

fn panic_text(p: &(dyn std::any::Any + Send)) -> &str {
    p.downcast_ref::<&str>().copied().or_else(|| p.downcast_ref::<String>().map(String::as_str)).unwrap_or("?")
}

/// The static text of an error code: "success" for 0, a fixed text for every
/// `homi_err` code, and "unknown homi error code" for anything else. Never NULL.
#[no_mangle]
pub extern "C" fn homi_strerror(code: c_int) -> *const c_char {
    if code == 0 {
        return c"success".as_ptr();
    }
    HomiErr::from_code(code).map_or(c"unknown homi error code", HomiErr::text).as_ptr()
}

/// The detailed message of the last call that failed on this thread: what was called
/// and why it failed ("homi_submit_read: len 4096 is not nblocks 1 times the LBA size
/// 512 of nsid 1"). An empty string while no call has failed on this thread. Calls
/// that succeed leave it as it was. The text stays valid until the next failing call
/// on this thread; never NULL.
#[no_mangle]
pub extern "C" fn homi_last_error() -> *const c_char {
    // The pointer stays valid after the borrow ends: the string is replaced, not
    // changed in place, only by the next failing call on this thread.
    LAST.try_with(|l| l.try_borrow().map(|l| l.as_ptr()).ok()).ok().flatten().unwrap_or(c"".as_ptr())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(p: *const c_char) -> String {
        // SAFETY: the functions under test return NUL-terminated strings that live
        // until the next failing call on this thread.
        unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
    }

    #[test]
    fn every_code_has_its_own_text() {
        let mut seen = std::collections::HashSet::new();
        for e in HomiErr::ALL {
            assert_eq!(HomiErr::from_code(e as c_int), Some(e));
            let t = text(homi_strerror(e as c_int));
            assert!(!t.is_empty() && seen.insert(t.clone()), "{e:?}: {t:?}");
        }
        assert_eq!(text(homi_strerror(0)), "success");
        assert_eq!(text(homi_strerror(-1000)), "unknown homi error code");
        assert_eq!(text(homi_strerror(5)), "unknown homi error code");
    }

    #[test]
    fn failures_and_panics_leave_a_message() {
        assert_eq!(guard("f", || Ok(3)), 3);
        assert_eq!(guard("f", || Err(Failure::invalid("bad"))), HomiErr::HOMI_E_INVALID as c_int);
        assert_eq!(text(homi_last_error()), "f: bad");
        assert_eq!(guard("g", || Ok(0)), 0);
        assert_eq!(text(homi_last_error()), "f: bad", "success leaves the message alone");
        let hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        let code = guard("h", || panic!("boom {}", 7));
        let got = guard_or("k", 42u32, || panic!("static"));
        std::panic::set_hook(hook);
        assert_eq!(code, HomiErr::HOMI_E_PANIC as c_int);
        assert_eq!(got, 42);
        assert_eq!(text(homi_last_error()), "k: panicked: static");
    }

    #[test]
    fn engine_errors_map_to_their_codes() {
        let cases = [
            (homi::Error::NotLive, HomiErr::HOMI_E_NOT_LIVE),
            (homi::Error::Reset { old: 1, new: 2 }, HomiErr::HOMI_E_RESET),
            (homi::Error::Gone, HomiErr::HOMI_E_GONE),
            (homi::Error::QueueFull, HomiErr::HOMI_E_QUEUE_FULL),
            (homi::Error::Invalid("x"), HomiErr::HOMI_E_INVALID),
            (homi::Error::Ioctl { op: "X", source: nix::Error::EINVAL }, HomiErr::HOMI_E_IOCTL),
            (homi::Error::Nvme(homi::Status::LBA_OUT_OF_RANGE), HomiErr::HOMI_E_NVME),
            (homi::Error::NoSpareQueues, HomiErr::HOMI_E_NO_SPARE_QUEUES),
            (homi::Error::ShadowDoorbells, HomiErr::HOMI_E_SHADOW_DOORBELLS),
            (homi::Error::Unreachable, HomiErr::HOMI_E_UNREACHABLE),
        ];
        for (e, want) in cases {
            let f = Failure::from(e);
            assert_eq!(f.code, want, "{}", f.msg);
            assert!(!f.msg.is_empty());
        }
    }
}
