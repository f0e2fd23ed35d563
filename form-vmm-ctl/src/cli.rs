//! The command line: global connection options, the commands and their arguments.
//!
//! Values the service would refuse anyway (PCI addresses, sizes, counts) are checked
//! here too, so a typo fails at once with exit status 2 and a message naming the flag.

use std::path::PathBuf;

use clap::{ArgGroup, Args, Parser, Subcommand};
use form_service_api::types::{HugepageSize, NumaMode, CONSOLE_MAX_BYTES};
use form_service_api::{parse_size, Bdf};

use crate::options::{parse_disk, parse_net, DiskArg, NetArg};

/// Where vmm-service listens unless told otherwise.
pub const DEFAULT_SOCKET: &str = "/run/form-vmm/service.sock";

/// The request timeout unless told otherwise: creating a VM with large memory and GPUs
/// pins and maps all of guest RAM, which takes a while on big hosts.
pub const DEFAULT_TIMEOUT_SECS: u64 = 300;
/// What `create` waits on top of [`DEFAULT_TIMEOUT_SECS`] per GiB of guest RAM: the
/// service's own deadline for pinning it grows by as much (vmm-service's
/// `PIN_PER_GIB`), so the CLI does not give up on a start the service still waits
/// for.
pub const TIMEOUT_PER_GIB_SECS: u64 = 3;

/// Guest memory is mapped in 4 KiB pages.
const PAGE_SIZE: u64 = 4096;

const EXAMPLES: &str = "\
Examples:
  form-vmm-ctl gpu list
  form-vmm-ctl doctor --memory 64G
  form-vmm-ctl create --name vm1 --kernel /var/lib/form/vmlinux --memory 16G --cpus 8 \\
      --gpu 0000:01:00.0 --boot
  form-vmm-ctl create --name train-2 --kernel /var/lib/form/vmlinux --memory 256G \\
      --gpu-model h100 --gpu-count 2 --nvidia-gpudirect-clique 1
  form-vmm-ctl list
  form-vmm-ctl --json info vm1 | jq .state
  form-vmm-ctl --url https://gpu-host-3:7443 --token-file /etc/form/token \\
      --ca-file /etc/form/ca.pem list

Exit status: 0 ok, 1 the service failed the request (or doctor found an error),
2 usage or invalid request, 3 cannot reach the service, 4 no such VM or GPU,
5 conflict (name taken, GPU in use, wrong state), 6 token refused.";

#[derive(Debug, Parser)]
#[command(
    name = "form-vmm-ctl",
    version,
    about = "Manage GPU virtual machines through the Formation VMM service (vmm-service)",
    after_help = EXAMPLES
)]
pub struct Cli {
    #[command(flatten)]
    pub connection: ConnectionArgs,

