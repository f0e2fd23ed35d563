//! The three files of a NoCloud seed: `meta-data`, `user-data`, `network-config`.

use crate::api::types::CloudInitConfig;

use super::mime::{self, Part};
use super::validate::{default_hostname, wants_generated};
use super::yaml::YamlDoc;

/// What the seed disk holds, file by file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeedFiles {
    pub meta_data: String,
    pub user_data: String,
    pub network_config: String,
}

impl SeedFiles {
    /// The files for VM `vm`; `config` must have passed [`super::validate`].
    pub fn for_vm(vm: &str, config: &CloudInitConfig) -> Self {
        let hostname = config
            .hostname
            .clone()
            .unwrap_or_else(|| default_hostname(vm));
        Self {
            meta_data: meta_data(vm, &hostname),
            user_data: user_data_file(&hostname, config),
            network_config: config
                .network_config
                .clone()
                .unwrap_or_else(dhcp_everywhere),
        }
    }

    /// The files by the names cloud-init looks for.
    pub fn named(&self) -> [(&'static str, &str); 3] {
        [
            ("meta-data", &self.meta_data),
            ("user-data", &self.user_data),
            ("network-config", &self.network_config),
        ]
    }
}

/// The instance id is the VM's name: cloud-init runs its once-per-instance steps
/// (users, keys, packages) on the first boot of each VM and not again on reboots.
fn meta_data(vm: &str, hostname: &str) -> String {
    let mut doc = YamlDoc::default();
    doc.string(0, "instance-id", vm)
        .string(0, "local-hostname", hostname);
    doc.finish()
}

/// The generated cloud-config alone; the operator's user-data alone, as given; or,
/// when both are wanted, an archive with the generated part first and the
/// operator's after it, so that cloud-config the operator wrote is merged onto the
/// generated one.
fn user_data_file(hostname: &str, config: &CloudInitConfig) -> String {
    let Some(own) = &config.user_data else {
        return user_data(Some(hostname), config);
    };
    if !wants_generated(config) {
        return own.clone();
    }
    // validate() refuses user-data that has no part type; text/plain, should one
    // get here, is what cloud-init types by content itself.
    let own_type = mime::content_type(own).unwrap_or("text/plain");
    let generated = user_data(None, config);
    mime::multipart(&[
        Part {
            content_type: mime::CLOUD_CONFIG,
            filename: "form-vmm.cfg",
            merge_type: None,
            body: &generated,
        },
        Part {
            content_type: own_type,
            filename: "user-data",
            merge_type: (own_type == mime::CLOUD_CONFIG).then_some(mime::APPEND_LISTS),
            body: own,
        },
    ])
}

/// The generated cloud-config. Without `hostname` it leaves the host name to
/// meta-data, as the operator's user-data alone would: cloud-init's merge keeps the
/// first part's value of a key both parts set, so a generated `hostname` would
/// override one the operator's cloud-config sets.
fn user_data(hostname: Option<&str>, config: &CloudInitConfig) -> String {
    let mut doc = YamlDoc::with_header("#cloud-config");
    if let Some(hostname) = hostname {
        doc.string(0, "hostname", hostname)
            .plain(0, "preserve_hostname", "false");
    }
    match &config.user {
        Some(user) => {
            // `default` keeps the image's own user as well.
            doc.open(0, "users")
                .plain_item(1, "default")
                .item_string(1, "name", user)
                .string(2, "sudo", "ALL=(ALL) NOPASSWD:ALL")
                .string(2, "shell", "/bin/bash")
                .plain(2, "lock_passwd", "true")
                .list(2, "ssh_authorized_keys", &config.ssh_authorized_keys);
        }
        // Top-level keys go to the image's default user.
        None => {
            doc.list(0, "ssh_authorized_keys", &config.ssh_authorized_keys);
        }
    }
    doc.list(0, "packages", &config.packages)
        .list(0, "runcmd", &config.runcmd);
    doc.finish()
}

/// Network config v2: DHCPv4 on every ethernet interface, whatever the guest's
/// naming scheme calls it (eth0, ens3, enp0s4).
fn dhcp_everywhere() -> String {
    let mut doc = YamlDoc::default();
    doc.plain(0, "version", "2")
        .open(0, "ethernets")
        .open(1, "all-ethernets")
        .open(2, "match")
        .string(3, "name", "e*")
        .plain(2, "dhcp4", "true");
    doc.finish()
}

#[cfg(test)]
mod tests {
    use super::super::mime::tests::parse;
    use super::*;

