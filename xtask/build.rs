//! Records the rustc cargo builds with (cargo hands it to build scripts as `RUSTC`),
//! so that `cargo xtask capi` probes the native libraries of a Rust static library
//! with the same compiler that built libhomi.a.

fn main() {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".to_owned());
    println!("cargo:rustc-env=HOMI_XTASK_RUSTC={rustc}");
    println!("cargo:rerun-if-env-changed=RUSTC");
    println!("cargo:rerun-if-changed=build.rs");
}