    /// Print the service's JSON answer instead of tables (for scripts).
    #[arg(long, global = true, help_heading = "Output")]
    pub json: bool,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
#[command(next_help_heading = "Connection")]
pub struct ConnectionArgs {
    /// The service's unix socket (ignored when --url is given).
    #[arg(
        long,
        global = true,
        value_name = "PATH",
        env = "FORM_VMM_SOCKET",
        default_value = DEFAULT_SOCKET
    )]
    pub socket: PathBuf,

    /// Talk to the service over TCP instead: https://HOST:PORT (needs a token;
    /// http:// only to this host's loopback unless --allow-plain-http).
    #[arg(long, global = true, value_name = "URL", env = "FORM_VMM_URL")]
    pub url: Option<String>,

    /// CA certificates (PEM) to trust for an https:// --url, instead of the
    /// system's.
    #[arg(long, global = true, value_name = "FILE", env = "FORM_VMM_CA_FILE")]
    pub ca_file: Option<PathBuf>,

    /// Send the token over plain http:// to a host other than loopback (anyone on
    /// the network path can read it and run VMs).
    #[arg(long, global = true)]
    pub allow_plain_http: bool,

    /// File holding the bearer token for --url (else the token is taken from the
    /// FORM_VMM_TOKEN environment variable).
    #[arg(long, global = true, value_name = "FILE", env = "FORM_VMM_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,

    /// Seconds to wait for the service's answer [default: 300, and for create 3 more
    /// per GiB of --memory].
    #[arg(
        long,
        global = true,
        value_name = "SECONDS",
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub timeout: Option<u64>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a VM (and boot it with --boot).
    #[command(after_help = "Examples:
  form-vmm-ctl create --name vm1 --kernel /var/lib/form/vmlinux --gpu 0000:01:00.0 --boot
  form-vmm-ctl create --name vm2 --kernel ./bzImage --initramfs ./initrd.img \\
      --cmdline 'console=ttyS0 root=/dev/vda' --cpus 16 --memory 128G \\
      --gpu-model h100 --gpu-count 4 --nvidia-gpudirect-clique 2
  form-vmm-ctl create --name gpu-1 --kernel ./vmlinux --cmdline 'console=ttyS0 root=/dev/vda1' \\
      --memory 32G --gpu 0000:01:00.0 --disk /var/lib/images/jammy.raw --net bridge=br0 \\
      --ssh-key ~/.ssh/id_ed25519.pub --hostname gpu-1 --boot")]
    Create(Box<CreateArgs>),
    /// List the VMs.
    List,
    /// Show one VM: state, configuration, GPUs, process, last exit.
    Info(VmName),
    /// Boot a created or stopped VM.
    Boot(VmName),
    /// Shut a VM down (its GPUs go back to the host unless created with --no-unbind-on-shutdown).
    Shutdown(VmName),
    /// Reboot a running VM.
    Reboot(VmName),
    /// Delete a VM, shutting it down first if it runs.
    Delete(VmName),
    /// Print a VM's serial console log as the guest wrote it: boot messages, kernel
    /// panics, cloud-init's first-boot output (addresses, SSH host key fingerprints).
    #[command(after_help = "Examples:
  form-vmm-ctl console vm1
  form-vmm-ctl console vm1 --tail 1M | grep -a 'ci-info'
  form-vmm-ctl console vm1 -f")]
    Console(ConsoleArgs),
    /// Give a VM another GPU (with its IOMMU group) or companion device.
    #[command(after_help = "Examples:
  form-vmm-ctl add-device vm1 --gpu 0000:02:00.0
  form-vmm-ctl add-device vm1 --gpu-model a100 --gpu-count 2
  form-vmm-ctl add-device vm1 --device 0000:1b:00.0   # a NIC (class allowed by the service)")]
    AddDevice(AddDeviceArgs),
    /// Take a GPU from a VM, by PCI address or by its device id (gpu0, gpu1, ...).
    #[command(after_help = "Examples:
  form-vmm-ctl remove-device vm1 --gpu 0000:02:00.0
  form-vmm-ctl remove-device vm1 --id gpu1
  form-vmm-ctl remove-device vm1 --id gpu1 --force   # even if the guest keeps it")]
    RemoveDevice(RemoveDeviceArgs),
    /// The host's GPUs: list them, bind them to vfio-pci, give them back.
    Gpu {
        #[command(subcommand)]
        action: GpuCommand,
    },
    /// Every PCI function a VM could get (GPUs, NVSwitches, NICs, NVMe, ...).
    Device {
        #[command(subcommand)]
        action: DeviceCommand,
    },
    /// Check whether the host can pass GPUs to VMs (exit status 1 on any error finding).
    Doctor {
        /// Guest memory to check the locked-memory limit and hugepages against (e.g. 64G).
        #[arg(long, value_name = "SIZE", value_parser = parse_memory)]
        memory: Option<u64>,
    },
}

#[derive(Debug, Args)]
pub struct VmName {
    /// The VM's name.
    pub name: String,
}

#[derive(Debug, Args)]
pub struct ConsoleArgs {
    /// The VM's name.
    pub name: String,

    /// How much of the log's end to print: bytes, or a size such as 512K or 1M
    /// (at most 4M) [default: the service's, 64K].
    #[arg(long, value_name = "BYTES", value_parser = parse_tail)]
    pub tail: Option<u64>,

    /// Keep printing what the guest writes until interrupted or the VM stops.
    #[arg(short, long)]
    pub follow: bool,
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("gpus").args(["gpu", "gpu_model"]).multiple(false)))]
pub struct CreateArgs {
    /// The VM's name: 1 to 63 of A-Z a-z 0-9 _ . - , starting with a letter or digit.
    #[arg(long)]
    pub name: String,

    /// Guest kernel (ELF vmlinux or bzImage) on the service's host; a relative path is
    /// taken from the current directory. Without it, give --image.
    #[arg(long, value_name = "PATH", required_unless_present = "image")]
    pub kernel: Option<PathBuf>,

    /// A cloud image (raw or qcow2) on the service's host to boot as it is: its
    /// first disk, started from the default entry of its own grub.cfg or BLS
    /// entries (or its newest /boot/vmlinuz-*), read again at every start, so a
    /// kernel the guest installs is the one it boots next. Instead of --kernel.
    #[arg(long, value_name = "PATH", conflicts_with_all = ["kernel", "initramfs"])]
    pub image: Option<PathBuf>,

    /// Initramfs for the guest kernel.
    #[arg(long, value_name = "PATH")]
    pub initramfs: Option<PathBuf>,

