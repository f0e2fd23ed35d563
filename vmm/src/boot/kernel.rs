//! Loading the kernel, command line and initramfs into guest memory.

use super::EntryPoint;
use crate::memory::GuestMemoryMmap;
use form_vm_allocator::layout::{
    GuestLayout, CMDLINE_MAX_SIZE, CMDLINE_START, HIGH_MEMORY_START, MEM_32BIT_HOLE_START,
};
use linux_loader::loader::bootparam::setup_header;
use linux_loader::loader::{BzImage, Cmdline, Elf, KernelLoader, PvhBootCapability};
use std::fs::File;
use std::io::{Cursor, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

const PAGE_SIZE: u64 = 0x1000;
/// Where the bzImage setup header says "HdrS" (boot protocol 2.00+).
const BZIMAGE_MAGIC_OFFSET: u64 = 0x202;
const BZIMAGE_MAGIC: &[u8; 4] = b"HdrS";
const ELF_MAGIC: &[u8; 4] = b"\x7fELF";
/// The 64-bit entry of a bzImage's protected-mode kernel is 0x200 past its load
/// address (Documentation/arch/x86/boot.rst, "64-bit boot protocol").
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;
/// Highest initrd address when the kernel does not say (pre-2.03 headers, ELF).
const DEFAULT_INITRD_ADDR_MAX: u64 = 0x37ff_ffff;

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("cannot open kernel {path}: {source}")]
    OpenKernel {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("kernel {0} is neither an ELF vmlinux nor a bzImage; form-vmm boots x86_64 ELF kernels (with or without a PVH note) and bzImage kernels")]
    UnknownKernelFormat(PathBuf),
    #[error("cannot load kernel {path}: {source}")]
    LoadKernel {
        path: PathBuf,
        source: linux_loader::loader::Error,
    },
    #[error("kernel command line is invalid or longer than {max} bytes: {reason}")]
    Cmdline { max: u64, reason: String },
    #[error("cannot read initramfs {path}: {source}")]
    Initramfs {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("initramfs {path} ({size} bytes) does not fit in guest RAM between the kernel end {kernel_end:#x} and {limit:#x}; give the VM more memory")]
    InitramfsTooBig {
        path: PathBuf,
        size: u64,
        kernel_end: u64,
        limit: u64,
    },
    #[error("cannot write {what} into guest memory: {source}")]
    GuestWrite {
        what: &'static str,
        source: vm_memory::GuestMemoryError,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelFormat {
    Elf,
    BzImage,
}

/// A kernel or initramfs: a host file, or bytes already read (from the boot
/// disk's file system), named for errors by `name`.
#[derive(Clone, Copy)]
pub enum PayloadFile<'a> {
    Path(&'a Path),
    Bytes { name: &'a Path, data: &'a [u8] },
}

impl PayloadFile<'_> {
    fn name(&self) -> &Path {
        match self {
            PayloadFile::Path(path) => path,
            PayloadFile::Bytes { name, .. } => name,
        }
    }
}

/// What to boot.
pub struct PayloadRequest<'a> {
    pub kernel: PayloadFile<'a>,
    pub initramfs: Option<PayloadFile<'a>>,
    pub cmdline: &'a str,
}

/// Where things ended up in guest memory.
#[derive(Clone, Copy, Debug)]
pub struct LoadedPayload {
    pub entry: EntryPoint,
    pub format: KernelFormat,
    /// The bzImage's setup header, to be copied into `boot_params`.
    pub setup_header: Option<setup_header>,
    pub cmdline_addr: u64,
    /// Length of the command line including its NUL.
    pub cmdline_size: u64,
    pub initramfs: Option<(u64, u64)>,
}

/// Tells an ELF from a bzImage by their magic numbers.
pub fn detect_format(path: &Path) -> Result<KernelFormat, BootError> {
    let mut file = File::open(path).map_err(|source| BootError::OpenKernel {
        path: path.to_path_buf(),
        source,
    })?;
    detect_format_of(&mut file, path)
}

fn detect_format_of(
    kernel: &mut (impl Read + Seek),
    name: &Path,
) -> Result<KernelFormat, BootError> {
    let mut magic = [0u8; 4];
    if kernel.read_exact(&mut magic).is_ok() && &magic == ELF_MAGIC {
        return Ok(KernelFormat::Elf);
    }
    if kernel.seek(SeekFrom::Start(BZIMAGE_MAGIC_OFFSET)).is_ok()
        && kernel.read_exact(&mut magic).is_ok()
        && &magic == BZIMAGE_MAGIC
    {
        return Ok(KernelFormat::BzImage);
    }
    Err(BootError::UnknownKernelFormat(name.to_path_buf()))
}

