//! The three files of a NoCloud seed: `meta-data`, `user-data`, `network-config`.

use crate::api::types::CloudInitConfig;

use super::validate::default_hostname;
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
            user_data: config
                .user_data
                .clone()
                .unwrap_or_else(|| user_data(&hostname, config)),
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

fn user_data(hostname: &str, config: &CloudInitConfig) -> String {
    let mut doc = YamlDoc::with_header("#cloud-config");
    doc.string(0, "hostname", hostname)
        .plain(0, "preserve_hostname", "false");
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
    fn raw_files_replace_the_generated_ones() {
        let config = CloudInitConfig {
            user_data: Some("#!/bin/sh\necho raw\n".into()),
            network_config: Some("version: 1\n".into()),
            ..config()
        };
        let files = SeedFiles::for_vm("vm", &config);
        assert_eq!(files.user_data, "#!/bin/sh\necho raw\n");
        assert_eq!(files.network_config, "version: 1\n");
        assert!(files.meta_data.contains("local-hostname: \"gpu-1\""));
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
