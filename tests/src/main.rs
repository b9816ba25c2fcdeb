//! `homi-vmtest`: homi's in-VM test suites.
//!
//! Runs inside the test VM (`cargo xtask vm`), as root, against the real nvme driver
//! and QEMU's emulated controller. Every check prints `ok - NAME` or
//! `not ok - NAME: WHY`, appends the same line to `$HOMI_OUT/results.txt` for the host
//! to count, and the run ends with `N passed, N failed`.

mod bench;
mod capi;
mod common;
mod dmabuf;
mod files;
mod files_refuse;
mod files_revoke;
mod files_write;
mod fio;
mod fuzz;
mod hardening;
mod harness;
mod kmod;
mod queues;
mod shapes;
mod soak;
mod stress;
mod suites;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

#[derive(Parser)]
#[command(about = "homi in-VM test suites (run inside the test VM, as root)")]
struct Args {
    /// Path of the homi.ko to load and unload.
    #[arg(long)]
    kmod: PathBuf,
    /// A homi.ko built without nvme-pci's user queue API (`HOMI_STOCK=1`), for the
    /// `dbcs` suite's stock-kernel refusal.
    #[arg(long)]
    stock_kmod: Option<PathBuf>,
    /// The VM's controllers have shadow doorbells (QEMU `dbcs=on`).
    #[arg(long)]
    dbcs: bool,
    /// Suites to run, in order.
    #[arg(default_values_t = ["basic".to_string()])]
    suites: Vec<String>,
}

fn main() -> ExitCode {
    // `homi-vmtest helper ROLE`: a subprocess some checks need (a crashing holder, an
    // unprivileged caller).
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some("helper") {
        let role = argv.get(2).map_or("", String::as_str);
        if role == "files-holder" {
            return match files::helper(argv.get(3).map_or("", String::as_str)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("helper: {e:#}");
                    ExitCode::FAILURE
                }
            };
        }
        if role == "dmabuf-holder" {
            return match dmabuf::helper() {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("helper: {e:#}");
                    ExitCode::FAILURE
                }
            };
        }
        return match hardening::helper(role).and_then(|done| match done {
            Some(()) => Ok(()),
            None => queues::helper(role),
        }) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("helper: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    let args = Args::parse();
    let mut h = harness::Harness::new();
    common::set_shape(args.dbcs, args.stock_kmod);
    for suite in &args.suites {
        if let Err(e) = suites::run(suite, &args.kmod, &mut h) {
            h.record(&format!("{suite}: suite"), Err(e));
        }
    }
    suites::kmemleak(&mut h);
    h.finish()
}
