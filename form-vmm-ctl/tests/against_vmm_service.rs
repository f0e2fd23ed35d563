//! The CLI against the real `vmm-service serve`, on a temporary socket and a fixture
//! sysfs with one GPU. Needs the vmm-service binary: it is looked for next to
//! form-vmm-ctl (any workspace build puts it there) or at $VMM_SERVICE_BIN.

mod common;

use std::fs;
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::ctl;
use common::tls::Pki;
use form_service_api::types::{DoctorResponse, GpuList, VmList};

const GPU: &str = "0000:19:00.0";

/// The vmm-service executable, or `None` (after saying why) when the test must skip.
fn service_binary() -> Option<PathBuf> {
    let path = std::env::var_os("VMM_SERVICE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_BIN_EXE_form-vmm-ctl")).with_file_name("vmm-service")
        });
    if path.is_file() {
        return Some(path);
    }
    let reason = format!(
        "{} is missing: build it with `cargo build -p vmm-service` (same target dir) or set VMM_SERVICE_BIN",
        path.display()
    );
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{reason}");
    }
    eprintln!("skipping: {reason}");
    None
}

/// sysfs with one H100 behind a switch port, alone in IOMMU group 12, on no driver.
fn fixture_sysfs(root: &Path) {
    let device = root.join("devices/pci0000:00/0000:18:00.0").join(GPU);
    fs::create_dir_all(&device).unwrap();
    for (name, value) in [
        ("class", "0x030200"),
        ("vendor", "0x10de"),
        ("device", "0x2330"),
        ("numa_node", "0"),
    ] {
        fs::write(device.join(name), format!("{value}\n")).unwrap();
    }
    let group = root.join("kernel/iommu_groups/12/devices");
    fs::create_dir_all(&group).unwrap();
    fs::create_dir_all(root.join("bus/pci/devices")).unwrap();
    fs::create_dir_all(root.join("bus/pci/drivers/vfio-pci")).unwrap();
    symlink(
        "../../../../../kernel/iommu_groups/12",
        device.join("iommu_group"),
    )
    .unwrap();
    symlink(
        format!("../../../devices/pci0000:00/0000:18:00.0/{GPU}"),
        root.join("bus/pci/devices").join(GPU),
    )
    .unwrap();
    symlink(
        format!("../../../../bus/pci/devices/{GPU}"),
        group.join(GPU),
    )
    .unwrap();
}

/// A running `vmm-service serve`, stopped when dropped.
struct Service {
    child: Child,
    socket: PathBuf,
    dir: tempfile::TempDir,
}

