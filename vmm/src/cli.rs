//! The `form-vmm` command line, in Cloud Hypervisor's flag style
//! (`--memory size=1G,shared=on`), turned into what the process should do.

use crate::config::{
    ConfigError, ConsoleConfig, CpusConfig, DeviceConfig, DiskConfig, MemoryConfig, NetConfig,
    NumaConfig, ParseError, PayloadConfig, RngConfig, VmConfig,
};
use crate::sandbox::landlock::PathRule;
use crate::sandbox::privileges::{lookup_user, Credentials};
use crate::sandbox::seccomp::SeccompMode;
use crate::sandbox::SandboxConfig;
use clap::Parser;
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(
    name = "form-vmm",
    version,
    about = "A KVM virtual machine monitor with an HTTP API on a unix socket",
    after_help = "Give --kernel (or a --disk with boot=on) to boot a VM at once, --api-socket to be driven over HTTP, or both."
)]
pub struct Cli {
    /// Guest kernel: an ELF vmlinux (PVH or 64-bit entry) or a bzImage.
    #[arg(long, value_name = "PATH")]
    pub kernel: Option<PathBuf>,

    /// Initramfs handed to the kernel.
    #[arg(long, value_name = "PATH")]
    pub initramfs: Option<PathBuf>,

    /// Kernel command line; with a --disk boot=on, appended to the boot entry's.
    #[arg(long, value_name = "STRING", allow_hyphen_values = true)]
    pub cmdline: Option<String>,

    /// vCPUs at boot, and the most the VM may have.
    #[arg(long, value_name = "boot=N[,max=M]")]
    pub cpus: Option<String>,

