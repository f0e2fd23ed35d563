//! Processes by pid, from `/proc`. A pid alone can be reused after its process dies, so
//! a VMM is identified by its pid and its start time together.

use std::fs;
use std::time::Duration;

/// The start time of process `pid` in clock ticks since boot (field 22 of
/// `/proc/PID/stat`), or `None` if there is no such process or it is a zombie.
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces or ')'.
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_name.split_whitespace();
    let state = fields.next()?;
    if state == "Z" || state == "X" {
        return None;
    }
    // After the state (field 3) come fields 4..; the start time is field 22.
    fields.nth(22 - 4)?.parse().ok()
}

/// Whether the process `pid` that started at `start` still runs.
pub fn is_alive(pid: u32, start: u64) -> bool {
    pid != 0 && start_time(pid) == Some(start)
}

/// SIGTERM, then SIGKILL if the process is still there after `grace`; returns once it
/// is gone or SIGKILL was sent and a second grace period passed.
pub async fn terminate(pid: u32, start: u64, grace: Duration) {
    for signal in [libc::SIGTERM, libc::SIGKILL] {
        if !is_alive(pid, start) {
            return;
        }
        let Ok(raw) = libc::pid_t::try_from(pid) else {
            return;
        };
        // SAFETY: kill(2) has no memory effects; the start-time check above makes a
        // reused pid unlikely to be hit.
        unsafe {
            libc::kill(raw, signal);
        }
        let deadline = tokio::time::Instant::now() + grace;
        while tokio::time::Instant::now() < deadline {
            if !is_alive(pid, start) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_is_alive_and_a_wrong_start_time_is_not() {
        let pid = std::process::id();
        let start = start_time(pid).expect("own /proc/self/stat");
        assert!(is_alive(pid, start));
        assert!(!is_alive(pid, start + 1));
        assert!(!is_alive(0, start));
    }
}
