//! Runs one parsed command: builds the request, calls the service, prints the answer
//! as a table or, with `--json`, as the service's JSON.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use form_service_api::types::{
    AddDevicesRequest, AddGpuRequest, BindGpuRequest, CloudInitConfig, DeviceRole, DiskConfig,
    DoctorResponse, GpuOptions, GpuRequest, NetworkConfig, NicRequest, VmInfo, VmInstanceConfig,
    DEFAULT_MEMORY,
};
use form_service_api::Bdf;
use hyper::Method;

use crate::api::{decode, segment, Api};
use crate::cli::{
    AddDeviceArgs, Cli, Command, ConnectionArgs, CreateArgs, DeviceCommand, GpuCommand,
    RemoveDeviceArgs, DEFAULT_TIMEOUT_SECS, TIMEOUT_PER_GIB_SECS,
};
use crate::client::Client;
use crate::endpoint::Endpoint;
use crate::error::CtlError;
use crate::exit::Exit;
use crate::files::{read_ssh_keys, read_user_data};
use crate::{console, devices, render, tls};

/// The environment variable holding the bearer token itself, for --url without
/// --token-file.
pub const TOKEN_ENV: &str = "FORM_VMM_TOKEN";

/// Where the output goes and in which form.
struct Output {
    json: bool,
}

impl Output {
    /// Prints a success body: verbatim with --json, else what `human` makes of it.
    fn show<T: serde::de::DeserializeOwned>(
        &self,
        what: &str,
        body: &[u8],
        human: impl FnOnce(&T) -> String,
    ) -> Result<(), CtlError> {
        if self.json {
            print_raw(body);
            return Ok(());
        }
        let value: T = decode(what, body)?;
        emit(human(&value).as_bytes());
        Ok(())
    }
}

pub fn run(cli: Cli) -> Result<Exit, CtlError> {
    let timeout = cli
        .connection
        .timeout
        .unwrap_or_else(|| default_timeout(&cli.command));
    let progress = !cli.json && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let api = Api::new(client(&cli.connection, timeout)?.with_progress(progress));
    let out = Output { json: cli.json };
    match cli.command {
        Command::Create(args) => {
            let config = create_config(&args)?;
            let body = api.call(Method::POST, "/vms", Some(&config))?;
            out.show("the created VM", &body, |vm: &VmInfo| {
                format!("created {}\n{}", vm.name, render::vm_details(vm))
            })?;
        }
        Command::List => {
            let body = api.get("/vms")?;
            out.show("the VM list", &body, render::vm_list)?;
        }
        Command::Info(vm) => {
            let body = api.get(&vm_path(&vm.name, ""))?;
            out.show("the VM", &body, render::vm_details)?;
        }
        Command::Boot(vm) => vm_action(&api, &out, &vm.name, "boot")?,
        Command::Shutdown(vm) => vm_action(&api, &out, &vm.name, "shutdown")?,
        Command::Reboot(vm) => vm_action(&api, &out, &vm.name, "reboot")?,
        Command::Delete(vm) => {
            api.call(Method::DELETE, &vm_path(&vm.name, ""), None::<&()>)?;
            if !out.json {
                emit(format!("deleted {}\n", vm.name).as_bytes());
            }
        }
        Command::Console(args) => {
            if out.json {
                return Err(CtlError::Usage(
                    "console prints the guest's serial output as it is; --json does not apply to it"
                        .to_string(),
                ));
            }
            return console::run(&api, &args.name, args.tail, args.follow);
        }
        Command::AddDevice(args) => add_device(&api, &out, &args)?,
        Command::RemoveDevice(args) => remove_device(&api, &out, &args)?,
        Command::Gpu { action } => gpu(&api, &out, action)?,
        Command::Device {
            action: DeviceCommand::List,
        } => {
            let body = api.get("/devices")?;
            out.show("the device list", &body, devices::device_list)?;
        }
        Command::Doctor { memory } => {
            let path = match memory {
                Some(bytes) => format!("/doctor?memory={bytes}"),
                None => "/doctor".to_string(),
            };
            let body = api.get(&path)?;
            let report: DoctorResponse = decode("the doctor report", &body)?;
            if out.json {
                print_raw(&body);
            } else {
                emit(render::doctor(&report).as_bytes());
            }
            if report.worst == "error" {
                return Ok(Exit::Failure);
            }
        }
    }
    Ok(Exit::Ok)
}

