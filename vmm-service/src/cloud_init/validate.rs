//! Checks on `cloud_init` before anything is written: each message names the field.

use crate::api::types::CloudInitConfig;

use super::mime::{self, NotAPart};

/// An RFC 1123 label.
pub const MAX_HOSTNAME_LEN: usize = 63;
/// useradd's limit.
pub const MAX_USER_LEN: usize = 32;
pub const MAX_SSH_KEYS: usize = 64;
/// Large enough for an RSA-16384 key with a long comment.
pub const MAX_SSH_KEY_LEN: usize = 16 << 10;
pub const MAX_PACKAGES: usize = 512;
pub const MAX_RUNCMD: usize = 256;
pub const MAX_RUNCMD_LEN: usize = 16 << 10;
/// Raw files; the seed image grows with them.
pub const MAX_USER_DATA_LEN: usize = 4 << 20;
pub const MAX_NETWORK_CONFIG_LEN: usize = 64 << 10;

/// Key types OpenSSH writes in `.pub` files: `ssh-ed25519`, `ssh-rsa`,
/// `ecdsa-sha2-nistp256`, `sk-ssh-ed25519@openssh.com`, ...
const KEY_TYPE_PREFIXES: [&str; 3] = ["ssh-", "ecdsa-", "sk-"];

pub fn validate(config: &CloudInitConfig) -> Result<(), String> {
    if let Some(hostname) = &config.hostname {
        check_hostname(hostname).map_err(|why| format!("cloud_init.hostname: {why}"))?;
    }
    if let Some(user) = &config.user {
        check_user(user).map_err(|why| format!("cloud_init.user: {why}"))?;
    }
    if config.ssh_authorized_keys.len() > MAX_SSH_KEYS {
        return Err(format!(
            "cloud_init.ssh_authorized_keys: {} keys, at most {MAX_SSH_KEYS}",
            config.ssh_authorized_keys.len()
        ));
    }
    for (i, key) in config.ssh_authorized_keys.iter().enumerate() {
        check_ssh_key(key).map_err(|why| format!("cloud_init.ssh_authorized_keys[{i}]: {why}"))?;
    }
    if config.packages.len() > MAX_PACKAGES {
        return Err(format!(
            "cloud_init.packages: {} packages, at most {MAX_PACKAGES}",
            config.packages.len()
        ));
    }
    for (i, package) in config.packages.iter().enumerate() {
        check_package(package).map_err(|why| format!("cloud_init.packages[{i}]: {why}"))?;
    }
    if config.runcmd.len() > MAX_RUNCMD {
        return Err(format!(
            "cloud_init.runcmd: {} commands, at most {MAX_RUNCMD}; put longer scripts in user_data",
            config.runcmd.len()
        ));
    }
    for (i, command) in config.runcmd.iter().enumerate() {
        if command.is_empty() || command.len() > MAX_RUNCMD_LEN || command.contains('\0') {
            return Err(format!(
                "cloud_init.runcmd[{i}]: a command is 1 to {MAX_RUNCMD_LEN} bytes without NUL characters"
            ));
        }
    }
    check_raw("user_data", config.user_data.as_deref(), MAX_USER_DATA_LEN)?;
    if let Some(own) = &config.user_data {
        check_combinable(own, config).map_err(|why| format!("cloud_init.user_data: {why}"))?;
    }
    check_raw(
        "network_config",
        config.network_config.as_deref(),
        MAX_NETWORK_CONFIG_LEN,
    )?;
    Ok(())
}

/// Whether the request asks for anything only a generated cloud-config can give.
/// The host name does not count: meta-data carries it whatever user-data is.
pub(super) fn wants_generated(config: &CloudInitConfig) -> bool {
    config.user.is_some()
        || !config.ssh_authorized_keys.is_empty()
        || !config.packages.is_empty()
        || !config.runcmd.is_empty()
}

/// The host name a VM gets when `cloud_init.hostname` is absent: its name with
/// every character a label cannot hold turned into `-`.
pub fn default_hostname(vm: &str) -> String {
    let label: String = vm
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(MAX_HOSTNAME_LEN)
        .collect();
    let label = label.trim_matches('-');
    if label.is_empty() {
        "vm".to_string()
    } else {
        label.to_string()
    }
}

/// RFC 1123: 1 to 63 letters, digits and hyphens, not starting or ending with a hyphen.
fn check_hostname(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= MAX_HOSTNAME_LEN
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "'{}' is not a host name: use 1 to {MAX_HOSTNAME_LEN} letters, digits and hyphens, not beginning or ending with a hyphen",
            name.escape_default()
        ))
    }
}

