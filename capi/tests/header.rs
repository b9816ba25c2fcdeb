//! include/homi.h is what cbindgen makes of this crate today.
//!
//! The header is generated, never edited: this test regenerates it and fails with the
//! difference when the checked-in copy is stale. `HOMI_BLESS=1` rewrites it.

use std::path::Path;

#[test]
fn header_is_current() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(dir.join("cbindgen.toml")).expect("read cbindgen.toml");
    let mut fresh = Vec::new();
    cbindgen::Builder::new()
        .with_config(config)
        .with_src(dir.join("src/lib.rs"))
        .generate()
        .expect("cbindgen generates the header")
        .write(&mut fresh);
    let fresh = String::from_utf8(fresh).expect("UTF-8 header");
    let path = dir.join("include/homi.h");
    if std::env::var_os("HOMI_BLESS").is_some_and(|v| v == "1") {
        std::fs::write(&path, &fresh).expect("write include/homi.h");
        return;
    }
    let old = std::fs::read_to_string(&path).unwrap_or_default();
    if old != fresh {
        panic!(
            "capi/include/homi.h is stale: it is not what cbindgen makes of capi/src.\n\
             Regenerate it with: HOMI_BLESS=1 cargo test -p homi-capi --test header\n\
             First difference (- checked in, + generated):\n{}",
            first_difference(&old, &fresh)
        );
    }
}

/// The first differing lines of `old` and `new`, with a little context.
fn first_difference(old: &str, new: &str) -> String {
    let (a, b): (Vec<&str>, Vec<&str>) = (old.lines().collect(), new.lines().collect());
    let at = a.iter().zip(&b).position(|(x, y)| x != y).unwrap_or(a.len().min(b.len()));
    let mut out = format!("at line {}:\n", at + 1);
    for l in &a[at.saturating_sub(2)..at] {
        out += &format!("  {l}\n");
    }
    for l in a.iter().skip(at).take(8) {
        out += &format!("- {l}\n");
    }
    for l in b.iter().skip(at).take(8) {
        out += &format!("+ {l}\n");
    }
    if a.len() != b.len() {
        out += &format!("({} lines checked in, {} generated)\n", a.len(), b.len());
    }
    out
}
