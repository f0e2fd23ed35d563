//! `console`: a VM's serial log, printed as the guest wrote it, once or followed.
//!
//! Following polls `GET /v1/vms/{name}/console?from=OFFSET` with the offset the last
//! answer ended at, so each byte is printed once however often the log is read.

use std::io::{self, Write};
use std::thread;
use std::time::Duration;

use form_service_api::types::{
    VmInfo, VmState, CONSOLE_OFFSET_HEADER, CONSOLE_RESET_HEADER, CONSOLE_SIZE_HEADER,
};

use crate::api::{decode, segment, Api};
use crate::error::CtlError;
use crate::exit::Exit;

/// Between reads of a followed log: quick enough to feel live at a login prompt, slow
/// enough that a forgotten `console -f` costs the service nothing.
pub const POLL: Duration = Duration::from_millis(500);

/// The VM's state is asked every this many polls (2 s): a stopped VM writes no more,
/// and the log alone cannot tell a quiet guest from a gone one.
const POLLS_PER_STATE_CHECK: u32 = 4;

/// Prints the log of VM `name` (its last `tail` bytes, else the service's default
/// window); with `follow`, keeps printing until the VM is stopped or stdout is gone.
pub fn run(api: &Api, name: &str, tail: Option<u64>, follow: bool) -> Result<Exit, CtlError> {
    let vm = format!("/vms/{}", segment(name));
    let mut query = tail
        .map(|bytes| format!("?tail={bytes}"))
        .unwrap_or_default();
    // Checked before the first read, so a VM that is stopped already prints its log
    // and ends at once instead of two seconds later.
    let mut polls_since_check = POLLS_PER_STATE_CHECK;
    let mut stopped = false;
    loop {
        if follow && polls_since_check >= POLLS_PER_STATE_CHECK {
            // Asked before reading: whatever the guest wrote before it stopped is in
            // the log by then, so the reads that follow print all of it.
            stopped = is_stopped(api, &vm)?;
            polls_since_check = 0;
        }
        let chunk = read(api, &vm, &query)?;
        if chunk.reset {
            eprintln!(
                "form-vmm-ctl: the console log of {name} started over (the VM was stopped and booted again); printing it from its beginning"
            );
        }
        if !print(&chunk.bytes) || !follow {
            return Ok(Exit::Ok);
        }
        query = format!("?from={}", chunk.offset);
        if chunk.offset < chunk.size {
            // The answer was capped: the rest is there already.
            continue;
        }
        if stopped {
            return Ok(Exit::Ok);
        }
        thread::sleep(POLL);
        polls_since_check += 1;
    }
}

struct Chunk {
    bytes: Vec<u8>,
    offset: u64,
    size: u64,
    reset: bool,
}

fn read(api: &Api, vm: &str, query: &str) -> Result<Chunk, CtlError> {
    let path = format!("{vm}/console{query}");
    let reply = api.get_reply(&path)?;
    let number = |header: &str| {
        reply
            .header(header)
            .and_then(|value| value.parse::<u64>().ok())
            .ok_or_else(|| CtlError::BadResponse {
                what: format!("GET {path}"),
                reason: format!("no numeric {header} header"),
            })
    };
    Ok(Chunk {
        offset: number(CONSOLE_OFFSET_HEADER)?,
        size: number(CONSOLE_SIZE_HEADER)?,
        reset: reply.header(CONSOLE_RESET_HEADER) == Some("1"),
        bytes: reply.body,
    })
}

fn is_stopped(api: &Api, vm: &str) -> Result<bool, CtlError> {
    let info: VmInfo = decode("the VM", &api.get(vm)?)?;
    Ok(info.state == VmState::Stopped)
}

/// Writes the guest's bytes unchanged; false once stdout is gone (`| head`), which
/// ends a follow as the reader asked.
fn print(bytes: &[u8]) -> bool {
    let mut stdout = io::stdout().lock();
    stdout
        .write_all(bytes)
        .and_then(|()| stdout.flush())
        .is_ok()
}