    fn config() -> CloudInitConfig {
        CloudInitConfig {
            hostname: Some("gpu-1".into()),
            user: Some("ops".into()),
            ssh_authorized_keys: vec!["ssh-ed25519 AAAAC3Nz ops@lab".into()],
            packages: vec!["htop".into()],
            runcmd: vec!["echo \"ready: yes\" > /run/ready # done".into()],
            ..CloudInitConfig::default()
        }
    }

    #[test]
    fn generated_files_hold_every_field_quoted() {
        let files = SeedFiles::for_vm("train-1", &config());
        assert_eq!(
            files.meta_data,
            "instance-id: \"train-1\"\nlocal-hostname: \"gpu-1\"\n"
        );
        assert_eq!(
            files.user_data,
            "#cloud-config
hostname: \"gpu-1\"
preserve_hostname: false
users:
  - default
  - name: \"ops\"
    sudo: \"ALL=(ALL) NOPASSWD:ALL\"
    shell: \"/bin/bash\"
    lock_passwd: true
    ssh_authorized_keys:
      - \"ssh-ed25519 AAAAC3Nz ops@lab\"
packages:
  - \"htop\"
runcmd:
  - \"echo \\\"ready: yes\\\" > /run/ready # done\"
"
        );
        assert_eq!(
            files.network_config,
            "version: 2\nethernets:\n  all-ethernets:\n    match:\n      name: \"e*\"\n    dhcp4: true\n"
        );
    }

    #[test]
    fn without_a_user_the_keys_go_to_the_default_user_and_the_name_is_the_host() {
        let config = CloudInitConfig {
            ssh_authorized_keys: vec!["ssh-rsa AAAAB3 a".into()],
            ..CloudInitConfig::default()
        };
        let files = SeedFiles::for_vm("web_1.prod", &config);
        assert!(files.meta_data.contains("local-hostname: \"web-1-prod\"\n"));
        assert_eq!(
            files.user_data,
            "#cloud-config\nhostname: \"web-1-prod\"\npreserve_hostname: false\nssh_authorized_keys:\n  - \"ssh-rsa AAAAB3 a\"\n"
        );
    }

    #[test]
    fn raw_user_data_alone_is_written_as_given() {
        for config in [
            CloudInitConfig {
                hostname: Some("gpu-1".into()),
                user_data: Some("not even cloud-init's\n".into()),
                network_config: Some("version: 1\n".into()),
                ..CloudInitConfig::default()
            },
            CloudInitConfig {
                user_data: Some("Content-Type: multipart/mixed; boundary=x\n".into()),
                ..CloudInitConfig::default()
            },
        ] {
            let files = SeedFiles::for_vm("vm", &config);
            assert_eq!(Some(&files.user_data), config.user_data.as_ref());
            assert_eq!(
                files.network_config,
                config.network_config.unwrap_or_else(dhcp_everywhere)
            );
            let hostname = config.hostname.as_deref().unwrap_or("vm");
            assert!(files
                .meta_data
                .contains(&format!("local-hostname: \"{hostname}\"")));
        }
    }

    /// The generated cloud-config of [`config`] as the archive's first part: no
    /// host name, which meta-data gives.
    const GENERATED_PART: &str = "#cloud-config
users:
  - default
  - name: \"ops\"
    sudo: \"ALL=(ALL) NOPASSWD:ALL\"
    shell: \"/bin/bash\"
    lock_passwd: true
    ssh_authorized_keys:
      - \"ssh-ed25519 AAAAC3Nz ops@lab\"
packages:
  - \"htop\"
runcmd:
  - \"echo \\\"ready: yes\\\" > /run/ready # done\"
";