    /// Kernel command line.
    #[arg(long, value_name = "CMDLINE", allow_hyphen_values = true)]
    pub cmdline: Option<String>,

    /// Virtual CPUs [default: 1].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub cpus: Option<u32>,

    /// Guest memory: 512M, 16G, 1T or bytes; a multiple of 4 KiB [default: 512M].
    #[arg(long, value_name = "SIZE", value_parser = parse_memory)]
    pub memory: Option<u64>,

    /// A GPU to pass through, by PCI address (0000:01:00.0, 01:00.0) or sysfs path;
    /// repeat for more.
    #[arg(long, value_name = "BDF", value_parser = parse_bdf)]
    pub gpu: Vec<Bdf>,

    /// Pick free GPUs whose name contains this (case-insensitive, e.g. h100).
    #[arg(long, value_name = "MODEL")]
    pub gpu_model: Option<String>,

    /// How many GPUs of --gpu-model [default: 1].
    #[arg(
        long,
        value_name = "N",
        requires = "gpu_model",
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub gpu_count: Option<u32>,

    /// With --gpu-model: also give the VM every NVSwitch of the host (HGX full
    /// passthrough; run nvidia-fabricmanager in the guest).
    #[arg(long, requires = "gpu_model")]
    pub nvswitches: bool,

    /// With --gpu-model: also give the VM N NICs, behind its GPUs' PCIe switches
    /// first, then on their NUMA node (GPUDirect RDMA).
    #[arg(
        long,
        value_name = "N",
        requires = "gpu_model",
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub nic_count: Option<u32>,

    /// Only NICs whose name contains this (case-insensitive, e.g. ConnectX-7).
    #[arg(long, value_name = "MODEL", requires = "nic_count")]
    pub nic_model: Option<String>,

    /// A companion device (NIC, NVMe drive, NVSwitch) by PCI address or sysfs path,
    /// with its IOMMU group; repeat for more. The service must allow its class
    /// (vmm-service serve --allow-class).
    #[arg(long, value_name = "BDF", value_parser = parse_bdf)]
    pub device: Vec<Bdf>,

    /// Enable NVIDIA GPUDirect peer-to-peer in the guest with this clique id (0-15).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u8).range(0..=15))]
    pub nvidia_gpudirect_clique: Option<u8>,

    /// Leave the GPUs on vfio-pci when the VM stops instead of returning them to
    /// their host drivers.
    #[arg(long)]
    pub no_unbind_on_shutdown: bool,

    /// Do not bind the VM's memory and vCPUs to its GPUs' NUMA node (by default the
    /// service does when all its GPUs share a node of a multi-node host).
    #[arg(long)]
    pub no_numa_affinity: bool,

    /// Back guest memory with huge pages; the service checks the host's pools
    /// (per NUMA node when bound) before binding anything.
    #[arg(long)]
    pub hugepages: bool,

    /// Huge page size, 2M or 1G [default: the host's default size].
    #[arg(long, value_name = "2M|1G", requires = "hugepages")]
    pub hugepage_size: Option<HugepageSize>,

    /// With GPUs on several host NUMA nodes: mirror (one guest node per host node,
    /// the default) or flat (one guest node, bound nowhere).
    #[arg(long, value_name = "mirror|flat")]
    pub numa: Option<NumaMode>,

    /// With mirror: vCPUs of each guest node, lowest host node first (e.g. 24,8)
    /// [default: in proportion to the GPUs per node].
    #[arg(long, value_name = "N,N...", value_delimiter = ',', value_parser = clap::value_parser!(u32).range(1..))]
    pub numa_vcpus: Vec<u32>,

    /// A raw disk image on the service's host, as PATH or PATH,readonly=on; repeat
    /// for more (the guest sees them in order: /dev/vda, /dev/vdb, ...).
    #[arg(long, value_name = "PATH[,readonly=on]", value_parser = parse_disk, help_heading = "Disks and networks")]
    pub disk: Vec<DiskArg>,

