//! Files `create` reads on the operator's machine and sends as text: SSH public keys
//! and user-data. The service runs elsewhere and never opens these paths.

use std::fs;
use std::path::Path;

use crate::error::CtlError;

/// The keys of a `.pub` or `authorized_keys` file: its non-empty lines that are not
/// comments. The service checks each key's form.
pub fn read_ssh_keys(path: &Path) -> Result<Vec<String>, CtlError> {
    let text = read_text("--ssh-key", path)?;
    if text.contains("PRIVATE KEY") {
        return Err(CtlError::Usage(format!(
            "--ssh-key {}: this is a private key; give the public one (the .pub file next to it)",
            path.display()
        )));
    }
    let keys: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(str::to_string)
        .collect();
    if keys.is_empty() {
        return Err(CtlError::Usage(format!(
            "--ssh-key {}: the file holds no key",
            path.display()
        )));
    }
    Ok(keys)
}

pub fn read_user_data(path: &Path) -> Result<String, CtlError> {
    read_text("--user-data", path)
}

fn read_text(flag: &str, path: &Path) -> Result<String, CtlError> {
    let bytes = fs::read(path).map_err(|source| CtlError::ReadFile {
        flag: flag.to_string(),
        path: path.to_path_buf(),
        source,
    })?;
    String::from_utf8(bytes).map_err(|_| {
        CtlError::Usage(format!(
            "{flag} {}: the file is not UTF-8 text",
            path.display()
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exit::Exit;

    #[test]
    fn key_files_give_their_key_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys");
        fs::write(
            &path,
            "# lab keys\nssh-ed25519 AAAAC3Nz a@b\n\n  ssh-rsa AAAAB3 c@d  \n",
        )
        .unwrap();
        assert_eq!(
            read_ssh_keys(&path).unwrap(),
            vec!["ssh-ed25519 AAAAC3Nz a@b", "ssh-rsa AAAAB3 c@d"]
        );
    }

    #[test]
    fn unreadable_private_and_empty_files_are_usage_errors() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pub");
        let err = read_ssh_keys(&missing).unwrap_err();
        assert_eq!(err.exit(), Exit::Usage);
        assert!(err.to_string().contains("--ssh-key"), "{err}");
        assert!(err.to_string().contains("missing.pub"), "{err}");

        let private = dir.path().join("id_ed25519");
        fs::write(&private, "-----BEGIN OPENSSH PRIVATE KEY-----\n").unwrap();
        let err = read_ssh_keys(&private).unwrap_err();
        assert!(err.to_string().contains("private key"), "{err}");

        let empty = dir.path().join("empty.pub");
        fs::write(&empty, "# nothing\n").unwrap();
        assert!(read_ssh_keys(&empty)
            .unwrap_err()
            .to_string()
            .contains("no key"));

        let binary = dir.path().join("ud");
        fs::write(&binary, [0xff, 0xfe]).unwrap();
        let err = read_user_data(&binary).unwrap_err();
        assert_eq!(err.exit(), Exit::Usage);
        assert!(err.to_string().contains("not UTF-8"), "{err}");
    }
}