/// What useradd accepts on every distribution: a lowercase letter or `_`, then
/// lowercase letters, digits, `_` and `-`.
fn check_user(name: &str) -> Result<(), String> {
    let first_ok = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_');
    let rest_ok = name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
    if first_ok && rest_ok && name.len() <= MAX_USER_LEN {
        Ok(())
    } else {
        Err(format!(
            "'{}' is not a user name: use 1 to {MAX_USER_LEN} of a-z 0-9 _ -, beginning with a letter or _",
            name.escape_default()
        ))
    }
}

/// One `TYPE BASE64 [COMMENT]` line as in a `.pub` file.
fn check_ssh_key(key: &str) -> Result<(), String> {
    let shown = || {
        let head: String = key.chars().take(40).collect();
        head.escape_default().to_string()
    };
    if key.len() > MAX_SSH_KEY_LEN {
        return Err(format!("a key is at most {MAX_SSH_KEY_LEN} bytes"));
    }
    if key.chars().any(|c| c.is_control()) {
        return Err(format!(
            "'{}...' spans lines or holds control characters; give one key per entry",
            shown()
        ));
    }
    let mut fields = key.split_whitespace();
    let kind = fields.next().unwrap_or("");
    let body = fields.next().unwrap_or("");
    let kind_ok = KEY_TYPE_PREFIXES.iter().any(|p| kind.starts_with(p));
    let body_ok = !body.is_empty()
        && body
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '/' | '='));
    if kind_ok && body_ok {
        Ok(())
    } else {
        Err(format!(
            "'{}' is not an SSH public key: give the one line of a .pub file, like 'ssh-ed25519 AAAAC3Nz... user@host' (never the private key)",
            shown()
        ))
    }
}

/// Package names, possibly with a version (`nginx=1.24*`): no spaces or controls.
fn check_package(name: &str) -> Result<(), String> {
    if name.is_empty()
        || name.len() > 256
        || name.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(format!(
            "'{}' is not a package name: 1 to 256 characters without spaces",
            name.escape_default()
        ));
    }
    Ok(())
}

/// User-data given with fields that need a generated cloud-config goes beside it
/// as a part of a MIME archive, typed by how it begins. Content with no part type,
/// or a MIME archive already (which would have to be taken apart and nested), is
/// refused rather than guessed at.
fn check_combinable(own: &str, config: &CloudInitConfig) -> Result<(), String> {
    if !wants_generated(config) {
        return Ok(());
    }
    let fields: Vec<&str> = [
        ("user", config.user.is_some()),
        (
            "ssh_authorized_keys",
            !config.ssh_authorized_keys.is_empty(),
        ),
        ("packages", !config.packages.is_empty()),
        ("runcmd", !config.runcmd.is_empty()),
    ]
    .into_iter()
    .filter_map(|(name, given)| given.then_some(name))
    .collect();
    let fields = fields.join(", ");
    match mime::content_type(own) {
        Ok(_) => Ok(()),
        Err(NotAPart::Mime) => Err(format!(
            "is a MIME archive, which cannot be combined with the cloud-config generated for {fields}; put those settings in the archive yourself and leave the fields out, or send cloud-config or a script instead"
        )),
        Err(NotAPart::Start(line)) => Err(format!(
            "begins with '{line}', which cloud-init cannot take as one part beside the cloud-config generated for {fields}; begin it with {}, or put those settings in the user-data yourself and leave the fields out",
            mime::ACCEPTED_STARTS
        )),
    }
}

