//! `streamshield`: the command line over the client — status, jobs,
//! get/put/scan, membership, snapshots — and local clusters for trying it.

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    streamshield_client::init_cli_logging();
    let args = cli::Args::parse();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("streamshield: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(cli::run(args)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("streamshield: {e:#}");
            ExitCode::FAILURE
        }
    }
}