    /// A network interface on a tap form-vmm creates, joined to bridge BR when
    /// given, with MAC when given; repeat for more (`--net` alone: an unattached tap).
    #[arg(
        long,
        value_name = "[bridge=BR][,mac=MAC]",
        num_args = 0..=1,
        default_missing_value = "",
        value_parser = parse_net,
        help_heading = "Disks and networks"
    )]
    pub net: Vec<NetArg>,

    /// An SSH public key file (.pub or authorized_keys) read here; its keys are
    /// given to the guest through cloud-init; repeat for more.
    #[arg(long, value_name = "FILE", help_heading = "cloud-init")]
    pub ssh_key: Vec<PathBuf>,

    /// The guest's host name (letters, digits, hyphens) [default: the VM's name].
    #[arg(long, value_name = "NAME", help_heading = "cloud-init")]
    pub hostname: Option<String>,

    /// A user to create in the guest with the SSH keys and passwordless sudo
    /// [default: the keys go to the image's default user].
    #[arg(long, value_name = "NAME", help_heading = "cloud-init")]
    pub user: Option<String>,

    /// A package for cloud-init to install on first boot (a name, or NAME=VERSION as
    /// the guest's package manager takes it); repeat for more.
    #[arg(long, value_name = "NAME", value_parser = parse_package, help_heading = "cloud-init")]
    pub package: Vec<String>,

    /// A shell command for cloud-init to run once, on first boot, after the packages
    /// are installed; repeat for more (run in order).
    #[arg(long, value_name = "CMD", value_parser = parse_run, help_heading = "cloud-init")]
    pub run: Vec<String>,

    /// A user-data file read here. Alone it is given to cloud-init as it is; with
    /// --ssh-key, --user, --package or --run it follows their cloud-config in a MIME
    /// archive, and must begin with #cloud-config (merged, lists appended), #!,
    /// #include, #cloud-boothook or ## template: jinja.
    #[arg(long, value_name = "FILE", help_heading = "cloud-init")]
    pub user_data: Option<PathBuf>,

    /// Boot the VM right after creating it.
    #[arg(long)]
    pub boot: bool,
}

impl CreateArgs {
    /// Whether any cloud-init option was given, so the VM gets a seed disk.
    pub fn wants_cloud_init(&self) -> bool {
        !self.ssh_key.is_empty()
            || self.hostname.is_some()
            || self.user.is_some()
            || !self.package.is_empty()
            || !self.run.is_empty()
            || self.user_data.is_some()
    }
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("what").args(["gpu", "gpu_model", "device"]).required(true)))]
pub struct AddDeviceArgs {
    /// The VM's name.
    pub name: String,

    /// A companion device (NIC, NVMe drive, NVSwitch) by PCI address; repeat for
    /// more (one hotplug each, with its IOMMU group).
    #[arg(long, value_name = "BDF", value_parser = parse_bdf)]
    pub device: Vec<Bdf>,

    /// The GPU, by PCI address or sysfs path.
    #[arg(long, value_name = "BDF", value_parser = parse_bdf)]
    pub gpu: Option<Bdf>,

    /// Pick free GPUs whose name contains this instead.
    #[arg(long, value_name = "MODEL")]
    pub gpu_model: Option<String>,

    /// How many GPUs of --gpu-model [default: 1].
    #[arg(
        long,
        value_name = "N",
        requires = "gpu_model",
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub gpu_count: Option<u32>,
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("which").args(["gpu", "id", "device"]).required(true)))]
pub struct RemoveDeviceArgs {
    /// The VM's name.
    pub name: String,

    /// Any function the VM holds, by PCI address: its whole unit leaves (the GPU or
    /// companion it came with, and that one's IOMMU group).
    #[arg(long, value_name = "BDF", value_parser = parse_bdf)]
    pub device: Option<Bdf>,

    /// The GPU's PCI address.
    #[arg(long, value_name = "BDF", value_parser = parse_bdf)]
    pub gpu: Option<Bdf>,

    /// The GPU's device id in the VM, as `info` shows it (gpu0, gpu1, ...).
    #[arg(long, value_name = "ID")]
    pub id: Option<String>,

    /// Detach the GPU even if the guest does not eject it within 10 s (its driver
    /// loses the device mid-use). Without it, a guest that keeps the GPU keeps it
    /// and the command fails with eject_timeout.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Subcommand)]
pub enum DeviceCommand {
    /// List every assignable PCI function with class, IOMMU group, NUMA node, PCIe
    /// switch, driver, reset method and owner.
    List,
}

#[derive(Debug, Subcommand)]
pub enum GpuCommand {
    /// List the host's GPUs and accelerators, with driver, IOMMU group, NUMA node and owner.
    List,
    /// Bind a GPU's whole IOMMU group to vfio-pci.
    Bind {
        /// PCI address (0000:01:00.0, 01:00.0) or sysfs path.
        #[arg(value_name = "BDF", value_parser = parse_bdf)]
        device: Bdf,
        /// Also bind the console GPU, or a group shared with devices the host uses.
        #[arg(long)]
        force: bool,
    },
    /// Give a GPU's IOMMU group back to the drivers it had before binding.
    Unbind {
        /// PCI address (0000:01:00.0, 01:00.0) or sysfs path.
        #[arg(value_name = "BDF", value_parser = parse_bdf)]
        device: Bdf,
    },
}

/// A PCI address as operators type it, checked with the service's own parser.
pub fn parse_bdf(text: &str) -> Result<Bdf, String> {
    Bdf::from_user_input(text).map_err(|e| e.to_string())
}

/// A package name as the service takes it: something, without white space (which
/// would split it into several names in the guest's package manager).
pub fn parse_package(text: &str) -> Result<String, String> {
    if text.is_empty() {
        return Err("give a package name, e.g. htop or nginx=1.24*".to_string());
    }
    if text.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "'{}' holds white space or control characters; give one package per --package",
            text.escape_default()
        ));
    }
    Ok(text.to_string())
}

