//! `vmm-service`: the API server (`serve`) and local administration of the host's GPUs.
//!
//! Exit status: 0 success, 1 failure (including `doctor` finding an error), 2 usage.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use serde::Serialize;

use vmm_service::cgroups::CgroupTree;
use vmm_service::instances::{
    AdmissionLimits, HostLimits, ImagePolicy, LogLimits, Manager, ServiceConfig,
    DEFAULT_LOG_INTERVAL, HOLD_CHECK_DEADLINE,
};
use vmm_service::state::{secure_state_dir, Store};
use vmm_service::vmm_client::VmmDeadlines;
use vmm_service::vmm_user::{VmmUserOptions, VmmUsers};

use vmm_service::api::{self, Listen, ServeOptions, TlsFiles};
use vmm_service::gpu::{
    self, Bdf, BindOptions, DevicePolicy, DoctorInputs, GpuBinder, GpuError, GpuInfo, HostPaths,
    JsonFileRecords, KernelSysfs, MemlockLimit, NoOwners, Severity,
};

#[derive(Parser)]
#[command(name = "vmm-service", version, about = "Formation VMM service")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the API server: VMs, their GPUs and form-vmm processes.
    Serve(Box<ServeArgs>),
    /// List GPUs, and bind them to vfio-pci or give them back to the host.
    Gpu {
        #[command(subcommand)]
        action: GpuCommand,
    },
    /// Check whether this host can pass GPUs to VMs.
    Doctor {
        /// Guest memory to check the locked-memory limit and hugepages against (e.g. 64G).
        #[arg(long, value_name = "SIZE", value_parser = gpu::parse_size)]
        memory: Option<u64>,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        host: HostArgs,
    },
}