/// Seconds to wait for an answer when --timeout is not given: a create waits as
/// long as the service may take to pin the VM's RAM.
pub fn default_timeout(command: &Command) -> u64 {
    match command {
        Command::Create(args) => {
            let gib = args.memory.unwrap_or(DEFAULT_MEMORY).div_ceil(1 << 30);
            DEFAULT_TIMEOUT_SECS.saturating_add(TIMEOUT_PER_GIB_SECS.saturating_mul(gib))
        }
        _ => DEFAULT_TIMEOUT_SECS,
    }
}

/// The client for the endpoint the options name: TCP (TLS for https://) with a token
/// when --url is given, else the unix socket.
fn client(options: &ConnectionArgs, timeout: u64) -> Result<Client, CtlError> {
    let timeout = Duration::from_secs(timeout);
    let Some(url) = &options.url else {
        return Ok(Client::new(
            Endpoint::Unix(options.socket.clone()),
            None,
            timeout,
        ));
    };
    let endpoint = Endpoint::from_url(url).map_err(CtlError::Usage)?;
    let token = match &options.token_file {
        Some(path) => read_token(path)?,
        None => std::env::var(TOKEN_ENV)
            .ok()
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                CtlError::Usage(format!(
                    "--url needs the service's bearer token: pass --token-file FILE or set {TOKEN_ENV}"
                ))
            })?,
    };
    let client = Client::new(endpoint.clone(), Some(token), timeout)
        .allow_plain_http(options.allow_plain_http);
    match (&options.ca_file, endpoint.is_tls()) {
        (ca_file, true) => Ok(client.with_tls(tls::client_config(ca_file.as_deref())?)),
        (Some(_), false) => Err(CtlError::Usage(format!(
            "--ca-file is for https:// URLs, and {url} is plain http; use https:// if the service has --tls-cert"
        ))),
        (None, false) => Ok(client),
    }
}

/// The token is the file's content without the trailing newline, as the service
/// reads its own token file.
fn read_token(path: &Path) -> Result<String, CtlError> {
    let text = fs::read_to_string(path).map_err(|source| CtlError::TokenFile {
        path: path.to_path_buf(),
        source,
    })?;
    let token = text.trim_end_matches(['\n', '\r']);
    if token.is_empty() {
        return Err(CtlError::EmptyToken {
            path: path.to_path_buf(),
        });
    }
    Ok(token.to_string())
}

/// The create request. Relative payload paths are made absolute here, since the
/// service does not share this shell's working directory.
pub fn create_config(args: &CreateArgs) -> Result<VmInstanceConfig, CtlError> {
    let gpu_request = args.gpu_model.as_ref().map(|model| GpuRequest {
        nvswitches: args.nvswitches,
        nics: args.nic_count.map(|count| NicRequest {
            model: args.nic_model.clone(),
            count,
        }),
        ..GpuRequest::new(model.clone(), args.gpu_count.unwrap_or(1))
    });
    let gpu_options = GpuOptions {
        enable_nvidia_gpudirect: args.nvidia_gpudirect_clique.is_some(),
        nvidia_gpudirect_clique: args.nvidia_gpudirect_clique.unwrap_or(0),
        unbind_on_shutdown: !args.no_unbind_on_shutdown,
        numa_affinity: !args.no_numa_affinity,
    };
    Ok(VmInstanceConfig {
        name: args.name.clone(),
        kernel: args
            .kernel
            .as_ref()
            .map(|path| payload_path("--kernel", path))
            .transpose()?,
        initramfs: args
            .initramfs
            .as_ref()
            .map(|path| payload_path("--initramfs", path))
            .transpose()?,
        cmdline: args.cmdline.clone(),
        vcpus: args.cpus.unwrap_or(1),
        memory: args.memory.unwrap_or(DEFAULT_MEMORY),
        gpu_devices: args.gpu.iter().map(Bdf::to_string).collect(),
        gpu_request,
        devices: args.device.iter().map(Bdf::to_string).collect(),
        gpu_options,
        hugepages: args.hugepages,
        hugepage_size: args.hugepage_size,
        numa: args.numa,
        numa_vcpus: args.numa_vcpus.clone(),
        boot: args.boot,
        disks: disks(args)?,
        networks: args
            .net
            .iter()
            .map(|net| NetworkConfig {
                bridge: net.bridge.clone(),
                mac: net.mac.clone(),
            })
            .collect(),
        cloud_init: cloud_init(args)?,
    })
}