fn write_cmdline(mem: &GuestMemoryMmap, cmdline: &str) -> Result<u64, BootError> {
    let cmdline_err = |reason: String| BootError::Cmdline {
        max: CMDLINE_MAX_SIZE - 1,
        reason,
    };
    let mut cl = Cmdline::new(CMDLINE_MAX_SIZE as usize).map_err(|e| cmdline_err(e.to_string()))?;
    if !cmdline.is_empty() {
        cl.insert_str(cmdline)
            .map_err(|e| cmdline_err(e.to_string()))?;
    }
    let bytes = cl.as_cstring().map_err(|e| cmdline_err(e.to_string()))?;
    let bytes = bytes.as_bytes_with_nul();
    mem.write_slice(bytes, GuestAddress(CMDLINE_START))
        .map_err(|source| BootError::GuestWrite {
            what: "the command line",
            source,
        })?;
    Ok(bytes.len() as u64)
}

/// Places the initramfs as high as the kernel allows, page aligned, in low RAM.
fn load_initramfs(
    mem: &GuestMemoryMmap,
    layout: &GuestLayout,
    initramfs: PayloadFile<'_>,
    kernel_end: u64,
    addr_max: u64,
) -> Result<(u64, u64), BootError> {
    let path = initramfs.name();
    let read_err = |source| BootError::Initramfs {
        path: path.to_path_buf(),
        source,
    };
    let (mut reader, size): (Box<dyn Read + '_>, u64) = match initramfs {
        PayloadFile::Path(path) => {
            let file = File::open(path).map_err(read_err)?;
            let size = file.metadata().map_err(read_err)?.len();
            (Box::new(file), size)
        }
        PayloadFile::Bytes { data, .. } => (Box::new(data), data.len() as u64),
    };
    let low_ram_end = layout
        .ram_regions()
        .first()
        .map_or(0, |r| r.end())
        .min(MEM_32BIT_HOLE_START);
    // initrd_addr_max is the highest address the initrd's last byte may occupy.
    let limit = low_ram_end.min(addr_max.saturating_add(1));
    let too_big = || BootError::InitramfsTooBig {
        path: path.to_path_buf(),
        size,
        kernel_end,
        limit,
    };
    let start = limit.checked_sub(size).ok_or_else(too_big)? & !(PAGE_SIZE - 1);
    if start < kernel_end.max(HIGH_MEMORY_START) {
        return Err(too_big());
    }
    let mut remaining = size;
    let mut addr = start;
    let mut buf = vec![0u8; 1 << 20];
    while remaining > 0 {
        let n = remaining.min(buf.len() as u64) as usize;
        reader.read_exact(&mut buf[..n]).map_err(read_err)?;
        mem.write_slice(&buf[..n], GuestAddress(addr))
            .map_err(|source| BootError::GuestWrite {
                what: "the initramfs",
                source,
            })?;
        addr += n as u64;
        remaining -= n as u64;
    }
    Ok((start, size))
}

fn load_kernel<F>(
    mem: &GuestMemoryMmap,
    kernel: &mut F,
    format: KernelFormat,
    highmem: Option<GuestAddress>,
) -> Result<linux_loader::loader::KernelLoaderResult, linux_loader::loader::Error>
where
    F: Read + Seek + vm_memory::ReadVolatile,
{
    match format {
        KernelFormat::Elf => Elf::load(mem, None, kernel, highmem),
        KernelFormat::BzImage => BzImage::load(mem, None, kernel, highmem),
    }
}