#[derive(Args)]
struct ServeArgs {
    /// unix:/PATH (mode --socket-mode) or tcp:HOST:PORT (needs --token-file; a
    /// loopback address unless --tls-cert or --allow-plain-tcp); repeatable, to
    /// serve on several.
    #[arg(
        long,
        value_name = "ADDRESS",
        default_value = "unix:/run/form-vmm/service.sock"
    )]
    listen: Vec<Listen>,
    /// A directory VMs' kernels, initramfs and disk images may come from; repeatable.
    /// A path outside every one is refused (403 path_not_allowed). Default:
    /// /var/lib/form-vmm/images.
    #[arg(long, value_name = "DIR")]
    image_dir: Vec<PathBuf>,
    /// A block device VMs may have as a disk, by this exact name (or one with its
    /// device number in an image directory); repeatable. None by default.
    #[arg(long, value_name = "DEVICE")]
    allow_block_device: Vec<PathBuf>,
    /// At most this many VMs recorded (409 limit_reached beyond). Default: no limit.
    #[arg(long, value_name = "N")]
    max_vms: Option<u32>,
    /// At most this much guest RAM across created and running VMs (e.g. 512G).
    #[arg(long, value_name = "SIZE", value_parser = gpu::parse_size)]
    max_memory: Option<u64>,
    /// At most this many vCPUs across created and running VMs.
    #[arg(long, value_name = "N")]
    max_vcpus: Option<u32>,
    /// Rotate a VM's serial.log or vmm.log once it is larger than this.
    #[arg(long, value_name = "SIZE", value_parser = gpu::parse_size, default_value = "64M")]
    log_max_size: u64,
    /// Rotated logs kept per log (serial.log.1 .. serial.log.N).
    #[arg(long, value_name = "N", default_value_t = 2)]
    log_keep: u32,
    /// Connections each listener holds at once; more are answered 503 and closed.
    #[arg(long, value_name = "N", default_value_t = api::DEFAULT_MAX_CONNECTIONS)]
    max_connections: usize,
    /// Connections one peer (an IPv4 address, or an IPv6 /64) holds at once on each
    /// TCP listener; more are answered 503 and closed, so one client cannot take
    /// every connection before showing a token. Loopback peers are not capped.
    #[arg(long, value_name = "N", default_value_t = api::DEFAULT_MAX_CONNECTIONS_PER_PEER)]
    max_connections_per_peer: usize,
    /// Seconds a connection has to send a request's headers (from when it opens or
    /// its last answer went out); an idle connection is closed after this.
    #[arg(long, value_name = "SECONDS", default_value_t = api::DEFAULT_HEADER_TIMEOUT.as_secs())]
    header_timeout: u64,
    /// Allow plain-text TCP on an address other than loopback (the token and every
    /// request cross the network unencrypted).
    #[arg(long, conflicts_with = "tls_cert")]
    allow_plain_tcp: bool,
    /// Serve TLS on the TCP listeners with this certificate chain (PEM: the
    /// server's certificate first, then intermediates).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM: PKCS#8, RSA or EC; mode 0600).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// File holding the bearer token TCP clients must send (mode 0600).
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// Permissions of the unix socket, in octal.
    #[arg(long, value_name = "MODE", default_value = "660", value_parser = parse_mode)]
    socket_mode: u32,
    /// Where the database, the VMs' logs and their cloud-init seed disks are kept.
    #[arg(long, value_name = "DIR", default_value = "/var/lib/form-vmm")]
    state_dir: PathBuf,
    /// Where the VMMs' API sockets are created.
    #[arg(long, value_name = "DIR", default_value = "/run/form-vmm")]
    run_dir: PathBuf,
    /// The form-vmm executable (default: next to vmm-service, else on PATH).
    #[arg(long, value_name = "FILE")]
    vmm_binary: Option<PathBuf>,
    /// Also let VMs have devices of these classes, besides GPUs and accelerators:
    /// names (nic, nvme, bridge or nvswitch, audio, display, accelerator) or class
    /// codes (0x02, 0x0207), comma-separated; repeatable.
    #[arg(long, value_name = "CLASSES", value_parser = parse_class_list)]
    allow_class: Vec<ClassList>,
    /// Let VMs have this device although the kernel cannot reset it (no
    /// reset_method or reset in sysfs); repeatable.
    #[arg(long, value_name = "BDF", value_parser = parse_bdf)]
    allow_no_reset: Vec<Bdf>,
    /// Each form-vmm gives up root for this user (name or uid; gid: see
    /// --vmm-gid) once its VM is built; every VMM shares it.
    #[arg(long, value_name = "NAME|UID", conflicts_with_all = ["vmm_uid", "vmm_uid_range"])]
    vmm_user: Option<String>,
    /// As --vmm-user, by number.
    #[arg(long, value_name = "UID", conflicts_with = "vmm_uid_range")]
    vmm_uid: Option<u32>,
    /// Each running VM's form-vmm gets its own uid from this range (e.g.
    /// 100000-100999), so VMMs cannot reach each other's files; released when
    /// the VMM ends.
    #[arg(long, value_name = "FIRST-LAST", value_parser = vmm_service::vmm_user::parse_uid_range)]
    vmm_uid_range: Option<(u32, u32)>,
    /// The gid of VMMs that gave up root (default: the group of /dev/kvm, which
    /// they reopen on a guest reboot; without /dev/kvm, the user's own group).
    #[arg(long, value_name = "GID")]
    vmm_gid: Option<u32>,
    /// Keep VMMs in the service's own cgroup instead of one per VM
    /// (<service's cgroup>/vms/<name>, with memory.max, pids.max and the VM's
    /// NUMA node's cpuset), which needs a delegated cgroup v2 tree.
    #[arg(long)]
    no_vm_cgroups: bool,
    /// Start VMMs in the service's mount namespace instead of one of their own
    /// that shows only their VM's directories, the image directories and the
    /// device nodes (form-vmm --mount-ns, which needs the service to run as root).
    #[arg(long)]
    no_vmm_mount_ns: bool,
    #[command(flatten)]
    host: HostArgs,
}

/// One `--allow-class` value (a list itself, so clap sees one value per flag).
#[derive(Clone)]
struct ClassList(Vec<gpu::ClassRule>);

fn parse_class_list(text: &str) -> Result<ClassList, String> {
    gpu::parse_classes(text).map(ClassList)
}

fn parse_bdf(text: &str) -> Result<Bdf, String> {
    Bdf::from_user_input(text).map_err(|e| e.to_string())
}

fn parse_mode(text: &str) -> Result<u32, String> {
    u32::from_str_radix(text.trim_start_matches("0o"), 8)
        .ok()
        .filter(|mode| *mode <= 0o777)
        .ok_or_else(|| format!("'{text}' is not an octal file mode like 660"))
}

