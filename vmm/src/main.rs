//! `form-vmm`: boots one VM from the command line, serves the HTTP API, or both.

use clap::Parser;
use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use vmm::api::server::ApiServer;
use vmm::api::{self, ApiRequest};
use vmm::cli::{Cli, Launch};
use vmm::controller::backend::KvmBackend;
use vmm::controller::signals::StopSignals;
use vmm::controller::{Controller, Exit};
use vmm::sandbox::{self, ThreadKind};

fn main() -> ExitCode {
    let launch = match Cli::parse().resolve() {
        Ok(launch) => launch,
        Err(e) => return fail(&e.to_string()),
    };
    if let Err(e) = init_logging(&launch) {
        return fail(&e);
    }
    match run(launch) {
        Ok(exit) => report(&exit),
        Err(message) => fail(&message),
    }
}

fn fail(message: &str) -> ExitCode {
    eprintln!("form-vmm: error: {message}");
    ExitCode::FAILURE
}

fn report(exit: &Exit) -> ExitCode {
    match exit {
        Exit::GuestPowerOff | Exit::VmmShutdown => {}
        Exit::GuestCrashed(why) => eprintln!("form-vmm: the guest crashed: {why}"),
        Exit::Signal(signal) => eprintln!("form-vmm: stopped by signal {signal}"),
        Exit::Failed(why) => eprintln!("form-vmm: error: {why}"),
    }
    ExitCode::from(u8::try_from(exit.status()).unwrap_or(1))
}

fn init_logging(launch: &Launch) -> Result<(), String> {
    let mut builder = env_logger::Builder::new();
    builder
        .filter_level(launch.log_level)
        .format(|buf, record| {
            writeln!(
                buf,
                "form-vmm[{}] {} {}: {}",
                std::process::id(),
                record.level(),
                record.target(),
                record.args()
            )
        });
    if let Some(path) = &launch.log_file {
        let file = open_log_file(path)?;
        builder.target(env_logger::Target::Pipe(Box::new(file)));
    }
    builder
        .try_init()
        .map_err(|e| format!("cannot start logging: {e}"))
}

fn open_log_file(path: &Path) -> Result<File, String> {
    File::options()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| format!("--log-file {}: {e}", path.display()))
}

/// Everything after the command line is understood. The API server and the
/// controller live inside this function so that their cleanup (joining the API
/// thread, removing the socket) runs before the process exits.
fn run(launch: Launch) -> Result<Exit, String> {
    // Before any thread starts, so that every thread inherits the blocked mask.
    let signals =
        StopSignals::install().map_err(|e| format!("cannot set up signal handling: {e}"))?;
    // Still the only thread.
    sandbox::setup(
        &launch.sandbox,
        launch.api_socket.as_deref(),
        launch.vm.as_ref(),
    )
    .map_err(|e| e.to_string())?;

    let (mut server, inbox) = match &launch.api_socket {
        Some(path) => {
            let (client, inbox) =
                api::channel().map_err(|e| format!("cannot set up the API channel: {e}"))?;
            let server = ApiServer::start(path, client).map_err(|e| e.to_string())?;
            (Some(server), Some(inbox))
        }
        None => (None, None),
    };

    // The API thread installed its own filter; from here the main thread runs under
    // its filter too, before any VM (and any guest input) exists.
    if let Err(e) = sandbox::enter(ThreadKind::Main) {
        if let Some(server) = &mut server {
            server.stop();
        }
        return Err(e.to_string());
    }

    let mut controller = Controller::new(KvmBackend, inbox);
    if let Some(config) = launch.vm {
        let started = controller
            .handle(ApiRequest::VmCreate(Box::new(config)))
            .and_then(|_| controller.handle(ApiRequest::VmBoot));
        if let Err(e) = started {
            controller.shutdown_vm();
            return Err(e.to_string());
        }
    }

    let exit = controller.run(Some(&signals));
    // Finishes the request in flight (vmm.shutdown's 204) and removes the socket.
    if let Some(server) = &mut server {
        server.stop();
    }
    Ok(exit)
}
