//! From a disk to the entry that boots by default, and its files.
//!
//! Every partition is looked at (in table order); of the ext2/3/4 ones, the first
//! with a `grub.cfg` wins, else the first with BLS entries, else the first with
//! `vmlinuz-*` kernels, each looked for under `/boot` (the root file system) and
//! at the top (a separate /boot partition). Paths in the configuration are
//! relative to the partition that holds it; a file missing there is looked for on
//! the other ext partitions (GRUB's `search --set=root` would have found it).

use crate::bls;
use crate::cmdline::guest_cmdline;
use crate::disk::{BlockRead, Slice};
use crate::error::Error;
use crate::extfs::{ExtFs, ReadError};
use crate::fs_kind::{detect, FsKind};
use crate::grub::{self, Chosen, Vars};
use crate::partition::read_table;
use crate::version;
use std::rc::Rc;

/// Bounds on what is read from an image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// grub.cfg, a BLS entry, loader.conf, grubenv.
    pub max_config: u64,
    pub max_kernel: u64,
    /// All initrds of the entry together.
    pub max_initrd: u64,
    /// BLS entries or kernels in one directory.
    pub max_entries: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_config: 1 << 20,
            // Read into form-vmm's own memory at every start, from a file system
            // the guest writes: bounded well above what distributions ship
            // (kernels of ~15 MiB, initrds of ~100 MiB).
            max_kernel: 64 << 20,
            max_initrd: 512 << 20,
            max_entries: 1024,
        }
    }
}

/// Which configuration chose the entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfigKind {
    GrubCfg,
    Bls,
    NewestKernel,
}

impl ConfigKind {
    /// The name `vm.info` shows: `grub.cfg`, `bls` or `newest-kernel`.
    pub fn as_str(self) -> &'static str {
        match self {
            ConfigKind::GrubCfg => "grub.cfg",
            ConfigKind::Bls => "bls",
            ConfigKind::NewestKernel => "newest-kernel",
        }
    }
}

/// The default boot entry of an image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootEntry {
    pub kind: ConfigKind,
    /// The partition (1-based, as Linux numbers them; 0: a disk without a
    /// partition table) holding the configuration, and its path there (for
    /// `newest-kernel`, the directory searched).
    pub config_partition: u32,
    pub config_path: String,
    pub title: String,
    /// The partition holding the kernel and initrds (usually the same).
    pub partition: u32,
    pub kernel: String,
    pub initrd: Vec<String>,
    /// The entry's own kernel arguments.
    pub args: String,
}

impl BootEntry {
    /// The guest's command line: the entry's arguments, `console=ttyS0` when no
    /// console is named, then `user`'s.
    pub fn cmdline(&self, user: Option<&str>) -> String {
        guest_cmdline(&self.args, user)
    }
}

/// An entry with its kernel and initrd (several are concatenated, each padded
/// to 4 bytes, as GRUB does).
pub struct BootFiles {
    pub entry: BootEntry,
    pub kernel: Vec<u8>,
    pub initrd: Option<Vec<u8>>,
}

const GRUB_CFGS: &[&str] = &[
    "/boot/grub/grub.cfg",
    "/boot/grub2/grub.cfg",
    "/grub/grub.cfg",
    "/grub2/grub.cfg",
];
const BLS_DIRS: &[&str] = &["/boot/loader/entries", "/loader/entries"];
const KERNEL_DIRS: &[&str] = &["/boot", "/"];
/// grubenv is 1 KiB; a bigger one is not GRUB's.
const MAX_GRUBENV: u64 = 64 * 1024;

struct Part {
    number: u32,
    fs: ExtFs,
}

struct Ctx<'a> {
    image: &'a str,
    limits: &'a Limits,
    parts: Vec<Part>,
}

fn part_name(number: u32) -> String {
    if number == 0 {
        "whole disk".into()
    } else {
        format!("partition {number}")
    }
}

