//! Gives the shared library the SONAME it is installed under, `libhomi.so.0`: the
//! major version of the C ABI, bumped when a signature or struct in homi.h changes
//! incompatibly.

fn main() {
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libhomi.so.0");
    println!("cargo:rerun-if-changed=build.rs");
}
