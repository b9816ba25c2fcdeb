//! `homi`: the command-line tool for homi queues.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use homi::HomiDevice;

#[derive(Parser)]
#[command(
    name = "homi",
    version,
    about = "NVMe queue pairs beside the kernel's nvme driver"
)]
struct Cli {
    /// The homi device node.
    #[arg(long, global = true, default_value_os_t = HomiDevice::default_path())]
    device: PathBuf,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Print the loaded module's ABI version and this tool's.
    Version,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Version => {
            let dev = HomiDevice::open_path(&cli.device)
                .with_context(|| format!("is homi.ko loaded? ({})", cli.device.display()))?;
            let v = dev.version()?;
            println!(
                "module ABI {}.{} (features {:#x}); library ABI {}.{}; homi {}",
                v.abi_major,
                v.abi_minor,
                v.features,
                homi::uapi::ABI_MAJOR,
                homi::uapi::ABI_MINOR,
                env!("CARGO_PKG_VERSION")
            );
        }
    }
    Ok(())
}