impl Ctx<'_> {
    fn entry_err(&self, number: u32, what: String) -> Error {
        Error::Entry {
            image: self.image.to_string(),
            part: part_name(number),
            what,
        }
    }

    fn file_err(&self, number: u32, path: &str, what: String) -> Error {
        Error::File {
            image: self.image.to_string(),
            part: part_name(number),
            path: path.to_string(),
            what,
        }
    }

    fn read_text(&self, p: &Part, path: &str, max: u64) -> Result<String, Error> {
        let bytes =
            p.fs.read(path, max)
                .map_err(|e| self.file_err(p.number, path, e.to_string()))?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// Finds `path` (or, for a path under /boot on the same partition, the
    /// /boot-relative one and vice versa): on partition `home` first, then on
    /// the others. Returns (index into parts, path there).
    fn locate(&self, home: usize, path: &str) -> Option<(usize, String)> {
        let path = strip_device(path);
        if !path.starts_with('/') {
            return None;
        }
        let mut candidates = vec![path.to_string()];
        match path.strip_prefix("/boot/") {
            Some(rest) => candidates.push(format!("/{rest}")),
            None => candidates.push(format!("/boot{path}")),
        }
        let order = std::iter::once(home).chain((0..self.parts.len()).filter(|&i| i != home));
        for i in order {
            for c in &candidates {
                if self.parts[i].fs.is_file(c) {
                    return Some((i, c.clone()));
                }
            }
        }
        None
    }

    fn bls_entries(&self, p: &Part, dir: &str, vars: &Vars) -> Result<Vec<bls::Entry>, Error> {
        let names =
            p.fs.list(dir, self.limits.max_entries)
                .map_err(|e| self.file_err(p.number, dir, e.to_string()))?;
        let mut entries = Vec::new();
        for name in names {
            let Some(id) = name.strip_suffix(".conf") else {
                continue;
            };
            let path = format!("{dir}/{name}");
            if !p.fs.is_file(&path) {
                continue;
            }
            let text = self.read_text(p, &path, self.limits.max_config)?;
            entries.extend(bls::parse(id, &text, vars));
        }
        bls::sort(&mut entries);
        Ok(entries)
    }

    fn grubenv(&self, p: &Part, dir: &str) -> Vars {
        let path = format!("{dir}/grubenv");
        match p.fs.read(&path, MAX_GRUBENV) {
            Ok(bytes) => grub::parse_grubenv(&String::from_utf8_lossy(&bytes)),
            Err(ReadError::NotFound) => Vars::new(),
            Err(e) => {
                log::warn!(
                    "{} {}: {path}: {e}; ignored",
                    self.image,
                    part_name(p.number)
                );
                Vars::new()
            }
        }
    }

    /// The first `grub.cfg` or grubenv beside the BLS entries, for `saved_entry`
    /// and `$kernelopts`.
    fn bls_grubenv(&self, p: &Part) -> Vars {
        for dir in ["/boot/grub2", "/grub2", "/boot/grub", "/grub"] {
            let env = self.grubenv(p, dir);
            if !env.is_empty() {
                return env;
            }
        }
        Vars::new()
    }

    fn entry_of_bls(
        &self,
        idx: usize,
        entries: &[bls::Entry],
        chosen: usize,
        dir: &str,
        config_partition: u32,
    ) -> Result<BootEntry, Error> {
        let e = &entries[chosen];
        self.finish(
            idx,
            ConfigKind::Bls,
            config_partition,
            format!("{dir}/{}.conf", e.id),
            e.title.clone(),
            &e.linux,
            &e.initrd,
            e.options.clone(),
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn finish(
        &self,
        idx: usize,
        kind: ConfigKind,
        config_partition: u32,
        config_path: String,
        title: String,
        kernel: &str,
        initrd: &[String],
        args: String,
    ) -> Result<BootEntry, Error> {
        let home = &self.parts[idx];
        let missing = |path: &str| {
            self.file_err(
                home.number,
                path,
                format!("the entry '{title}' ({config_path}) names it, but no partition holds it"),
            )
        };
        let (kidx, kernel) = self.locate(idx, kernel).ok_or_else(|| missing(kernel))?;
        let mut initrds = Vec::new();
        for path in initrd {
            let (i, found) = self.locate(kidx, path).ok_or_else(|| missing(path))?;
            if i != kidx {
                return Err(self.file_err(
                    self.parts[i].number,
                    &found,
                    format!(
                        "the initrd is not on the kernel's {}",
                        part_name(self.parts[kidx].number)
                    ),
                ));
            }
            initrds.push(found);
        }
        Ok(BootEntry {
            kind,
            config_partition,
            config_path,
            title,
            partition: self.parts[kidx].number,
            kernel,
            initrd: initrds,
            args,
        })
    }

    fn entry_of_grub(&self, idx: usize, cfg: &str) -> Result<BootEntry, Error> {
        let p = &self.parts[idx];
        let text = self.read_text(p, cfg, self.limits.max_config)?;
        let dir = cfg.rsplit_once('/').map_or("", |(d, _)| d);
        let env = self.grubenv(p, dir);
        let bls_dir = BLS_DIRS.iter().find(|d| p.fs.is_dir(d));
        let entries = match bls_dir {
            Some(d) if text.contains("blscfg") => self.bls_entries(p, d, &env)?,
            _ => Vec::new(),
        };
        let ids: Vec<(String, String)> = entries
            .iter()
            .map(|e| (e.id.clone(), e.title.clone()))
            .collect();
        let exists = |path: &str| {
            let path = strip_device(path);
            path.starts_with('/') && p.fs.is_file(path)
        };
        let chosen = grub::choose(&text, dir, &env, &exists, &ids)
            .map_err(|e| self.file_err(p.number, cfg, e))?;
        match chosen {
            Chosen::Bls(i) => {
                let dir = bls_dir.copied().unwrap_or_default();
                self.entry_of_bls(idx, &entries, i, dir, p.number)
            }
            Chosen::Entry { title, load } => {
                let Some((kernel, args)) = load.linux else {
                    let what = match load.unsupported {
                        Some(cmd) => format!(
                            "the default entry '{title}' boots with {cmd}, which form-vmm cannot follow; give --kernel (payload.kernel)"
                        ),
                        None => format!(
                            "the default entry '{title}' loads no Linux kernel (no linux command)"
                        ),
                    };
                    return Err(self.file_err(p.number, cfg, what));
                };
                let args = args
                    .iter()
                    .map(|a| grub_quote(a))
                    .collect::<Vec<_>>()
                    .join(" ");
                self.finish(
                    idx,
                    ConfigKind::GrubCfg,
                    p.number,
                    cfg.to_string(),
                    title,
                    &kernel,
                    &load.initrd,
                    args,
                )
            }
        }
    }

    fn entry_of_bls_dir(&self, idx: usize, dir: &str) -> Result<Option<BootEntry>, Error> {
        let p = &self.parts[idx];
        let env = self.bls_grubenv(p);
        let entries = self.bls_entries(p, dir, &env)?;
        if entries.is_empty() {
            return Ok(None);
        }
        let loader_conf = dir.trim_end_matches("/entries").to_string() + "/loader.conf";
        let loader_default = match p.fs.read(&loader_conf, self.limits.max_config) {
            Ok(bytes) => bls::loader_default(&String::from_utf8_lossy(&bytes)),
            Err(_) => None,
        };
        let chosen = bls::default_index(
            &entries,
            env.get("saved_entry").map(String::as_str),
            loader_default.as_deref(),
        );
        self.entry_of_bls(idx, &entries, chosen, dir, p.number)
            .map(Some)
    }

    /// The kernels `vmlinuz-VERSION` in `dir`, newest first.
    fn kernels(&self, p: &Part, dir: &str) -> Vec<String> {
        let Ok(names) = p.fs.list(dir, self.limits.max_entries) else {
            return Vec::new();
        };
        let mut versions: Vec<String> = names
            .iter()
            .filter_map(|n| n.strip_prefix("vmlinuz-"))
            .filter(|v| !v.is_empty() && !v.ends_with(".old") && !v.contains("rescue"))
            .filter(|v| p.fs.is_file(&join(dir, &format!("vmlinuz-{v}"))))
            .map(str::to_string)
            .collect();
        versions.sort_by(|a, b| version::compare(b, a));
        versions
    }

    fn entry_of_newest_kernel(&self, idx: usize, dir: &str) -> Result<Option<BootEntry>, Error> {
        let p = &self.parts[idx];
        let Some(newest) = self.kernels(p, dir).into_iter().next() else {
            return Ok(None);
        };
        let kernel = join(dir, &format!("vmlinuz-{newest}"));
        let initrd = [
            format!("initrd.img-{newest}"),
            format!("initramfs-{newest}.img"),
            format!("initrd-{newest}"),
            format!("initrd-{newest}.img"),
        ]
        .iter()
        .map(|n| join(dir, n))
        .find(|path| p.fs.is_file(path));
        // The root file system: this one when /boot is a directory of it, else
        // the ext partition that looks like a root (a separate /boot partition).
        let root = if dir == "/boot" {
            Some(p)
        } else {
            self.parts
                .iter()
                .find(|q| q.fs.is_file("/etc/fstab") || q.fs.is_file("/sbin/init"))
        };
        let Some(root) = root else {
            return Err(self.entry_err(
                p.number,
                format!("{kernel} is the newest kernel, but no ext partition holds a root file system (/etc/fstab) to pass as root=; give --kernel and --cmdline"),
            ));
        };
        Ok(Some(BootEntry {
            kind: ConfigKind::NewestKernel,
            config_partition: p.number,
            config_path: dir.to_string(),
            title: format!("vmlinuz-{newest}"),
            partition: p.number,
            kernel,
            initrd: initrd.into_iter().collect(),
            args: format!("root=UUID={} ro", root.fs.uuid()),
        }))
    }

    fn find(&self) -> Result<Option<BootEntry>, Error> {
        for (i, p) in self.parts.iter().enumerate() {
            if let Some(cfg) = GRUB_CFGS.iter().find(|c| p.fs.is_file(c)) {
                return self.entry_of_grub(i, cfg).map(Some);
            }
        }
        for (i, p) in self.parts.iter().enumerate() {
            for dir in BLS_DIRS.iter().filter(|d| p.fs.is_dir(d)) {
                if let Some(entry) = self.entry_of_bls_dir(i, dir)? {
                    return Ok(Some(entry));
                }
            }
        }
        for (i, p) in self.parts.iter().enumerate() {
            for dir in KERNEL_DIRS.iter().filter(|d| p.fs.is_dir(d)) {
                if let Some(entry) = self.entry_of_newest_kernel(i, dir)? {
                    return Ok(Some(entry));
                }
            }
        }
        Ok(None)
    }
}

/// `(hd0,gpt1)/boot/x` and `($root)/x` name a device first: the path is the rest.
fn strip_device(path: &str) -> &str {
    if path.starts_with('(') {
        if let Some(end) = path.find(')') {
            return &path[end + 1..];
        }
    }
    path
}

fn join(dir: &str, name: &str) -> String {
    if dir == "/" {
        format!("/{name}")
    } else {
        format!("{dir}/{name}")
    }
}

/// An argument as GRUB passes it on: quoted when it has whitespace.
fn grub_quote(arg: &str) -> String {
    if arg.contains(|c: char| c.is_ascii_whitespace()) {
        match arg.split_once('=') {
            Some((k, v)) if !k.contains(' ') => format!("{k}=\"{v}\""),
            _ => format!("\"{arg}\""),
        }
    } else {
        arg.to_string()
    }
}

fn open(disk: Rc<dyn BlockRead>, image: &str) -> Result<(Vec<Part>, Vec<String>), Error> {
    let table = read_table(&*disk).map_err(|reason| Error::PartitionTable {
        image: image.to_string(),
        reason,
    })?;
    let mut parts = Vec::new();
    let mut seen = table.skipped.clone();
    let mut unsupported: Option<(u32, &'static str)> = None;
    for p in &table.partitions {
        let name = part_name(p.number);
        if p.no_fs {
            continue;
        }
        let slice = Slice::new(disk.clone(), p.start, p.len);
        match detect(&slice) {
            FsKind::Ext => match ExtFs::open(slice) {
                Ok(fs) => {
                    seen.push(format!("{name}: ext2/3/4"));
                    parts.push(Part {
                        number: p.number,
                        fs,
                    })
                }
                Err(e) => seen.push(format!("{name}: ext2/3/4 that cannot be read: {e}")),
            },
            FsKind::Other(fs) => {
                seen.push(format!("{name}: {fs}"));
                // An EFI system partition (vfat) or swap is normal beside a root;
                // name them only when nothing else is there.
                let minor = matches!(fs, "vfat" | "swap");
                if unsupported.is_none_or(|(_, f)| matches!(f, "vfat" | "swap") && !minor) {
                    unsupported = Some((p.number, fs));
                }
            }
            FsKind::Unknown => seen.push(format!("{name}: no file system form-vmm knows")),
        }
    }
    if parts.is_empty() {
        if let Some((number, fs)) = unsupported {
            return Err(Error::Unsupported {
                image: image.to_string(),
                part: part_name(number),
                fs: fs.to_string(),
            });
        }
    }
    Ok((parts, seen))
}

fn catch<T>(image: &str, f: impl FnOnce() -> Result<T, Error>) -> Result<T, Error> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|_| {
        Err(Error::PartitionTable {
            image: image.to_string(),
            reason: "the image is damaged in a way the reader did not expect (it panicked)".into(),
        })
    })
}

fn located<'a>(
    disk: Rc<dyn BlockRead>,
    image: &'a str,
    limits: &'a Limits,
) -> Result<(Ctx<'a>, BootEntry), Error> {
    let (parts, seen) = open(disk, image)?;
    let ctx = Ctx {
        image,
        limits,
        parts,
    };
    let entry = ctx.find()?.ok_or_else(|| Error::NothingToBoot {
        image: image.to_string(),
        seen: if seen.is_empty() {
            "no partitions".into()
        } else {
            seen.join("; ")
        },
    })?;
    Ok((ctx, entry))
}