/// Loads kernel, command line and initramfs; says how to enter the kernel.
pub fn load_payload(
    mem: &GuestMemoryMmap,
    layout: &GuestLayout,
    request: &PayloadRequest<'_>,
) -> Result<LoadedPayload, BootError> {
    let path = request.kernel.name();
    let load_err = |source| BootError::LoadKernel {
        path: path.to_path_buf(),
        source,
    };
    let highmem = Some(GuestAddress(HIGH_MEMORY_START));
    let (format, result) = match request.kernel {
        PayloadFile::Path(path) => {
            let mut file = File::open(path).map_err(|source| BootError::OpenKernel {
                path: path.to_path_buf(),
                source,
            })?;
            let format = detect_format_of(&mut file, path)?;
            file.seek(SeekFrom::Start(0))
                .map_err(|source| BootError::OpenKernel {
                    path: path.to_path_buf(),
                    source,
                })?;
            (
                format,
                load_kernel(mem, &mut file, format, highmem).map_err(load_err)?,
            )
        }
        PayloadFile::Bytes { name, data } => {
            let mut cursor = Cursor::new(data);
            let format = detect_format_of(&mut cursor, name)?;
            cursor.set_position(0);
            (
                format,
                load_kernel(mem, &mut cursor, format, highmem).map_err(load_err)?,
            )
        }
    };
    let entry = match (format, result.pvh_boot_cap) {
        (KernelFormat::Elf, PvhBootCapability::PvhEntryPresent(addr)) => {
            EntryPoint::Pvh { entry: addr.0 }
        }
        (KernelFormat::Elf, _) => {
            // linux-loader leaves the ELF entry in kernel_load for ELF images.
            EntryPoint::Linux64 {
                entry: result.kernel_load.0,
            }
        }
        (KernelFormat::BzImage, _) => EntryPoint::Linux64 {
            entry: result.kernel_load.0 + BZIMAGE_64BIT_ENTRY_OFFSET,
        },
    };
    let cmdline_size = write_cmdline(mem, request.cmdline)?;
    let addr_max = result
        .setup_header
        .map(|h| u64::from(h.initrd_addr_max))
        .filter(|&m| m != 0)
        .unwrap_or(DEFAULT_INITRD_ADDR_MAX);
    let initramfs = request
        .initramfs
        .map(|f| load_initramfs(mem, layout, f, result.kernel_end, addr_max))
        .transpose()?;
    debug_assert!(mem.address_in_range(GuestAddress(CMDLINE_START)));
    Ok(LoadedPayload {
        entry,
        format,
        setup_header: result.setup_header,
        cmdline_addr: CMDLINE_START,
        cmdline_size,
        initramfs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MemoryConfig;
    use crate::memory::create_guest_memory;

    fn memory(size: u64) -> (GuestLayout, GuestMemoryMmap) {
        let layout = GuestLayout::new(size, 40).unwrap();
        let cfg = MemoryConfig {
            size,
            ..Default::default()
        };
        let mem = create_guest_memory(&layout, &cfg).unwrap();
        (layout, mem)
    }

    fn file_with(len: usize) -> PathBuf {
        let path =
            std::env::temp_dir().join(format!("form-vmm-initrd-{}-{len}", std::process::id()));
        std::fs::write(&path, vec![0xa5; len]).unwrap();
        path
    }

    #[test]
    fn initramfs_goes_high_page_aligned_and_below_the_limit() {
        let (layout, mem) = memory(64 << 20);
        let path = file_with(10_000);
        let (addr, size) = load_initramfs(
            &mem,
            &layout,
            PayloadFile::Path(&path),
            0x20_0000,
            0x37ff_ffff,
        )
        .unwrap();
        assert_eq!(size, 10_000);
        assert_eq!(addr % PAGE_SIZE, 0);
        assert!(addr + size <= 64 << 20);
        assert!(
            addr + size > (64 << 20) - 2 * PAGE_SIZE,
            "placed as high as possible"
        );
        assert_eq!(
            mem.read_obj::<u8>(GuestAddress(addr + size - 1)).unwrap(),
            0xa5
        );
        // A kernel limit below the end of RAM wins.
        let (addr, _) = load_initramfs(
            &mem,
            &layout,
            PayloadFile::Path(&path),
            0x20_0000,
            0x1ff_ffff,
        )
        .unwrap();
        assert!(addr + 10_000 <= 0x200_0000);
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn initramfs_that_does_not_fit_is_refused() {
        let (layout, mem) = memory(8 << 20);
        let path = file_with(4 << 20);
        let err = load_initramfs(
            &mem,
            &layout,
            PayloadFile::Path(&path),
            6 << 20,
            0x37ff_ffff,
        )
        .unwrap_err();
        assert!(matches!(err, BootError::InitramfsTooBig { .. }), "{err}");
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn unknown_formats_are_named() {
        let path = file_with(1024);
        let err = detect_format(&path).unwrap_err().to_string();
        assert!(err.contains("ELF") && err.contains("bzImage"), "{err}");
        std::fs::remove_file(path).unwrap();
    }
}