    /// Guest RAM; sizes take K, M, G or T suffixes.
    #[arg(
        long,
        value_name = "size=SIZE[,shared=on][,hugepages=on][,host_numa_node=N][,dma_map=deferred|upfront]"
    )]
    pub memory: Option<String>,

    /// A piece of guest RAM with its own backing and host node (repeatable), in
    /// guest physical order; --memory then needs no size (it is their total).
    #[arg(
        long = "memory-zone",
        value_name = "id=ID,size=SIZE[,shared=on][,hugepages=on[,hugepage_size=2M|1G]][,host_numa_node=N]"
    )]
    pub memory_zones: Vec<String>,

    /// A guest NUMA node (repeatable): its vCPUs, its memory zones and its
    /// distances to other nodes (default 20). Lists with more than one item go
    /// in brackets: cpus=[0-3,8], memory_zones=[mem0,mem1], distances=[1@20,2@30].
    #[arg(
        long = "numa",
        value_name = "guest_numa_id=N,cpus=LIST,memory_zones=LIST[,distances=LIST]"
    )]
    pub numa: Vec<String>,

    /// Where COM1 goes.
    #[arg(long, value_name = "off|null|tty|pty|file=PATH")]
    pub serial: Option<String>,

    /// A virtio console (hvc0 in a Linux guest) and where its output goes; default
    /// off. tty needs --serial other than tty; the console reads stdin when it is a
    /// terminal.
    #[arg(long, value_name = "off|null|tty|file=PATH")]
    pub console: Option<String>,

    /// A raw disk image as a virtio-blk device (repeatable). Options: path=
    /// (required), readonly=on, direct=on (O_DIRECT), id=NAME (default disk0,
    /// disk1...), serial=TEXT (up to 20 characters), boot=on (no --kernel: boot
    /// the default entry of the image's own grub.cfg, BLS entries or newest
    /// /boot/vmlinuz-*).
    #[arg(
        long = "disk",
        value_name = "path=IMG[,readonly=on][,direct=on][,id=ID][,boot=on]"
    )]
    pub disks: Vec<String>,

    /// A virtio-net device on a host tap (repeatable): tap=NAME (opened, or created
    /// when absent) or fd=N (an open tap); mac=MAC (default: random, locally
    /// administered); id=NAME (default net0, net1...).
    #[arg(long = "net", value_name = "tap=NAME|fd=N[,mac=MAC][,id=ID]")]
    pub net: Vec<String>,

    /// A virtio-rng device reading host entropy from src (default /dev/urandom).
    #[arg(
        long,
        value_name = "src=PATH",
        num_args = 0..=1,
        default_missing_value = ""
    )]
    pub rng: Option<String>,

    /// Serve the HTTP API on this unix socket; the path must not exist yet.
    #[arg(long, value_name = "PATH|path=PATH")]
    pub api_socket: Option<String>,

    /// A host PCI device bound to vfio-pci to pass through (repeatable). Options:
    /// path= (/sys/bus/pci/devices/BDF, required), id=NAME, numa_node=N (the guest node whose
    /// PCI root bus it goes on), x_nv_gpudirect_clique=N;
    /// iommu=off and pci_segment=0 are accepted for Cloud Hypervisor compatibility.
    #[arg(long = "device", value_name = "path=SYSFS_PATH[,...]")]
    pub devices: Vec<String>,

    /// Write the log here instead of stderr.
    #[arg(long, value_name = "PATH")]
    pub log_file: Option<PathBuf>,

    /// More log output: -v info, -vv debug, -vvv trace (default: warnings and errors).
    #[arg(short = 'v', action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// Seccomp filters on every thread: true (a call outside the thread's filter
    /// kills the VMM), log (allowed, and logged by the kernel: dmesg, audit) or false.
    #[arg(long, value_name = "true|false|log", default_value = "true")]
    pub seccomp: String,

    /// Landlock: restrict file access to what the VM and --landlock-rules name.
    #[arg(long, value_name = "true|false", default_value = "true")]
    pub landlock: String,

    /// More paths form-vmm may open under Landlock, for VMs created later over the
    /// API (repeatable, or comma-separated): PATH:ro or PATH:rw, beneath PATH.
    #[arg(long = "landlock-rules", value_name = "PATH:ro|rw[,...]")]
    pub landlock_rules: Vec<String>,

    /// A mount namespace of its own, whose root shows only the device nodes, the
    /// --landlock-rules paths, what the VM given here names and the API socket's
    /// directory (needs root at start). VMs created over the API may name only these.
    #[arg(long)]
    pub mount_ns: bool,

    /// Run as this user (name or uid; its primary group unless --gid) once the
    /// first VM is built: no supplementary groups, no capabilities.
    #[arg(long, value_name = "NAME|UID")]
    pub user: Option<String>,

    /// Run as this uid once the first VM is built (with --gid).
    #[arg(long, value_name = "UID", conflicts_with = "user")]
    pub uid: Option<u32>,

    /// Run as this gid once the first VM is built.
    #[arg(long, value_name = "GID")]
    pub gid: Option<u32>,
}

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(
        "nothing to do: give --kernel to boot a VM now, or --api-socket to wait for vm.create"
    )]
    NothingToDo,
    #[error("{0} describes the VM to boot, so it needs --kernel (or a --disk with boot=on); without either, send the VM's configuration in vm.create")]
    VmOptionWithoutKernel(&'static str),
    #[error("--api-socket: empty path")]
    EmptySocketPath,
    #[error("{0}")]
    Sandbox(String),
    #[error(transparent)]
    Option(#[from] ParseError),
    #[error(transparent)]
    Config(#[from] ConfigError),
}

/// What the process was asked to do.
#[derive(Debug, PartialEq, Eq)]
pub struct Launch {
    /// Create and boot this VM at once.
    pub vm: Option<VmConfig>,
    /// Serve the API here.
    pub api_socket: Option<PathBuf>,
    pub log_file: Option<PathBuf>,
    pub log_level: log::LevelFilter,
    pub sandbox: SandboxConfig,
}

impl Cli {
    /// Parses the flags' option strings and checks the VM configuration, so that
    /// every mistake on the command line is reported before anything starts.
    pub fn resolve(self) -> Result<Launch, CliError> {
        let api_socket = self
            .api_socket
            .as_deref()
            .map(parse_api_socket)
            .transpose()?;
        // A disk with boot=on boots the VM as --kernel does (the kernel is the
        // image's own); a malformed --disk is reported by vm_config.
        let boot_disk = self
            .disks
            .iter()
            .any(|d| DiskConfig::parse(d).is_ok_and(|d| d.boot));
        let vm = if self.kernel.is_some() || boot_disk {
            Some(self.vm_config()?)
        } else {
            self.reject_vm_options_without_kernel()?;
            None
        };
        if vm.is_none() && api_socket.is_none() {
            return Err(CliError::NothingToDo);
        }
        let sandbox = self.sandbox_config().map_err(CliError::Sandbox)?;
        Ok(Launch {
            sandbox,
            vm,
            api_socket,
            log_file: self.log_file,
            log_level: match self.verbose {
                0 => log::LevelFilter::Warn,
                1 => log::LevelFilter::Info,
                2 => log::LevelFilter::Debug,
                _ => log::LevelFilter::Trace,
            },
        })
    }

    fn vm_config(&self) -> Result<VmConfig, CliError> {
        let config = VmConfig {
            cpus: self
                .cpus
                .as_deref()
                .map(CpusConfig::parse)
                .transpose()?
                .unwrap_or_default(),
            memory: MemoryConfig::parse_with_zones(self.memory.as_deref(), &self.memory_zones)?,
            payload: PayloadConfig {
                kernel: self.kernel.clone(),
                initramfs: self.initramfs.clone(),
                cmdline: self.cmdline.clone(),
            },
            serial: self
                .serial
                .as_deref()
                .map(|s| ConsoleConfig::parse("--serial", s))
                .transpose()?
                .unwrap_or_default(),
            console: self
                .console
                .as_deref()
                .map(|s| ConsoleConfig::parse("--console", s))
                .transpose()?
                .unwrap_or_else(ConsoleConfig::off),
            devices: self
                .devices
                .iter()
                .map(|d| DeviceConfig::parse(d))
                .collect::<Result<_, _>>()?,
            disks: self
                .disks
                .iter()
                .map(|d| DiskConfig::parse(d))
                .collect::<Result<_, _>>()?,
            net: self
                .net
                .iter()
                .map(|n| NetConfig::parse(n))
                .collect::<Result<_, _>>()?,
            rng: self.rng.as_deref().map(RngConfig::parse).transpose()?,
            numa: match self.numa.as_slice() {
                [] => None,
                nodes => Some(
                    nodes
                        .iter()
                        .map(|n| NumaConfig::parse(n))
                        .collect::<Result<_, _>>()?,
                ),
            },
        };
        config.validate()?;
        Ok(config)
    }

    fn sandbox_config(&self) -> Result<SandboxConfig, String> {
        let seccomp = match self.seccomp.as_str() {
            "true" | "on" => SeccompMode::Kill,
            "false" | "off" => SeccompMode::Off,
            "log" => SeccompMode::Log,
            other => return Err(format!("--seccomp {other}: give true, false or log")),
        };
        let landlock = match self.landlock.as_str() {
            "true" | "on" => true,
            "false" | "off" => false,
            other => return Err(format!("--landlock {other}: give true or false")),
        };
        let landlock_rules = self
            .landlock_rules
            .iter()
            .flat_map(|list| list.split(','))
            .filter(|rule| !rule.is_empty())
            .map(PathRule::parse)
            .collect::<Result<_, _>>()?;
        let run_as = match (&self.user, self.uid, self.gid) {
            (None, None, None) => None,
            (Some(user), None, gid) => {
                let mut credentials = lookup_user(user)?;
                if let Some(gid) = gid {
                    credentials.gid = gid;
                }
                Some(credentials)
            }
            (None, Some(uid), gid) => Some(Credentials {
                uid,
                gid: gid.unwrap_or(uid),
            }),
            (None, None, Some(_)) => return Err("--gid needs --uid or --user".into()),
            (Some(_), Some(_), _) => return Err("give --user or --uid, not both".into()),
        };
        if run_as.is_some_and(|c| c.uid == 0) {
            return Err("--uid/--user: uid 0 is root; name an unprivileged user".into());
        }
        Ok(SandboxConfig {
            seccomp,
            landlock,
            landlock_rules,
            mount_ns: self.mount_ns,
            run_as,
        })
    }

    fn reject_vm_options_without_kernel(&self) -> Result<(), CliError> {
        let given = [
            ("--initramfs", self.initramfs.is_some()),
            ("--cmdline", self.cmdline.is_some()),
            ("--cpus", self.cpus.is_some()),
            ("--memory", self.memory.is_some()),
            ("--memory-zone", !self.memory_zones.is_empty()),
            ("--numa", !self.numa.is_empty()),
            ("--serial", self.serial.is_some()),
            ("--console", self.console.is_some()),
            ("--device", !self.devices.is_empty()),
            ("--disk", !self.disks.is_empty()),
            ("--net", !self.net.is_empty()),
            ("--rng", self.rng.is_some()),
        ];
        match given.iter().find(|(_, present)| *present) {
            Some((flag, _)) => Err(CliError::VmOptionWithoutKernel(flag)),
            None => Ok(()),
        }
    }
}

/// `--api-socket PATH` or Cloud Hypervisor's `--api-socket path=PATH`.
fn parse_api_socket(input: &str) -> Result<PathBuf, CliError> {
    let path = input.strip_prefix("path=").unwrap_or(input);
    if path.is_empty() {
        return Err(CliError::EmptySocketPath);
    }
    Ok(PathBuf::from(path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ConsoleOutputMode, DEFAULT_MEMORY_SIZE};

    fn resolve(args: &[&str]) -> Result<Launch, CliError> {
        let cli = Cli::try_parse_from(std::iter::once("form-vmm").chain(args.iter().copied()))
            .expect("clap accepts the flags");
        cli.resolve()
    }

    /// The test binary itself: a file that surely exists, standing in for a kernel.
    fn some_file() -> String {
        std::env::current_exe().unwrap().display().to_string()
    }

    #[test]
    fn memory_zones_and_numa_nodes_from_the_command_line() {
        let kernel = some_file();
        let launch = resolve(&[
            "--kernel",
            &kernel,
            "--cpus",
            "boot=4",
            "--memory-zone",
            "id=mem0,size=1G,host_numa_node=0",
            "--memory-zone",
            "id=mem1,size=1G,host_numa_node=1,hugepages=on,hugepage_size=1G",
            "--numa",
            "guest_numa_id=0,cpus=[0-1],memory_zones=mem0,distances=1@21",
            "--numa",
            "guest_numa_id=1,cpus=[2,3],memory_zones=[mem1]",
        ])
        .unwrap();
        let vm = launch.vm.unwrap();
        assert_eq!(vm.memory.size, 2 << 30);
        let zones = vm.memory.zones();
        assert_eq!(zones.len(), 2);
        assert_eq!(
            (zones[0].id.as_str(), zones[0].host_numa_node),
            ("mem0", Some(0))
        );
        assert_eq!(zones[1].hugepage_size, Some(1 << 30));
        let numa = vm.numa.unwrap();
        assert_eq!(numa[1].cpus, Some(vec![2, 3]));
        assert_eq!(numa[0].distances.as_ref().unwrap()[0].distance, 21);

        // Refusals name what is wrong across the flags.
        let err = resolve(&[
            "--kernel",
            &kernel,
            "--cpus",
            "boot=4",
            "--memory-zone",
            "id=mem0,size=1G",
            "--numa",
            "guest_numa_id=0,cpus=0-2,memory_zones=mem0",
        ])
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "vCPU 3 is in no guest NUMA node; with numa every vCPU up to max_vcpus belongs to one"
        );
        let err = resolve(&[
            "--kernel",
            &kernel,
            "--memory",
            "size=4G",
            "--memory-zone",
            "id=mem0,size=1G",
        ])
        .unwrap_err();
        assert!(
            err.to_string().starts_with(
                "memory.size is 4294967296 bytes but the memory zones add up to 1073741824"
            ),
            "{err}"
        );
        let err = resolve(&["--kernel", &kernel, "--numa", "guest_numa_id=0,cpus=0"]).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("numa is given but memory has no zones"),
            "{err}"
        );
        let err =
            resolve(&["--api-socket", "/run/x.sock", "--numa", "guest_numa_id=0"]).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("--numa describes the VM to boot"),
            "{err}"
        );
    }

    #[test]
    fn full_command_line_fills_every_section() {
        let kernel = some_file();
        let launch = resolve(&[
            "--kernel",
            &kernel,
            "--cmdline",
            "console=ttyS0 -- hello",
            "--cpus",
            "boot=2,max=4",
            "--memory",
            "size=64M,shared=on",
            "--serial",
            "file=/tmp/com1.log",
            "--console",
            "off",
            "--api-socket",
            "path=/run/vm.sock",
            "--device",
            "path=/sys/bus/pci/devices/0000:01:00.0,id=gpu0",
            "--device",
            "path=/sys/bus/pci/devices/0000:02:00.0,x_nv_gpudirect_clique=1",
            "-vv",
        ])
        .unwrap();
        let vm = launch.vm.unwrap();
        assert_eq!(vm.payload.kernel.unwrap().display().to_string(), kernel);
        assert_eq!(
            vm.payload.cmdline.as_deref(),
            Some("console=ttyS0 -- hello")
        );
        assert_eq!((vm.cpus.boot_vcpus, vm.cpus.max_vcpus), (2, 4));
        assert_eq!(vm.memory.size, 64 << 20);
        assert!(vm.memory.shared);
        assert_eq!(vm.serial.mode, ConsoleOutputMode::File);
        assert_eq!(vm.console.mode, ConsoleOutputMode::Off);
        assert_eq!(vm.devices.len(), 2);
        assert_eq!(vm.devices[1].x_nv_gpudirect_clique, Some(1));
        assert_eq!(launch.api_socket, Some(PathBuf::from("/run/vm.sock")));
        assert_eq!(launch.log_level, log::LevelFilter::Debug);
    }

    #[test]
    fn virtio_flags_fill_disks_net_rng_and_console() {
        let kernel = some_file();
        let vm = resolve(&[
            "--kernel",
            &kernel,
            "--disk",
            "path=/img/root.raw",
            "--disk",
            "path=/img/seed.img,readonly=on,id=seed",
            "--net",
            "tap=tap0,mac=52:54:00:12:34:56",
            "--net",
            "fd=9",
            "--rng",
            "--serial",
            "off",
            "--console",
            "tty",
        ])
        .unwrap()
        .vm
        .unwrap();
        assert_eq!(vm.disks.len(), 2);
        assert_eq!(vm.disks[0].path, PathBuf::from("/img/root.raw"));
        assert!(vm.disks[1].readonly);
        assert_eq!(vm.disks[1].id.as_deref(), Some("seed"));
        assert_eq!(vm.net[0].tap.as_deref(), Some("tap0"));
        assert_eq!(vm.net[0].mac.as_deref(), Some("52:54:00:12:34:56"));
        assert_eq!(vm.net[1].fd, Some(9));
        assert_eq!(
            vm.rng.map(|r| r.src),
            Some(PathBuf::from(crate::config::DEFAULT_RNG_SOURCE))
        );
        assert_eq!(vm.console.mode, ConsoleOutputMode::Tty);

        let vm = resolve(&["--kernel", &kernel, "--rng", "src=/dev/hwrng"])
            .unwrap()
            .vm
            .unwrap();
        assert_eq!(vm.rng.map(|r| r.src), Some(PathBuf::from("/dev/hwrng")));
        let vm = resolve(&["--kernel", &kernel]).unwrap().vm.unwrap();
        assert!(vm.disks.is_empty() && vm.net.is_empty() && vm.rng.is_none());
    }

    #[test]
    fn virtio_flag_errors_name_the_flag() {
        let kernel = some_file();
        let cases = [
            (
                vec!["--disk", "file=/img"],
                "--disk: unknown option 'file'; valid options: path, readonly, direct, id, serial, boot, format",
            ),
            (
                vec!["--net", "tap=tap0,fd=3"],
                "--net tap=tap0,fd=3: give exactly one of tap=NAME (form-vmm opens or creates the tap) or fd=N (an open tap's descriptor)",
            ),
            (
                vec!["--net", "tap=tap0,mac=zz:54:00:12:34:56"],
                "--net tap=tap0,mac=zz:54:00:12:34:56: MAC address 'zz:54:00:12:34:56' is not six hex bytes separated by colons (e.g. 52:54:00:12:34:56)",
            ),
            (
                vec!["--rng", "src="],
                "--rng: option 'src' needs a value (src=...)",
            ),
            (
                vec!["--disk", "path=/a,id=x", "--net", "tap=t0,id=x"],
                "device id 'x' is used by more than one device",
            ),
            (
                vec!["--console", "tty"],
                "serial and console are both 'tty', but only one device can own the terminal; set one of them to off, null or file=PATH",
            ),
        ];
        for (flags, expected) in cases {
            let mut args = vec!["--kernel", kernel.as_str()];
            args.extend(flags);
            assert_eq!(resolve(&args).unwrap_err().to_string(), expected);
        }
    }

    #[test]
    fn virtio_flags_need_a_kernel() {
        for flags in [
            vec!["--disk", "path=/img"],
            vec!["--net", "tap=tap0"],
            vec!["--rng"],
        ] {
            let mut args = vec!["--api-socket", "/tmp/x.sock"];
            args.extend(flags.iter().copied());
            let err = resolve(&args).unwrap_err();
            assert!(
                matches!(err, CliError::VmOptionWithoutKernel(flag) if flag == flags[0]),
                "{err}"
            );
        }
    }

    #[test]
    fn a_boot_disk_boots_without_kernel() {
        let launch = resolve(&[
            "--disk",
            "path=/srv/seed.img,readonly=on",
            "--disk",
            "path=/srv/ubuntu.qcow2,boot=on",
            "--cmdline",
            "single",
        ])
        .unwrap();
        let vm = launch.vm.unwrap();
        assert_eq!(vm.payload.kernel, None);
        assert_eq!(vm.payload.cmdline.as_deref(), Some("single"));
        assert_eq!(
            vm.boot_disk().unwrap().path,
            PathBuf::from("/srv/ubuntu.qcow2")
        );
        let err = resolve(&["--disk", "path=/a,boot=on", "--disk", "path=/b,boot=on"])
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "disks /a and /b both have boot=on; at most one disk boots the VM"
        );
        let err = resolve(&["--kernel", &some_file(), "--disk", "path=/a,boot=on"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("both say what to boot"), "{err}");
        let err = resolve(&["--disk", "path=/a,boot=on", "--initramfs", "/i"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("brings its own initrd"), "{err}");
        // Without boot=on, a disk still needs --kernel.
        let err = resolve(&["--disk", "path=/a"]).unwrap_err();
        assert!(
            matches!(err, CliError::VmOptionWithoutKernel("--disk")),
            "{err}"
        );
    }

    #[test]
    fn defaults_match_cloud_hypervisor() {
        let launch = resolve(&["--kernel", &some_file()]).unwrap();
        let vm = launch.vm.unwrap();
        assert_eq!((vm.cpus.boot_vcpus, vm.cpus.max_vcpus), (1, 1));
        assert_eq!(vm.memory.size, DEFAULT_MEMORY_SIZE);
        assert_eq!(vm.serial.mode, ConsoleOutputMode::Tty);
        assert_eq!(vm.console.mode, ConsoleOutputMode::Off);
        assert_eq!(launch.api_socket, None);
        assert_eq!(launch.log_level, log::LevelFilter::Warn);
    }

    #[test]
    fn api_socket_alone_waits_for_vm_create() {
        let launch = resolve(&["--api-socket", "/tmp/x.sock"]).unwrap();
        assert_eq!(launch.vm, None);
        assert_eq!(launch.api_socket, Some(PathBuf::from("/tmp/x.sock")));
    }

    #[test]
    fn nothing_to_do_is_an_error() {
        assert_eq!(
            resolve(&[]).unwrap_err().to_string(),
            "nothing to do: give --kernel to boot a VM now, or --api-socket to wait for vm.create"
        );
    }

    #[test]
    fn vm_options_without_kernel_are_an_error() {
        let err = resolve(&["--api-socket", "/tmp/x.sock", "--memory", "size=1G"]).unwrap_err();
        assert!(
            matches!(err, CliError::VmOptionWithoutKernel("--memory")),
            "{err}"
        );
    }

    #[test]
    fn option_string_errors_name_the_flag() {
        let kernel = some_file();
        let cases = [
            (
                vec!["--cpus", "boot=0"],
                "--cpus boot=0: at least one vCPU is required",
            ),
            (
                vec!["--cpus", "boot=8,max=2"],
                "--cpus boot=8,max=2: boot vCPUs (8) exceed max vCPUs (2)",
            ),
            (
                vec!["--memory", "size=0"],
                "--memory size=0: memory size must be greater than zero",
            ),
            (
                vec!["--memory", "sizee=1G"],
                "--memory: unknown option 'sizee'; valid options: size, shared, hugepages, hugepage_size, host_numa_node, dma_map",
            ),
            (
                vec!["--device", "id=gpu0"],
                "--device: option 'path' is required (path=...)",
            ),
        ];
        for (flags, expected) in cases {
            let mut args = vec!["--kernel", kernel.as_str()];
            args.extend(flags);
            assert_eq!(resolve(&args).unwrap_err().to_string(), expected);
        }
    }

    #[test]
    fn missing_kernel_file_is_reported() {
        let err = resolve(&["--kernel", "/nonexistent/vmlinux"]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "kernel /nonexistent/vmlinux: No such file or directory (os error 2)"
        );
    }

    #[test]
    fn empty_api_socket_is_rejected() {
        assert!(matches!(
            resolve(&["--api-socket", "path="]).unwrap_err(),
            CliError::EmptySocketPath
        ));
    }
}
