//! `form-vmm-ctl`: see `form-vmm-ctl --help` and docs/cli.md.

use std::process::ExitCode;

use clap::Parser;
use form_vmm_ctl::cli::Cli;
use form_vmm_ctl::commands::{self, print_raw};
use form_vmm_ctl::error::CtlError;

fn main() -> ExitCode {
    // clap exits 2 on usage errors and 0 for --help and --version.
    let cli = Cli::try_parse().unwrap_or_else(|e| e.exit());
    let json = cli.json;
    match commands::run(cli) {
        Ok(exit) => ExitCode::from(exit.code()),
        Err(error) => {
            // Scripts reading --json output get the service's error body as well.
            if let (true, CtlError::Service { body, .. }) = (json, &error) {
                if serde_json::from_slice::<serde_json::Value>(body).is_ok() {
                    print_raw(body);
                }
            }
            eprintln!("error: {error}");
            ExitCode::from(error.exit().code())
        }
    }
}
