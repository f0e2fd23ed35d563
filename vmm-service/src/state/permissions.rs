//! Modes of what the service keeps: the database holds every VM's configuration with
//! its cloud-init user-data (often secrets), the seed disks hold the same, and the
//! serial logs hold whatever guests print. Only the service's user reads them.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;

/// Directories: the state directory, `vms/`, each VM's.
pub const PRIVATE_DIR_MODE: u32 = 0o700;
/// Files: the database, logs, seed disks.
pub const PRIVATE_FILE_MODE: u32 = 0o600;

/// Creates `state_dir` (0700) if needed and takes group and other permissions off it,
/// its `vms/` tree and every file in them (a state directory from an older service,
/// or one an operator loosened). Returns one line per change, for the log.
pub fn secure_state_dir(state_dir: &Path) -> io::Result<Vec<String>> {
    let mut changed = Vec::new();
    if !state_dir.exists() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(PRIVATE_DIR_MODE)
            .create(state_dir)?;
    }
    tighten(state_dir, &mut changed)?;
    for entry in fs::read_dir(state_dir)? {
        let path = entry?.path();
        let meta = fs::symlink_metadata(&path)?;
        if meta.is_file() {
            tighten(&path, &mut changed)?;
        } else if meta.is_dir() && path.file_name().is_some_and(|n| n == "vms") {
            tighten(&path, &mut changed)?;
            for vm in fs::read_dir(&path)? {
                let vm = vm?.path();
                if !fs::symlink_metadata(&vm)?.is_dir() {
                    continue;
                }
                tighten(&vm, &mut changed)?;
                for file in fs::read_dir(&vm)? {
                    let file = file?.path();
                    if fs::symlink_metadata(&file)?.is_file() {
                        tighten(&file, &mut changed)?;
                    }
                }
            }
        }
    }
    Ok(changed)
}

/// Clears group and other bits of `path` (never follows a symlink: callers pass
/// directories and files only).
fn tighten(path: &Path, changed: &mut Vec<String>) -> io::Result<()> {
    let mode = fs::symlink_metadata(path)?.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        let tightened = mode & !0o077;
        fs::set_permissions(path, fs::Permissions::from_mode(tightened))?;
        changed.push(format!(
            "{} was mode {mode:04o}, now {tightened:04o}",
            path.display()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loose_state_is_tightened_and_reported() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        secure_state_dir(&state).unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&state), 0o700);
        fs::create_dir_all(state.join("vms/a")).unwrap();
        for (file, m) in [
            ("service.db", 0o644),
            ("vms/a/serial.log", 0o644),
            ("vms/a/seed.img", 0o640),
        ] {
            fs::write(state.join(file), b"x").unwrap();
            fs::set_permissions(state.join(file), fs::Permissions::from_mode(m)).unwrap();
        }
        fs::set_permissions(&state, fs::Permissions::from_mode(0o755)).unwrap();
        fs::set_permissions(state.join("vms"), fs::Permissions::from_mode(0o755)).unwrap();
        fs::set_permissions(state.join("vms/a"), fs::Permissions::from_mode(0o755)).unwrap();
        let changed = secure_state_dir(&state).unwrap();
        assert_eq!(changed.len(), 6, "{changed:?}");
        for path in ["", "vms", "vms/a"] {
            assert_eq!(mode(&state.join(path)), 0o700, "{path}");
        }
        for path in ["service.db", "vms/a/serial.log", "vms/a/seed.img"] {
            assert_eq!(mode(&state.join(path)), 0o600, "{path}");
        }
        assert!(secure_state_dir(&state).unwrap().is_empty());
    }
}