#[derive(Subcommand)]
enum GpuCommand {
    /// List GPUs and accelerators.
    List {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        host: HostArgs,
    },
    /// Bind a GPU's IOMMU group to vfio-pci, recording each function's driver.
    Bind {
        /// PCI address (0000:01:00.0 or 01:00.0) or /sys/bus/pci/devices/<address>.
        device: String,
        /// Also bind the console GPU or a group shared with devices the host is using.
        #[arg(long)]
        force: bool,
        /// Seconds to wait for /dev/vfio/<group> to appear.
        #[arg(long, value_name = "SECONDS", default_value_t = 5)]
        timeout: u64,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        host: HostArgs,
        #[command(flatten)]
        records: RecordsArgs,
    },
    /// Return a GPU's IOMMU group from vfio-pci to the drivers recorded at bind time.
    Unbind {
        /// PCI address (0000:01:00.0 or 01:00.0) or /sys/bus/pci/devices/<address>.
        device: String,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        host: HostArgs,
        #[command(flatten)]
        records: RecordsArgs,
    },
}

#[derive(Args)]
struct HostArgs {
    /// Where sysfs is mounted.
    #[arg(long, value_name = "DIR", default_value = "/sys")]
    sysfs_root: PathBuf,
    /// Where procfs is mounted.
    #[arg(long, value_name = "DIR", default_value = "/proc")]
    proc_root: PathBuf,
    /// Where device nodes are (VFIO group nodes appear in <DIR>/vfio).
    #[arg(long, value_name = "DIR", default_value = "/dev")]
    dev_root: PathBuf,
    /// Where kernel modules are installed.
    #[arg(long, value_name = "DIR", default_value = "/lib/modules")]
    modules_root: PathBuf,
}

impl HostArgs {
    fn paths(&self) -> HostPaths {
        HostPaths {
            sysfs: self.sysfs_root.clone(),
            procfs: self.proc_root.clone(),
            dev: self.dev_root.clone(),
            modules: self.modules_root.clone(),
        }
    }
}

#[derive(Args)]
struct RecordsArgs {
    /// File that remembers each bound function's original driver.
    #[arg(long, value_name = "FILE", default_value = gpu::DEFAULT_RECORDS_PATH)]
    state_file: PathBuf,
}