/// A first-boot command. A blank one is most likely a shell variable that expanded
/// to nothing, and the service refuses empty ones anyway.
pub fn parse_run(text: &str) -> Result<String, String> {
    if text.trim().is_empty() {
        return Err("give a shell command, e.g. --run 'nvidia-smi -pm 1'".to_string());
    }
    Ok(text.to_string())
}

/// A console tail: the service's size syntax, up to what one answer of the service holds.
pub fn parse_tail(text: &str) -> Result<u64, String> {
    let bytes = parse_size(text)?;
    if bytes > CONSOLE_MAX_BYTES {
        return Err(format!(
            "'{text}' is more than the {} MiB the service answers at once",
            CONSOLE_MAX_BYTES >> 20
        ));
    }
    Ok(bytes)
}

/// A guest memory size: the service's size syntax, non-zero and page-aligned.
pub fn parse_memory(text: &str) -> Result<u64, String> {
    let bytes = parse_size(text)?;
    if bytes == 0 {
        return Err(format!("'{text}': memory must be more than zero"));
    }
    if bytes % PAGE_SIZE != 0 {
        return Err(format!(
            "'{text}' is not a multiple of 4 KiB; use e.g. 512M or 16G"
        ));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::error::ErrorKind;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("form-vmm-ctl").chain(args.iter().copied()))
    }

    fn bdf(text: &str) -> Bdf {
        text.parse().unwrap()
    }

    #[test]
    fn the_command_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn create_boots_an_image_instead_of_a_kernel() {
        let cli = parse(&[
            "create",
            "--name",
            "c1",
            "--image",
            "/img/u.qcow2",
            "--disk",
            "/img/data.raw",
        ])
        .unwrap();
        let Command::Create(args) = cli.command else {
            panic!("not create")
        };
        let config = crate::commands::create_config(&args).unwrap();
        assert_eq!(config.kernel, None);
        let disks: Vec<(&str, bool)> = config
            .disks
            .iter()
            .map(|d| (d.path.as_str(), d.boot))
            .collect();
        assert_eq!(disks, [("/img/u.qcow2", true), ("/img/data.raw", false)]);
        for wrong in [
            &["create", "--name", "c1"][..],
            &["create", "--name", "c1", "--image", "/i", "--kernel", "/k"],
            &[
                "create",
                "--name",
                "c1",
                "--image",
                "/i",
                "--initramfs",
                "/r",
            ],
        ] {
            let err = parse(wrong).unwrap_err();
            assert!(
                matches!(
                    err.kind(),
                    ErrorKind::MissingRequiredArgument | ErrorKind::ArgumentConflict
                ),
                "{wrong:?}: {err}"
            );
        }
    }

    #[test]
    fn create_takes_every_option() {
        let cli = parse(&[
            "create",
            "--name",
            "vm1",
            "--kernel",
            "/k/vmlinux",
            "--initramfs",
            "/k/initrd",
            "--cmdline",
            "-- console=ttyS0",
            "--cpus",
            "8",
            "--memory",
            "16G",
            "--gpu",
            "01:00.0",
            "--gpu",
            "/sys/bus/pci/devices/0000:02:00.0",
            "--nvidia-gpudirect-clique",
            "3",
            "--no-unbind-on-shutdown",
            "--no-numa-affinity",
            "--hugepages",
            "--hugepage-size",
            "1G",
            "--numa",
            "mirror",
            "--numa-vcpus",
            "6,2",
            "--boot",
        ])
        .unwrap();
        let Command::Create(args) = cli.command else {
            panic!("not create: {:?}", cli.command)
        };
        assert_eq!(args.name, "vm1");
        assert_eq!(args.kernel, Some(PathBuf::from("/k/vmlinux")));
        assert_eq!(args.initramfs, Some(PathBuf::from("/k/initrd")));
        assert_eq!(args.cmdline.as_deref(), Some("-- console=ttyS0"));
        assert_eq!(args.cpus, Some(8));
        assert_eq!(args.memory, Some(16 << 30));
        assert_eq!(args.gpu, vec![bdf("0000:01:00.0"), bdf("0000:02:00.0")]);
        assert_eq!(args.nvidia_gpudirect_clique, Some(3));
        assert!(args.no_unbind_on_shutdown && args.no_numa_affinity && args.boot);
        assert!(args.hugepages);
        assert_eq!(args.hugepage_size, Some(HugepageSize::G1));
        assert_eq!(args.numa, Some(NumaMode::Mirror));
        assert_eq!(args.numa_vcpus, [6, 2]);
        for (flags, wrong) in [
            (&["--hugepages", "--hugepage-size", "4M"][..], "4M"),
            (&["--hugepage-size", "2M"][..], "--hugepages"),
            (&["--numa", "split"][..], "mirror or flat"),
            (&["--numa-vcpus", "4,0"][..], "0"),
        ] {
            let mut argv = vec!["create", "--name", "v", "--kernel", "/k"];
            argv.extend_from_slice(flags);
            let err = parse(&argv).unwrap_err().to_string();
            assert!(err.contains(wrong), "{flags:?}: {err}");
        }
    }

    #[test]
    fn create_takes_disks_networks_and_cloud_init_options() {
        let cli = parse(&[
            "create",
            "--name",
            "vm1",
            "--kernel",
            "/k",
            "--disk",
            "/img/root.raw",
            "--disk",
            "data.raw,readonly=on",
            "--net",
            "bridge=br0",
            "--net",
            "--net",
            "mac=52:54:00:12:34:56",
            "--ssh-key",
            "/keys/a.pub",
            "--ssh-key",
            "b.pub",
            "--user-data",
            "ud.yaml",
            "--hostname",
            "gpu-1",
            "--user",
            "ops",
            "--package",
            "htop",
            "--run",
            "nvidia-smi -pm 1",
            "--package",
            "nginx=1.24*",
            "--run",
            "echo 'a: b' >> /etc/motd",
            "--boot",
        ])
        .unwrap();
        let Command::Create(args) = cli.command else {
            panic!("not create: {:?}", cli.command)
        };
        assert_eq!(args.package, ["htop", "nginx=1.24*"]);
        assert_eq!(args.run, ["nvidia-smi -pm 1", "echo 'a: b' >> /etc/motd"]);
        assert_eq!(
            args.disk,
            vec![
                DiskArg {
                    path: "/img/root.raw".into(),
                    readonly: false
                },
                DiskArg {
                    path: "data.raw".into(),
                    readonly: true
                }
            ]
        );
        assert_eq!(
            args.net,
            vec![
                NetArg {
                    bridge: Some("br0".into()),
                    mac: None
                },
                NetArg::default(),
                NetArg {
                    bridge: None,
                    mac: Some("52:54:00:12:34:56".into())
                },
            ]
        );
        assert_eq!(
            args.ssh_key,
            vec![PathBuf::from("/keys/a.pub"), PathBuf::from("b.pub")]
        );
        assert_eq!(args.user_data, Some(PathBuf::from("ud.yaml")));
        assert_eq!(args.hostname.as_deref(), Some("gpu-1"));
        assert_eq!(args.user.as_deref(), Some("ops"));
        assert!(args.boot && args.wants_cloud_init());
    }

    #[test]
    fn create_refuses_bad_disk_net_package_and_run_values() {
        for (flag, value, says) in [
            ("--disk", "/a,readonly=perhaps", "readonly=on"),
            ("--disk", "/a,cache=none", "not a disk option"),
            ("--net", "bridge=has space", "not an interface name"),
            ("--net", "mac=52:54:00", "not a MAC address"),
            ("--net", "tap=tap0", "bridge=BRIDGE"),
            ("--package", "", "give a package name"),
            ("--package", "htop jq", "one package per --package"),
            ("--run", "", "give a shell command"),
            ("--run", " \t", "give a shell command"),
        ] {
            let err = parse(&["create", "--name", "a", "--kernel", "/k", flag, value]).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::ValueValidation, "{flag} {value}");
            assert!(err.to_string().contains(says), "{flag} {value}: {err}");
            assert!(err.to_string().contains(flag), "{flag} {value}: {err}");
            assert_eq!(err.exit_code(), 2, "{flag} {value}");
        }
    }

    #[test]
    fn packages_or_commands_alone_ask_for_cloud_init() {
        for extra in [["--package", "htop"], ["--run", "true"]] {
            let args: Vec<&str> = ["create", "--name", "a", "--kernel", "/k"]
                .iter()
                .chain(&extra)
                .copied()
                .collect();
            let Command::Create(args) = parse(&args).unwrap().command else {
                panic!()
            };
            assert!(args.wants_cloud_init(), "{extra:?}");
        }
    }

    #[test]
    fn create_by_model_and_defaults() {
        let cli = parse(&[
            "create",
            "--name",
            "t",
            "--kernel",
            "k",
            "--gpu-model",
            "h100",
            "--gpu-count",
            "2",
        ])
        .unwrap();
        let Command::Create(args) = cli.command else {
            panic!()
        };
        assert_eq!(args.gpu_model.as_deref(), Some("h100"));
        assert_eq!(args.gpu_count, Some(2));
        assert!(args.gpu.is_empty());
        assert_eq!((args.cpus, args.memory), (None, None));
        assert!(!args.boot && !args.no_unbind_on_shutdown && !args.no_numa_affinity);
        assert!(args.disk.is_empty() && args.net.is_empty() && !args.wants_cloud_init());
    }

    #[test]
    fn create_refuses_bad_input() {
        let base = ["create", "--name", "vm1", "--kernel", "/k"];
        for (extra, kind, says) in [
            (
                &["--gpu", "1:0.0"][..],
                ErrorKind::ValueValidation,
                "not a PCI address",
            ),
            (
                &["--gpu", "0000:01:20.0"],
                ErrorKind::ValueValidation,
                "out of range",
            ),
            (
                &["--gpu", "/etc/passwd"],
                ErrorKind::ValueValidation,
                "not a PCI device path",
            ),
            (
                &["--gpu-count", "2"],
                ErrorKind::MissingRequiredArgument,
                "--gpu-model",
            ),
            (
                &["--gpu", "01:00.0", "--gpu-model", "h100"],
                ErrorKind::ArgumentConflict,
                "--gpu-model",
            ),
            (
                &["--memory", "lots"],
                ErrorKind::ValueValidation,
                "not a size",
            ),
            (
                &["--memory", "12Q"],
                ErrorKind::ValueValidation,
                "unknown unit",
            ),
            (&["--memory", "1000"], ErrorKind::ValueValidation, "4 KiB"),
            (
                &["--memory", "0"],
                ErrorKind::ValueValidation,
                "more than zero",
            ),
            (&["--cpus", "0"], ErrorKind::ValueValidation, "--cpus"),
            (
                &["--nvidia-gpudirect-clique", "16"],
                ErrorKind::ValueValidation,
                "16",
            ),
            (
                &["--gpu-model", "h100", "--gpu-count", "0"],
                ErrorKind::ValueValidation,
                "0",
            ),
        ] {
            let args: Vec<&str> = base.iter().chain(extra).copied().collect();
            let err = parse(&args).unwrap_err();
            assert_eq!(err.kind(), kind, "{extra:?}: {err}");
            assert!(err.to_string().contains(says), "{extra:?}: {err}");
            assert_eq!(err.exit_code(), 2, "usage errors exit 2");
        }
        let err = parse(&["create", "--kernel", "/k"]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::MissingRequiredArgument);
    }

    #[test]
    fn memory_sizes() {
        assert_eq!(parse_memory("512M"), Ok(512 << 20));
        assert_eq!(parse_memory("16GiB"), Ok(16 << 30));
        assert_eq!(parse_memory("1T"), Ok(1 << 40));
        assert_eq!(parse_memory("8192"), Ok(8192));
        assert!(parse_memory("1.5G").is_err(), "fractions are not sizes");
        assert!(parse_memory("-1G").is_err());
        assert!(parse_memory("99999999999T").is_err());
    }

    #[test]
    fn vm_commands_take_a_name() {
        for command in ["info", "boot", "shutdown", "reboot", "delete"] {
            let cli = parse(&[command, "vm7"]).unwrap();
            let name = match cli.command {
                Command::Info(v)
                | Command::Boot(v)
                | Command::Shutdown(v)
                | Command::Reboot(v)
                | Command::Delete(v) => v.name,
                other => panic!("{command} parsed as {other:?}"),
            };
            assert_eq!(name, "vm7");
            assert_eq!(
                parse(&[command]).unwrap_err().kind(),
                ErrorKind::MissingRequiredArgument,
                "{command} without a name"
            );
        }
        assert!(matches!(parse(&["list"]).unwrap().command, Command::List));
    }

    #[test]
    fn console_takes_a_tail_and_follow() {
        let cli = parse(&["console", "vm1", "--tail", "1M", "-f"]).unwrap();
        let Command::Console(args) = cli.command else {
            panic!("not console: {:?}", cli.command)
        };
        assert_eq!((args.name.as_str(), args.tail), ("vm1", Some(1 << 20)));
        assert!(args.follow);
        let Command::Console(args) = parse(&["console", "vm1", "--follow"]).unwrap().command else {
            panic!()
        };
        assert_eq!((args.tail, args.follow), (None, true));
        let Command::Console(args) = parse(&["console", "vm1", "--tail", "0"]).unwrap().command
        else {
            panic!()
        };
        assert_eq!((args.tail, args.follow), (Some(0), false));
        for (tail, says) in [("5M", "more than the 4 MiB"), ("x", "not a size")] {
            let err = parse(&["console", "vm1", "--tail", tail]).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::ValueValidation, "{tail}");
            assert!(err.to_string().contains(says), "{tail}: {err}");
        }
        assert!(parse(&["console", "vm1", "--tail", "4M"]).is_ok());
        assert_eq!(
            parse(&["console"]).unwrap_err().kind(),
            ErrorKind::MissingRequiredArgument
        );
    }

    #[test]
    fn device_commands() {
        let cli = parse(&["add-device", "vm1", "--gpu", "0000:03:00.0"]).unwrap();
        let Command::AddDevice(args) = cli.command else {
            panic!()
        };
        assert_eq!(
            (args.name.as_str(), args.gpu),
            ("vm1", Some(bdf("03:00.0")))
        );
        assert_eq!(
            parse(&["add-device", "vm1"]).unwrap_err().kind(),
            ErrorKind::MissingRequiredArgument
        );
        assert_eq!(
            parse(&["add-device", "vm1", "--gpu", "03:00"])
                .unwrap_err()
                .kind(),
            ErrorKind::ValueValidation
        );

        let cli = parse(&["remove-device", "vm1", "--id", "gpu1"]).unwrap();
        let Command::RemoveDevice(args) = cli.command else {
            panic!()
        };
        assert_eq!((args.gpu, args.id.as_deref()), (None, Some("gpu1")));
        let cli = parse(&["remove-device", "vm1", "--gpu", "01:00.0"]).unwrap();
        let Command::RemoveDevice(args) = cli.command else {
            panic!()
        };
        assert_eq!(args.gpu, Some(bdf("01:00.0")));
        assert!(!args.force);
        let cli = parse(&["remove-device", "vm1", "--id", "gpu0", "--force"]).unwrap();
        let Command::RemoveDevice(args) = cli.command else {
            panic!()
        };
        assert!(args.force);
        assert_eq!(
            parse(&["remove-device", "vm1"]).unwrap_err().kind(),
            ErrorKind::MissingRequiredArgument
        );
        assert_eq!(
            parse(&["remove-device", "vm1", "--gpu", "01:00.0", "--id", "gpu0"])
                .unwrap_err()
                .kind(),
            ErrorKind::ArgumentConflict
        );
    }

    #[test]
    fn gpu_and_doctor_commands() {
        assert!(matches!(
            parse(&["gpu", "list"]).unwrap().command,
            Command::Gpu {
                action: GpuCommand::List
            }
        ));
        let cli = parse(&["gpu", "bind", "01:00.0", "--force"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Gpu { action: GpuCommand::Bind { device, force: true } } if device == bdf("01:00.0")
        ));
        let cli = parse(&["gpu", "unbind", "0000:01:00.1"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Gpu { action: GpuCommand::Unbind { device } } if device == bdf("01:00.1")
        ));
        assert_eq!(
            parse(&["gpu", "bind", "zz:00.0"]).unwrap_err().kind(),
            ErrorKind::ValueValidation
        );
        let cli = parse(&["doctor", "--memory", "64G"]).unwrap();
        assert!(matches!(cli.command, Command::Doctor { memory: Some(m) } if m == 64 << 30));
        assert!(parse(&["doctor", "--memory", "x"]).is_err());
    }

    #[test]
    fn global_options_go_anywhere() {
        let cli = parse(&["gpu", "list", "--json", "--socket", "/tmp/s.sock"]).unwrap();
        assert!(cli.json);
        assert_eq!(cli.connection.socket, PathBuf::from("/tmp/s.sock"));
        let cli = parse(&[
            "--url",
            "http://h:7070",
            "--token-file",
            "/t",
            "--timeout",
            "9",
            "list",
        ])
        .unwrap();
        assert_eq!(cli.connection.url.as_deref(), Some("http://h:7070"));
        assert_eq!(cli.connection.token_file, Some(PathBuf::from("/t")));
        assert_eq!(cli.connection.timeout, Some(9));
        assert!(parse(&["--timeout", "0", "list"]).is_err());
    }

    #[test]
    fn help_shows_examples_and_exit_statuses() {
        let help = Cli::command().render_long_help().to_string();
        assert!(help.contains("form-vmm-ctl create --name vm1"), "{help}");
        assert!(help.contains("3 cannot reach the service"), "{help}");
    }
}