    #[test]
    fn user_data_with_generated_fields_becomes_an_archive_of_both() {
        let own = "#cloud-config\npackages: [jq]\nhostname: mine\n";
        let config = CloudInitConfig {
            user_data: Some(own.into()),
            ..config()
        };
        let files = SeedFiles::for_vm("vm", &config);
        let (boundary, parts) = parse(&files.user_data);
        assert!(!own.contains(&boundary) && !GENERATED_PART.contains(&boundary));
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].body, GENERATED_PART);
        assert_eq!(
            parts[0].header("content-type"),
            Some("text/cloud-config; charset=\"us-ascii\"")
        );
        assert_eq!(parts[0].header("merge-type"), None);
        assert_eq!(parts[1].body, own);
        assert_eq!(
            parts[1].header("content-type"),
            Some("text/cloud-config; charset=\"us-ascii\"")
        );
        assert_eq!(
            parts[1].header("merge-type"),
            Some("list(append)+dict(recurse_array)+str()")
        );
        assert_eq!(
            parts[1].header("content-disposition"),
            Some("attachment; filename=\"user-data\"")
        );
        assert!(files.meta_data.contains("local-hostname: \"gpu-1\""));
    }

    #[test]
    fn a_script_goes_beside_keys_given_without_a_user() {
        let config = CloudInitConfig {
            ssh_authorized_keys: vec!["ssh-rsa AAAAB3 a".into()],
            user_data: Some("#!/bin/sh\necho raw\n".into()),
            ..CloudInitConfig::default()
        };
        let (_, parts) = parse(&SeedFiles::for_vm("vm", &config).user_data);
        assert_eq!(
            parts[0].body,
            "#cloud-config\nssh_authorized_keys:\n  - \"ssh-rsa AAAAB3 a\"\n"
        );
        assert_eq!(parts[1].body, "#!/bin/sh\necho raw\n");
        assert_eq!(
            parts[1].header("content-type"),
            Some("text/x-shellscript; charset=\"us-ascii\"")
        );
        // Merging is for cloud-config; a script is run as it is.
        assert_eq!(parts[1].header("merge-type"), None);
    }

    /// Python's email package, which cloud-init reads user-data with, splits the
    /// archive into the parts meant, with their types, headers and exact text.
    #[test]
    fn python_email_reads_the_archive_as_cloud_init_would() {
        let check = r#"
import email, json, sys
msg = email.message_from_string(open(sys.argv[1], encoding="utf-8").read())
assert msg.is_multipart() and msg.get_content_type() == "multipart/mixed"
parts = [
    {
        "type": p.get_content_type(),
        "filename": p.get_filename(),
        "merge": p.get("Merge-Type"),
        "body": p.get_payload(decode=True).decode("utf-8"),
    }
    for p in msg.walk()
    if not p.is_multipart()
]
print(json.dumps(parts))
"#;
        let have_python = std::process::Command::new("python3")
            .args(["-c", "import email, json"])
            .output()
            .is_ok_and(|o| o.status.success());
        if !have_python {
            eprintln!("skipping: python3 with its email package not found");
            return;
        }
        let own = "#cloud-config\nruncmd:\n  - echo \"caf\u{e9} \u{2713}\"\n";
        let mut config = config();
        config.user_data = Some(own.into());
        config.runcmd.push("echo \u{1f980}".into());
        let files = SeedFiles::for_vm("vm", &config);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("user-data");
        std::fs::write(&path, &files.user_data).unwrap();
        let out = std::process::Command::new("python3")
            .arg("-c")
            .arg(check)
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let parts: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let generated = format!("{GENERATED_PART}  - \"echo \u{1f980}\"\n");
        assert_eq!(
            parts,
            serde_json::json!([
                {"type": "text/cloud-config", "filename": "form-vmm.cfg", "merge": null,
                 "body": generated},
                {"type": "text/cloud-config", "filename": "user-data",
                 "merge": "list(append)+dict(recurse_array)+str()", "body": own},
            ])
        );
    }

    /// PyYAML, where installed, reads the files back to the values given.
    #[test]
    fn python_yaml_reads_what_was_meant() {
        let check = r#"
import sys, yaml
ud = yaml.safe_load(open(sys.argv[1]))
md = yaml.safe_load(open(sys.argv[2]))
assert ud["hostname"] == "no", ud
assert ud["users"][1]["name"] == "ops"
assert ud["users"][1]["ssh_authorized_keys"] == ["ssh-ed25519 AAAAC3Nz ops@lab"]
assert ud["runcmd"] == ["echo \"ready: yes\" > /run/ready # done", "a\nb\u2028c"], ud["runcmd"]
assert md == {"instance-id": "vm", "local-hostname": "no"}, md
"#;
        let have_yaml = std::process::Command::new("python3")
            .args(["-c", "import yaml"])
            .output()
            .is_ok_and(|o| o.status.success());
        if !have_yaml {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "python3 with PyYAML is needed to check the YAML"
            );
            eprintln!("skipping: python3 with PyYAML not found");
            return;
        }
        let mut config = config();
        config.hostname = Some("no".into());
        config.runcmd.push("a\nb\u{2028}c".into());
        let files = SeedFiles::for_vm("vm", &config);
        let dir = tempfile::tempdir().unwrap();
        let ud = dir.path().join("user-data");
        let md = dir.path().join("meta-data");
        std::fs::write(&ud, &files.user_data).unwrap();
        std::fs::write(&md, &files.meta_data).unwrap();
        let out = std::process::Command::new("python3")
            .arg("-c")
            .arg(check)
            .arg(&ud)
            .arg(&md)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