fn main() -> ExitCode {
    let cli = Cli::try_parse().unwrap_or_else(|e| e.exit());
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode, GpuError> {
    match cli.command {
        Command::Serve(args) => Ok(serve(*args)),
        Command::Gpu { action } => run_gpu(action),
        Command::Doctor { memory, json, host } => {
            let paths = host.paths();
            let inputs = DoctorInputs {
                vm_memory: memory,
                memlock: MemlockLimit::of_current_process(&paths),
            };
            let report = gpu::doctor(&paths, &inputs);
            if json {
                print_json(&report);
            } else {
                print!("{}", gpu::render(&report));
            }
            Ok(if report.worst() == Severity::Error {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
    }
}

fn serve(args: ServeArgs) -> ExitCode {
    // Info by default: the service's log is the record of VMs starting and ending.
    env_logger::Builder::new()
        .filter_level(log::LevelFilter::Info)
        .parse_env("RUST_LOG")
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve_async(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn serve_async(args: ServeArgs) -> Result<(), String> {
    let host = args.host.paths();
    if args.max_connections == 0 || args.max_connections_per_peer == 0 || args.header_timeout == 0 {
        return Err(
            "--max-connections, --max-connections-per-peer and --header-timeout must be at least 1"
                .to_string(),
        );
    }
    // Whatever the service and its VMMs create (database, logs, seed disks,
    // sockets' directories) is the service user's alone unless given a mode.
    // SAFETY: umask(2) has no memory effects.
    unsafe {
        libc::umask(0o077);
    }
    for change in secure_state_dir(&args.state_dir)
        .map_err(|e| format!("cannot secure {}: {e}", args.state_dir.display()))?
    {
        log::warn!(
            "state directory: {change} (it may hold secrets: cloud-init user-data, guest consoles)"
        );
    }
    let vmm_users = vmm_users(&args, &host)?;
    if let Some(users) = &vmm_users {
        // Again after the tightening above: re-adopted VMMs reopen their serial logs
        // through these on a reboot.
        vmm_service::vmm_user::handover::open_parents_to_group(
            &args.state_dir,
            &args.run_dir,
            users.gid,
        )
        .map_err(|e| {
            format!(
                "cannot open the state and run directories to group {}: {e}",
                users.gid
            )
        })?;
    }
    let cgroups = (!args.no_vm_cgroups).then(|| vm_cgroups(&host)).flatten();
    // SAFETY: geteuid has no preconditions.
    let vmm_mount_ns = !args.no_vmm_mount_ns && unsafe { libc::geteuid() } == 0;
    if !args.no_vmm_mount_ns && !vmm_mount_ns {
        log::warn!(
            "VMMs share the service's mount namespace: making one per VMM needs root, and the \
             service does not run as root"
        );
    }
    let database = args.state_dir.join("service.db");
    let store = Store::open(&database).map_err(|e| e.to_string())?;
    let config = ServiceConfig {
        limits: HostLimits::probe(&host.procfs),
        host,
        state_dir: args.state_dir,
        run_dir: args.run_dir,
        vmm_binary: args
            .vmm_binary
            .unwrap_or_else(vmm_service::supervisor::default_vmm_binary),
        bind: BindOptions::default(),
        policy: DevicePolicy {
            allow_no_reset: args.allow_no_reset,
            ..DevicePolicy::allowing(
                &args
                    .allow_class
                    .into_iter()
                    .flat_map(|l| l.0)
                    .collect::<Vec<_>>(),
            )
        },
        vmm_deadlines: VmmDeadlines::default(),
        hold_check: HOLD_CHECK_DEADLINE,
        images: ImagePolicy::new(args.image_dir, args.allow_block_device),
        admission: AdmissionLimits {
            max_vms: args.max_vms,
            max_memory: args.max_memory,
            max_vcpus: args.max_vcpus,
        },
        logs: LogLimits {
            max_bytes: args.log_max_size,
            keep: args.log_keep,
            interval: DEFAULT_LOG_INTERVAL,
        },
        vmm_users,
        cgroups,
        vmm_mount_ns,
    };
    log::info!("images from {}", config.images.dirs().join(", "));
    let manager = Manager::new(config, store, Box::new(KernelSysfs));
    let adopted = manager.reconcile().await.map_err(|e| e.to_string())?;
    if !adopted.is_empty() {
        eprintln!("re-adopted VMs: {}", adopted.join(", "));
    }
    manager.spawn_log_rotation();
    manager.spawn_device_sync();
    let router = api::router(manager);
    let options = ServeOptions {
        token_file: args.token_file,
        socket_mode: args.socket_mode,
        max_connections: args.max_connections,
        max_connections_per_peer: args.max_connections_per_peer,
        header_timeout: Duration::from_secs(args.header_timeout),
        allow_plain_tcp: args.allow_plain_tcp,
        tls: args
            .tls_cert
            .zip(args.tls_key)
            .map(|(cert, key)| TlsFiles { cert, key }),
    };
    api::serve(router, &args.listen, &options)
        .await
        .map_err(|e| e.to_string())
}

/// Who the VMMs run as, from the `--vmm-*` options, logged.
fn vmm_users(args: &ServeArgs, host: &HostPaths) -> Result<Option<VmmUsers>, String> {
    let options = VmmUserOptions {
        user: args.vmm_user.clone(),
        uid: args.vmm_uid,
        gid: args.vmm_gid,
        range: args.vmm_uid_range,
    };
    let (users, warnings) = options.resolve(&host.dev, std::path::Path::new("/etc/passwd"))?;
    for warning in warnings {
        log::warn!("{warning}");
    }
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    match &users {
        Some(_) if !root => {
            return Err("--vmm-user, --vmm-uid and --vmm-uid-range need the service to run as root (form-vmm opens /dev/kvm and VFIO as root, then changes uid)".to_string())
        }
        Some(users) => log::info!("VMMs give up root once their VM is built: {users:?}"),
        None if root => log::warn!(
            "VMMs keep running as root (sandboxed by seccomp and Landlock); --vmm-uid-range gives each VM's VMM its own uid"
        ),
        None => {}
    }
    Ok(users)
}

/// The service's cgroup v2 tree, ready for a cgroup per VM; `None`, with a
/// warning, where there is none or it is not the service's to change.
fn vm_cgroups(host: &HostPaths) -> Option<CgroupTree> {
    let self_cgroup = std::fs::read_to_string(host.procfs.join("self/cgroup")).unwrap_or_default();
    let tree = match CgroupTree::discover(&host.sysfs.join("fs/cgroup"), &self_cgroup) {
        Ok(tree) => tree,
        Err(e) => {
            log::warn!("no cgroup per VM ({e}): VMMs share the service's cgroup, without memory, pids or cpuset limits of their own");
            return None;
        }
    };
    match tree.prepare(std::process::id()) {
        Ok(()) => {
            log::info!("each VM's VMM runs in {}/vms/<name>", tree.base().display());
            Some(tree)
        }
        Err(e) => {
            log::warn!(
                "no cgroup per VM: cannot set up {}/vms ({e}); delegate the service's cgroup to it (systemd: Delegate=yes) or pass --no-vm-cgroups",
                tree.base().display()
            );
            None
        }
    }
}

fn run_gpu(action: GpuCommand) -> Result<ExitCode, GpuError> {
    match action {
        GpuCommand::List { json, host } => {
            let gpus = gpu::list_gpus(&host.paths(), &NoOwners)?;
            if json {
                print_json(&gpus);
            } else {
                print!("{}", gpu_table(&gpus));
            }
        }
        GpuCommand::Bind {
            device,
            force,
            timeout,
            json,
            host,
            records,
        } => {
            let bdf = Bdf::from_user_input(&device)?;
            let paths = host.paths();
            let mut records = JsonFileRecords::new(records.state_file);
            let options = BindOptions {
                force,
                vfio_node_timeout: Duration::from_secs(timeout),
            };
            let outcome =
                GpuBinder::new(&paths, &KernelSysfs, &mut records).bind(&bdf, &options)?;
            if json {
                print_json(&outcome);
            } else if outcome.moved.is_empty() {
                println!(
                    "IOMMU group {} is already on vfio-pci ({})",
                    outcome.iommu_group,
                    outcome.vfio_node.display()
                );
            } else {
                for change in &outcome.moved {
                    println!(
                        "{}: {} -> vfio-pci",
                        change.bdf,
                        change.from.as_deref().unwrap_or("no driver")
                    );
                }
                println!(
                    "IOMMU group {} bound to vfio-pci: {}",
                    outcome.iommu_group,
                    outcome.vfio_node.display()
                );
            }
        }
        GpuCommand::Unbind {
            device,
            json,
            host,
            records,
        } => {
            let bdf = Bdf::from_user_input(&device)?;
            let paths = host.paths();
            let mut records = JsonFileRecords::new(records.state_file);
            let outcome = GpuBinder::new(&paths, &KernelSysfs, &mut records).release(&bdf)?;
            if json {
                print_json(&outcome);
            } else if outcome.restored.is_empty() {
                println!("IOMMU group {} is not on vfio-pci", outcome.iommu_group);
            } else {
                for change in &outcome.restored {
                    println!(
                        "{}: vfio-pci -> {}",
                        change.bdf,
                        change.to.as_deref().unwrap_or("no driver")
                    );
                }
            }
            for warning in &outcome.warnings {
                eprintln!("warning: {warning}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn gpu_table(gpus: &[GpuInfo]) -> String {
    let dash = || "-".to_string();
    let mut rows = vec![[
        "BDF".to_string(),
        "NAME".to_string(),
        "DRIVER".to_string(),
        "IOMMU".to_string(),
        "NUMA".to_string(),
        "OWNER".to_string(),
    ]];
    for info in gpus {
        let function = &info.function;
        rows.push([
            function.bdf.to_string(),
            info.display_name(),
            function.driver.clone().unwrap_or_else(dash),
            function.iommu_group.map_or_else(dash, |g| g.to_string()),
            function.numa_node.map_or_else(dash, |n| n.to_string()),
            info.owner.clone().unwrap_or_else(dash),
        ]);
    }
    let mut widths = [0usize; 6];
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in &rows {
        let cells: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

fn print_json<T: Serialize>(value: &T) {
    match serde_json::to_string_pretty(value) {
        Ok(text) => println!("{text}"),
        Err(e) => eprintln!("error: cannot encode JSON: {e}"),
    }
}