impl Service {
    /// Serves on a unix socket in a fresh directory.
    fn start(binary: &Path) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("service.sock");
        let listen = format!("unix:{}", socket.display());
        let mut service = Self::spawn(binary, dir, socket.clone(), &listen, None, None);
        service.wait_until(|| std::os::unix::net::UnixStream::connect(&socket).is_ok());
        service
    }

    /// Serves on TCP with a token; returns the service and its URL.
    fn start_tcp(binary: &Path, token: &str) -> (Self, String) {
        Self::start_tcp_tls(binary, token, None)
    }

    /// Serves on TCP with a token, and TLS with `pki`'s server certificate when
    /// given; returns the service and its URL.
    fn start_tcp_tls(binary: &Path, token: &str, pki: Option<&Pki>) -> (Self, String) {
        let dir = tempfile::tempdir().unwrap();
        let token_file = dir.path().join("token");
        fs::write(&token_file, format!("{token}\n")).unwrap();
        fs::set_permissions(&token_file, fs::Permissions::from_mode(0o600)).unwrap();
        // A port the kernel just handed out is very likely still free a moment later.
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let address = format!("127.0.0.1:{port}");
        let unused = dir.path().join("no.sock");
        let mut service = Self::spawn(
            binary,
            dir,
            unused,
            &format!("tcp:{address}"),
            Some(&token_file),
            pki,
        );
        service.wait_until(|| TcpStream::connect(&address).is_ok());
        let scheme = if pki.is_some() { "https" } else { "http" };
        (service, format!("{scheme}://{address}"))
    }

    fn spawn(
        binary: &Path,
        dir: tempfile::TempDir,
        socket: PathBuf,
        listen: &str,
        token_file: Option<&Path>,
        pki: Option<&Pki>,
    ) -> Self {
        let sysfs = dir.path().join("sys");
        fixture_sysfs(&sysfs);
        for sub in ["state", "run", "images"] {
            fs::create_dir_all(dir.path().join(sub)).unwrap();
        }
        let mut command = Command::new(binary);
        command.arg("serve").arg("--listen").arg(listen);
        if let Some(file) = token_file {
            command.arg("--token-file").arg(file);
        }
        if let Some(pki) = pki {
            command
                .arg("--tls-cert")
                .arg(&pki.server_cert)
                .arg("--tls-key")
                .arg(&pki.server_key);
        }
        let child = command
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .arg("--run-dir")
            .arg(dir.path().join("run"))
            .arg("--image-dir")
            .arg(dir.path().join("images"))
            .arg("--sysfs-root")
            .arg(&sysfs)
            .arg("--vmm-binary")
            .arg("/bin/false")
            .stdout(Stdio::null())
            .stderr(fs::File::create(dir.path().join("service.log")).unwrap())
            .spawn()
            .expect("vmm-service starts");
        Self { child, socket, dir }
    }

    fn wait_until(&mut self, listening: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !listening() {
            let exited = self.child.try_wait().unwrap();
            if exited.is_some() || Instant::now() >= deadline {
                let log =
                    fs::read_to_string(self.dir.path().join("service.log")).unwrap_or_default();
                panic!("vmm-service is not listening ({exited:?}); its log:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn ctl(&self, args: &[&str]) -> common::Run {
        let mut full = vec!["--socket", self.socket.to_str().unwrap()];
        full.extend_from_slice(args);
        ctl(&full, None)
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn cli_and_service_agree() {
    let Some(binary) = service_binary() else {
        return;
    };
    let service = Service::start(&binary);

    let run = service.ctl(&["gpu", "list", "--json"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let list: GpuList = serde_json::from_str(&run.stdout).expect("a GpuList");
    assert_eq!(list.gpus.len(), 1, "{}", run.stdout);
    let gpu = &list.gpus[0];
    assert_eq!(gpu.bdf, GPU);
    assert_eq!((gpu.vendor_id, gpu.device_id), (0x10de, 0x2330));
    assert_eq!((gpu.iommu_group, gpu.numa_node), (Some(12), Some(0)));
    assert_eq!(gpu.parent_bridge.as_deref(), Some("0000:18:00.0"));
    assert_eq!(gpu.owner, None);

    let run = service.ctl(&["gpu", "list"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{}", run.stdout);
    assert!(lines[0].starts_with("BDF "), "{}", run.stdout);
    let cells: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(cells.first(), Some(&GPU), "{}", run.stdout);
    assert_eq!(
        &cells[cells.len() - 4..],
        ["-", "12", "0", "-"],
        "{}",
        run.stdout
    );

    // A malformed address never leaves the CLI.
    let kernel = service.dir.path().join("images/vmlinux");
    fs::write(&kernel, b"not really a kernel").unwrap();
    let kernel = kernel.to_str().unwrap();
    let run = service.ctl(&[
        "create", "--name", "a", "--kernel", kernel, "--gpu", "19:0.0",
    ]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr.contains("'19:0.0' is not a PCI address"),
        "{}",
        run.stderr
    );

    // A well-formed address the host does not have is the service's unknown_gpu.
    let run = service.ctl(&[
        "create", "--name", "a", "--kernel", kernel, "--gpu", "42:00.0",
    ]);
    assert_eq!(run.code, 4, "{}", run.stderr);
    assert!(run.stderr.contains("0000:42:00.0"), "{}", run.stderr);

    // payload_not_found is an invalid request: exit 2.
    let missing = service.dir.path().join("images/no-such-vmlinux");
    let missing = missing.to_str().unwrap();
    let run = service.ctl(&["create", "--name", "a", "--kernel", missing]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains(missing), "{}", run.stderr);

    // A path outside the service's image directories is path_not_allowed: exit 6.
    let run = service.ctl(&["create", "--name", "a", "--kernel", "/etc/shadow"]);
    assert_eq!(run.code, 6, "{}", run.stderr);
    assert!(run.stderr.contains("--image-dir"), "{}", run.stderr);

    let run = service.ctl(&["--json", "info", "a"]);
    assert_eq!(run.code, 4, "{}", run.stderr);
    let body: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(body["error"]["code"], "vm_not_found");

    // A disk image the service's host lacks is invalid_config naming the field: exit 2.
    let missing = service.dir.path().join("images/root.raw");
    let missing = missing.to_str().unwrap();
    let run = service.ctl(&[
        "create", "--name", "a", "--kernel", kernel, "--disk", missing,
    ]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr
            .contains(&format!("disks[0].path: '{missing}' does not exist")),
        "{}",
        run.stderr
    );

    // A VMM that cannot start (/bin/false here) fails the create; the seed disk built
    // for it is gone again.
    let key = service.dir.path().join("id.pub");
    fs::write(&key, "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5 ops@lab\n").unwrap();
    let run = service.ctl(&[
        "create",
        "--name",
        "a",
        "--kernel",
        kernel,
        "--ssh-key",
        key.to_str().unwrap(),
        "--hostname",
        "gpu-1",
    ]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stderr.contains("VMM"), "{}", run.stderr);
    assert!(!service.dir.path().join("state/vms/a/seed.img").exists());

    // Refused requests changed nothing.
    let run = service.ctl(&["--json", "list"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let vms: VmList = serde_json::from_str(&run.stdout).unwrap();
    assert!(vms.vms.is_empty(), "{}", run.stdout);

    let run = service.ctl(&["--json", "doctor", "--memory", "1G"]);
    assert!(matches!(run.code, 0 | 1), "{}", run.stderr);
    let report: DoctorResponse = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(run.code == 1, report.worst == "error");
    assert!(
        report.findings.iter().any(|f| f.check == "iommu"),
        "{}",
        run.stdout
    );
}

#[test]
fn tcp_with_the_services_token() {
    let Some(binary) = service_binary() else {
        return;
    };
    let (_service, url) = Service::start_tcp(&binary, "tok-0123456789abcdef");

    let run = ctl(
        &["--url", &url, "gpu", "list"],
        Some(("FORM_VMM_TOKEN", "tok-0123456789abcdef")),
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.contains(GPU), "{}", run.stdout);

    let run = ctl(
        &["--url", &url, "list"],
        Some(("FORM_VMM_TOKEN", "tok-0123456789abcdeX")),
    );
    assert_eq!(run.code, 6, "{}", run.stderr);
    assert!(run.stderr.contains("Bearer"), "{}", run.stderr);

    // The console sits behind the token too; past it, the service's own 404.
    let run = ctl(
        &["--url", &url, "console", "nope"],
        Some(("FORM_VMM_TOKEN", "tok-0123456789abcdeX")),
    );
    assert_eq!(run.code, 6, "{}", run.stderr);
    let run = ctl(
        &["--url", &url, "console", "nope", "--follow"],
        Some(("FORM_VMM_TOKEN", "tok-0123456789abcdef")),
    );
    assert_eq!(
        (run.code, run.stderr.as_str()),
        (4, "error: no VM named nope\n")
    );
}

#[test]
fn https_with_the_services_ca() {
    let Some(binary) = service_binary() else {
        return;
    };
    let certs = tempfile::tempdir().unwrap();
    let pki = Pki::new(certs.path(), "service");
    let other = Pki::new(certs.path(), "other");
    let token = "tls-0123456789abcdef";
    let (_service, url) = Service::start_tcp_tls(&binary, token, Some(&pki));
    let (_token_dir, token_file) = common::temp_file("token", token);
    let token_file = token_file.to_str().unwrap();

    let run = ctl(
        &[
            "--url",
            &url,
            "--token-file",
            token_file,
            "--ca-file",
            pki.ca_cert.to_str().unwrap(),
            "gpu",
            "list",
        ],
        None,
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.contains(GPU), "{}", run.stdout);

    // The system's store (here holding another CA only) does not vouch for it.
    let run = ctl(
        &["--url", &url, "--token-file", token_file, "gpu", "list"],
        Some(("SSL_CERT_FILE", other.ca_cert.to_str().unwrap())),
    );
    assert_eq!(run.code, 3, "{}", run.stderr);
    assert!(
        run.stderr
            .contains("the TLS certificate of 127.0.0.1 is not signed by a CA"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("--ca-file"), "{}", run.stderr);
}
