//! Gives the shared library the SONAME it is installed under, `libhomi.so.0`: the
//! major version of the C ABI, bumped when a signature or struct in homi.h changes
//! incompatibly. The same number is `HOMI_CAPI_MAJOR` (src/lib.rs, and homi.h) and
//! `ABI_MAJOR` of xtask/src/capi.rs; a unit test checks that they agree.

const ABI_MAJOR: u32 = 0;

fn main() {
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libhomi.so.{ABI_MAJOR}");
    println!("cargo:rerun-if-changed=build.rs");
}