/// The image's default boot entry: which configuration, which files, which
/// arguments. `image` names the image in errors.
pub fn find_boot_entry(
    disk: impl BlockRead + 'static,
    image: &str,
    limits: &Limits,
) -> Result<BootEntry, Error> {
    let disk: Rc<dyn BlockRead> = Rc::new(disk);
    catch(image, || {
        located(disk, image, limits).map(|(_, entry)| entry)
    })
}

/// The default boot entry and its kernel and initrd bytes.
pub fn load_boot(
    disk: impl BlockRead + 'static,
    image: &str,
    limits: &Limits,
) -> Result<BootFiles, Error> {
    let disk: Rc<dyn BlockRead> = Rc::new(disk);
    catch(image, || {
        let (ctx, entry) = located(disk, image, limits)?;
        let p = ctx
            .parts
            .iter()
            .find(|p| p.number == entry.partition)
            .ok_or_else(|| ctx.entry_err(entry.partition, "the partition went away".into()))?;
        let kernel =
            p.fs.read(&entry.kernel, limits.max_kernel)
                .map_err(|e| ctx.file_err(p.number, &entry.kernel, format!("kernel: {e}")))?;
        let initrd = if entry.initrd.is_empty() {
            None
        } else {
            let initrd_err = |path: &str, e: ReadError| {
                ctx.file_err(
                    p.number,
                    path,
                    format!(
                        "initrd (all together at most {} bytes): {e}",
                        limits.max_initrd
                    ),
                )
            };
            // All sizes first, then one zeroed allocation that each file is
            // read into in place (each padded to 4 bytes, as GRUB does).
            let mut files = Vec::new();
            let mut total = 0u64;
            for path in &entry.initrd {
                let left = limits.max_initrd.saturating_sub(total);
                let file =
                    p.fs.open_file(path, left)
                        .map_err(|e| initrd_err(path, e))?;
                let at = total;
                total = (total + file.len).next_multiple_of(4);
                files.push((path, file, at));
            }
            // Fits: each file is within `max_initrd`, far below usize::MAX.
            let mut all = vec![0u8; total as usize];
            for (path, mut file, at) in files {
                let at = at as usize;
                let dst = &mut all[at..at + file.len as usize];
                p.fs.read_opened(&mut file, dst, None)
                    .map_err(|e| initrd_err(path, e))?;
            }
            Some(all)
        };
        Ok(BootFiles {
            entry,
            kernel,
            initrd,
        })
    })
}