/// The disks in the order the guest sees them: the --image first (`/dev/vda`, as a
/// cloud image's own boot entry expects of its root), then each --disk.
fn disks(args: &CreateArgs) -> Result<Vec<DiskConfig>, CtlError> {
    let image = args.image.iter().map(|path| {
        Ok(DiskConfig {
            path: payload_path("--image", path)?,
            readonly: false,
            boot: true,
            format: None,
        })
    });
    let others = args.disk.iter().map(|disk| {
        Ok(DiskConfig {
            path: payload_path("--disk", &disk.path)?,
            readonly: disk.readonly,
            boot: false,
            format: None,
        })
    });
    image.chain(others).collect()
}

/// The cloud-init part of the request, with the key and user-data files read here.
fn cloud_init(args: &CreateArgs) -> Result<Option<CloudInitConfig>, CtlError> {
    if !args.wants_cloud_init() {
        return Ok(None);
    }
    let mut ssh_authorized_keys = Vec::new();
    for path in &args.ssh_key {
        ssh_authorized_keys.extend(read_ssh_keys(path)?);
    }
    Ok(Some(CloudInitConfig {
        hostname: args.hostname.clone(),
        user: args.user.clone(),
        ssh_authorized_keys,
        packages: args.package.clone(),
        runcmd: args.run.clone(),
        user_data: args.user_data.as_deref().map(read_user_data).transpose()?,
        ..CloudInitConfig::default()
    }))
}

fn payload_path(flag: &str, path: &Path) -> Result<String, CtlError> {
    let absolute: PathBuf = std::path::absolute(path)
        .map_err(|e| CtlError::Usage(format!("{flag} {}: {e}", path.display())))?;
    absolute.into_os_string().into_string().map_err(|raw| {
        CtlError::Usage(format!(
            "{flag} {}: the path is not UTF-8, which the service API cannot carry",
            PathBuf::from(raw).display()
        ))
    })
}

fn vm_path(name: &str, rest: &str) -> String {
    format!("/vms/{}{rest}", segment(name))
}

fn vm_action(api: &Api, out: &Output, name: &str, action: &str) -> Result<(), CtlError> {
    let body = api.call(
        Method::POST,
        &vm_path(name, &format!("/{action}")),
        None::<&()>,
    )?;
    out.show("the VM", &body, |vm: &VmInfo| {
        format!("{}: {}\n", vm.name, render::state(vm.state))
    })
}

fn add_device(api: &Api, out: &Output, args: &AddDeviceArgs) -> Result<(), CtlError> {
    if !args.device.is_empty() {
        let request = AddDevicesRequest {
            devices: args.device.iter().map(Bdf::to_string).collect(),
        };
        let body = api.call(
            Method::POST,
            &vm_path(&args.name, "/devices"),
            Some(&request),
        )?;
        return out.show("the VM", &body, render::vm_gpus);
    }
    let request = AddGpuRequest {
        device: args.gpu.map(|bdf| bdf.to_string()),
        model: args.gpu_model.clone(),
        count: args.gpu_model.as_ref().map(|_| args.gpu_count.unwrap_or(1)),
    };
    let body = api.call(Method::POST, &vm_path(&args.name, "/gpus"), Some(&request))?;
    out.show("the VM", &body, render::vm_gpus)
}

fn remove_device(api: &Api, out: &Output, args: &RemoveDeviceArgs) -> Result<(), CtlError> {
    let bdf = match (args.gpu.or(args.device), &args.id) {
        (Some(bdf), _) => bdf.to_string(),
        (None, Some(id)) => bdf_of_device_id(api, &args.name, id)?,
        (None, None) => {
            return Err(CtlError::Usage(
                "remove-device needs --gpu BDF, --device BDF or --id ID".to_string(),
            ))
        }
    };
    let mut path = vm_path(&args.name, &format!("/gpus/{}", segment(&bdf)));
    if args.force {
        path.push_str("?force=true");
    }
    let body = api.call(Method::DELETE, &path, None::<&()>)?;
    out.show("the VM", &body, render::vm_gpus)
}

