//! homi for C: the CPU queue engine of the [`homi`] crate behind a C ABI.
//!
//! Builds `libhomi.so` and `libhomi.a`; `include/homi.h` is generated from this crate
//! by cbindgen (the `header` test checks that the checked-in copy is current), and
//! `cargo xtask capi` installs all three with a pkg-config file. See the README for
//! the thread-safety and lifetime rules.
//!
//! Every exported function catches panics at the boundary (`error::guard`), checks
//! each pointer for NULL and each size against what the buffer, queue and namespace
//! allow, and maps the engine's errors to one code each (`error::code_of`).

mod buf;
mod ctrl;
mod error;
mod qpair;
mod resolve;

pub use buf::*;
pub use ctrl::*;
pub use error::*;
pub use qpair::*;
pub use resolve::*;

use std::ffi::c_char;

// The thread rules of the README, held by the types: a controller handle and a buffer
// may be shared by threads, a queue pair may move between them.
const _: () = {
    const fn shared<T: Send + Sync>() {}
    const fn movable<T: Send>() {}
    shared::<HomiCtrl>();
    shared::<HomiBuf>();
    movable::<HomiQpair>();
};

/// Version of this C interface: the major of the library's SONAME (libhomi.so.0), bumped
/// when a signature or struct in homi.h changes incompatibly. capi/build.rs and
/// `cargo xtask capi` spell the same number (a unit test checks).
pub const HOMI_CAPI_MAJOR: u32 = 0;

/// The library's version ("0.1.0"), static text.
#[no_mangle]
pub extern "C" fn homi_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

/// Writes `value` through the out pointer `out` after checking it for NULL.
///
/// # Safety
///
/// `out` must be NULL or valid for a write of `T`.
pub(crate) unsafe fn put<T>(out: *mut T, what: &str, value: T) -> Result<(), Failure> {
    if out.is_null() {
        return Err(Failure::null(what));
    }
    // SAFETY: not NULL, and valid for a write (caller).
    unsafe { out.write(value) };
    Ok(())
}

/// The object behind a handle, after a NULL check.
///
/// # Safety
///
/// `p` must be NULL or point to a live `T` that nothing mutates for `'a`.
pub(crate) unsafe fn handle<'a, T>(p: *const T, what: &str) -> Result<&'a T, Failure> {
    // SAFETY: NULL or a live `T` (caller).
    unsafe { p.as_ref() }.ok_or_else(|| Failure::null(what))
}

/// The object behind a handle for exclusive use, after a NULL check.
///
/// # Safety
///
/// `p` must be NULL or point to a live `T` that nothing else uses for `'a`.
pub(crate) unsafe fn handle_mut<'a, T>(p: *mut T, what: &str) -> Result<&'a mut T, Failure> {
    // SAFETY: NULL or a live, unaliased `T` (caller).
    unsafe { p.as_mut() }.ok_or_else(|| Failure::null(what))
}

#[cfg(test)]
mod tests {
    /// The number after `const ABI_MAJOR: u32 = ` in `text`.
    fn abi_major(text: &str, file: &str) -> u32 {
        let at = text.find("const ABI_MAJOR: u32 = ").unwrap_or_else(|| panic!("{file} defines no ABI_MAJOR"));
        let rest = &text[at + "const ABI_MAJOR: u32 = ".len()..];
        rest[..rest.find(';').expect("a ;")].trim().parse().expect("a number")
    }

    #[test]
    fn every_copy_of_the_abi_major_agrees() {
        assert_eq!(abi_major(include_str!("../build.rs"), "capi/build.rs"), super::HOMI_CAPI_MAJOR);
        assert_eq!(abi_major(include_str!("../../xtask/src/capi.rs"), "xtask/src/capi.rs"), super::HOMI_CAPI_MAJOR);
        let header = include_str!("../include/homi.h");
        assert!(
            header.contains(&format!("#define HOMI_CAPI_MAJOR {}\n", super::HOMI_CAPI_MAJOR)),
            "homi.h defines another HOMI_CAPI_MAJOR"
        );
    }
}