fn check_raw(field: &str, text: Option<&str>, max: usize) -> Result<(), String> {
    match text {
        Some(text) if text.len() > max => Err(format!(
            "cloud_init.{field} is {} bytes, at most {max}",
            text.len()
        )),
        Some(text) if text.contains('\0') => Err(format!(
            "cloud_init.{field} holds a NUL character; cloud-init reads text"
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(edit: impl FnOnce(&mut CloudInitConfig)) -> Result<(), String> {
        let mut config = CloudInitConfig::default();
        edit(&mut config);
        validate(&config)
    }

    #[test]
    fn good_values_pass() {
        with(|c| {
            c.hostname = Some("gpu-node-01".into());
            c.user = Some("ops_1".into());
            c.ssh_authorized_keys = vec![
                "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI ops@lab".into(),
                "ecdsa-sha2-nistp256 AAAAE2VjZHNh=".into(),
                "sk-ssh-ed25519@openssh.com AAAAGnNr yubikey".into(),
            ];
            c.packages = vec!["nvidia-driver-550".into(), "nginx=1.24*".into()];
            c.runcmd = vec!["echo 'a: b' >> /etc/motd".into()];
            c.user_data = Some("#cloud-config\n".into());
        })
        .unwrap();
        assert!(validate(&CloudInitConfig::default()).is_ok());
    }

    #[test]
    fn each_bad_field_is_named() {
        for (edit, field) in [
            (
                Box::new(|c: &mut CloudInitConfig| c.hostname = Some("-bad".into()))
                    as Box<dyn FnOnce(&mut CloudInitConfig)>,
                "cloud_init.hostname",
            ),
            (
                Box::new(|c| c.hostname = Some("a.b".into())),
                "cloud_init.hostname",
            ),
            (
                Box::new(|c| c.hostname = Some("h".repeat(64))),
                "cloud_init.hostname",
            ),
            (
                Box::new(|c| c.user = Some("Root".into())),
                "cloud_init.user",
            ),
            (
                Box::new(|c| c.ssh_authorized_keys = vec!["AAAAC3Nz user@host".into()]),
                "cloud_init.ssh_authorized_keys[0]",
            ),
            (
                Box::new(|c| {
                    c.ssh_authorized_keys = vec![
                        "ssh-rsa AAAA".into(),
                        "ssh-rsa AAAA a\nssh-rsa BBBB b".into(),
                    ]
                }),
                "cloud_init.ssh_authorized_keys[1]",
            ),
            (
                Box::new(|c| {
                    c.ssh_authorized_keys = vec!["-----BEGIN OPENSSH PRIVATE KEY-----".into()]
                }),
                "cloud_init.ssh_authorized_keys[0]",
            ),
            (
                Box::new(|c| c.ssh_authorized_keys = vec!["ssh-ed25519".into()]),
                "cloud_init.ssh_authorized_keys[0]",
            ),
            (
                Box::new(|c| c.packages = vec!["two words".into()]),
                "cloud_init.packages[0]",
            ),
            (
                Box::new(|c| c.runcmd = vec![String::new()]),
                "cloud_init.runcmd[0]",
            ),
            (
                Box::new(|c| c.user_data = Some("x".repeat(MAX_USER_DATA_LEN + 1))),
                "cloud_init.user_data",
            ),
            (
                Box::new(|c| c.network_config = Some("a\0".into())),
                "cloud_init.network_config",
            ),
        ] {
            let err = with(edit).unwrap_err();
            assert!(err.starts_with(field), "{field}: {err}");
        }
    }

    #[test]
    fn user_data_beside_generated_fields_must_have_a_part_type() {
        let beside = |user_data: &str, edit: fn(&mut CloudInitConfig)| {
            with(|c| {
                c.user_data = Some(user_data.into());
                edit(c);
            })
        };
        let with_key: fn(&mut CloudInitConfig) =
            |c| c.ssh_authorized_keys = vec!["ssh-ed25519 AAAAC3Nz ops@lab".into()];

        for good in [
            "#cloud-config\n",
            "#!/bin/sh\n",
            "#include\nhttps://example.com/a\n",
            "#cloud-boothook\n",
            "## template: jinja\n#cloud-config\n",
        ] {
            beside(good, with_key).unwrap();
        }

        let err = beside("packages: [htop]\n", |c| {
            c.user = Some("ops".into());
            c.packages = vec!["htop".into()];
            c.runcmd = vec!["true".into()];
        })
        .unwrap_err();
        assert_eq!(
            err,
            "cloud_init.user_data: begins with 'packages: [htop]', which cloud-init cannot take as one part beside the cloud-config generated for user, packages, runcmd; begin it with #cloud-config, #! (a script), #include, #include-once, #cloud-boothook or ## template: jinja, or put those settings in the user-data yourself and leave the fields out"
        );

        let err = beside(
            "MIME-Version: 1.0\nContent-Type: multipart/mixed\n",
            with_key,
        )
        .unwrap_err();
        assert!(
            err.starts_with("cloud_init.user_data: is a MIME archive, which cannot be combined with the cloud-config generated for ssh_authorized_keys;"),
            "{err}"
        );
        assert!(err.contains("leave the fields out"), "{err}");

        // Alone, or with only a host name (which goes to meta-data), user-data is
        // passed on as it is, whatever it holds.
        for alone in ["packages: [htop]\n", "MIME-Version: 1.0\n", ""] {
            beside(alone, |_| {}).unwrap();
            beside(alone, |c| c.hostname = Some("gpu-1".into())).unwrap();
        }
    }

    #[test]
    fn default_hostnames_are_labels() {
        assert_eq!(default_hostname("train-1"), "train-1");
        assert_eq!(default_hostname("web_1.prod"), "web-1-prod");
        assert_eq!(default_hostname("_x_"), "x");
        assert_eq!(default_hostname("___"), "vm");
        assert_eq!(default_hostname(&"a".repeat(63)).len(), 63);
        assert!(check_hostname(&default_hostname("9.-a-")).is_ok());
    }
}