/// The address of the GPU a VM knows as `id`: the service's routes take addresses.
fn bdf_of_device_id(api: &Api, name: &str, id: &str) -> Result<String, CtlError> {
    let vm: VmInfo = decode("the VM", &api.get(&vm_path(name, ""))?)?;
    if let Some(gpu) = vm.gpus.iter().find(|gpu| gpu.device_id == id) {
        return Ok(gpu.bdf.clone());
    }
    if let Some(device) = vm.devices.iter().find(|d| d.device_id == id) {
        return Ok(device.bdf.clone());
    }
    let mut known: Vec<String> = vm
        .gpus
        .iter()
        .map(|gpu| format!("{} ({})", gpu.device_id, gpu.bdf))
        .collect();
    // Services that list every function in `devices` list the GPUs there too.
    for device in vm.devices.iter().filter(|d| d.role != DeviceRole::Gpu) {
        known.push(format!("{} ({})", device.device_id, device.bdf));
    }
    Err(CtlError::NoSuchDeviceId {
        vm: vm.name,
        id: id.to_string(),
        known: if known.is_empty() {
            "no GPUs".to_string()
        } else {
            known.join(", ")
        },
    })
}

fn gpu(api: &Api, out: &Output, action: GpuCommand) -> Result<(), CtlError> {
    match action {
        GpuCommand::List => {
            let body = api.get("/gpus")?;
            out.show("the GPU list", &body, render::gpu_list)
        }
        GpuCommand::Bind { device, force } => {
            let path = format!("/gpus/{}/bind", segment(&device.to_string()));
            let body = api
                .call(Method::POST, &path, Some(&BindGpuRequest { force }))
                .map_err(|e| local_hint(e, "bind", &device))?;
            finish_gpu_change(out, &body, &format!("{device}: bound to vfio-pci"));
            Ok(())
        }
        GpuCommand::Unbind { device } => {
            let path = format!("/gpus/{}/unbind", segment(&device.to_string()));
            let body = api
                .call(Method::POST, &path, None::<&()>)
                .map_err(|e| local_hint(e, "unbind", &device))?;
            finish_gpu_change(
                out,
                &body,
                &format!("{device}: returned to its host driver"),
            );
            Ok(())
        }
    }
}

fn finish_gpu_change(out: &Output, body: &[u8], summary: &str) {
    if out.json {
        print_raw(body);
    } else {
        emit(format!("{summary}\n").as_bytes());
    }
}

/// A service without the bind routes still has the local command.
fn local_hint(error: CtlError, action: &str, device: &Bdf) -> CtlError {
    match error {
        CtlError::Service {
            status: 404 | 405,
            code: None,
            message,
            body,
        } => CtlError::Service {
            status: 404,
            code: None,
            message: format!(
                "{message}; on the GPU host, `vmm-service gpu {action} {device}` does the same locally"
            ),
            body,
        },
        other => other,
    }
}

/// The service's JSON as it came, ending in a newline; nothing for an empty body.
pub fn print_raw(body: &[u8]) {
    if body.is_empty() {
        return;
    }
    emit(body);
    if !body.ends_with(b"\n") {
        emit(b"\n");
    }
}

/// Writes to stdout. A reader that went away (`| head`) is not an error of the
/// command: the request already succeeded, and the exit status must say so, where
/// `print!` would panic.
fn emit(text: &[u8]) {
    let mut stdout = io::stdout().lock();
    let _ = stdout.write_all(text).and_then(|()| stdout.flush());
}

#[cfg(test)]
mod timeout_tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn a_create_waits_as_long_as_pinning_its_ram_may_take() {
        let command = |args: &[&str]| {
            Cli::try_parse_from(std::iter::once("form-vmm-ctl").chain(args.iter().copied()))
                .unwrap()
                .command
        };
        let small = command(&["create", "--name", "a", "--kernel", "/k"]);
        assert_eq!(
            default_timeout(&small),
            DEFAULT_TIMEOUT_SECS + TIMEOUT_PER_GIB_SECS
        );
        let big = command(&["create", "--name", "a", "--kernel", "/k", "--memory", "1T"]);
        assert_eq!(
            default_timeout(&big),
            DEFAULT_TIMEOUT_SECS + 1024 * TIMEOUT_PER_GIB_SECS
        );
        assert_eq!(default_timeout(&command(&["list"])), DEFAULT_TIMEOUT_SECS);
    }
}
