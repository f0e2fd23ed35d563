//! Builds disk images for the tests with the real tools: `mkfs.ext4 -d` for file
//! systems with content, `sfdisk` for GPT and MBR tables (CI installs e2fsprogs,
//! fdisk, dosfstools and xfsprogs: `.ci/run`). A missing tool fails the test
//! with the package to install.
#![allow(dead_code)]

use std::fs;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A temporary directory, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!(
            "form-bootdisk-{tag}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn find_tool(tool: &str, package: &str) -> PathBuf {
    for dir in ["/usr/sbin", "/sbin", "/usr/bin", "/bin"] {
        let p = Path::new(dir).join(tool);
        if p.exists() {
            return p;
        }
    }
    panic!("{tool} is missing: install the {package} package (apt-get install {package}); .ci/run installs it in CI");
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Files to put in a file system: (path inside, content). Symlinks as
/// (path, target) in `links`.
#[derive(Default)]
pub struct Tree {
    pub files: Vec<(String, Vec<u8>)>,
    pub links: Vec<(String, String)>,
}

impl Tree {
    pub fn file(mut self, path: &str, content: impl Into<Vec<u8>>) -> Tree {
        self.files.push((path.to_string(), content.into()));
        self
    }

    pub fn link(mut self, path: &str, target: &str) -> Tree {
        self.links.push((path.to_string(), target.to_string()));
        self
    }

    fn write(&self, root: &Path) {
        fs::create_dir_all(root).unwrap();
        for (path, content) in &self.files {
            let p = root.join(path.trim_start_matches('/'));
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, content).unwrap();
        }
        for (path, target) in &self.links {
            let p = root.join(path.trim_start_matches('/'));
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::os::unix::fs::symlink(target, p).unwrap();
        }
    }
}

/// A file system image of `size_mib` MiB.
pub enum Fs {
    /// ext4 (or ext2/ext3 with `-t`) with this UUID and content.
    Ext {
        kind: &'static str,
        uuid: &'static str,
        tree: Tree,
    },
    Vfat,
    Xfs,
    /// Bytes of nothing in particular.
    Blank,
}

pub fn make_fs(dir: &TempDir, fs: &Fs, size_mib: u64) -> PathBuf {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let img = dir.path(&format!("fs{n}.img"));
    let f = fs::File::create(&img).unwrap();
    f.set_len(size_mib << 20).unwrap();
    drop(f);
    match fs {
        Fs::Ext { kind, uuid, tree } => {
            let root = dir.path(&format!("tree{n}"));
            tree.write(&root);
            let mkfs = find_tool("mkfs.ext4", "e2fsprogs");
            let mut cmd = Command::new(mkfs);
            cmd.args(["-q", "-F", "-t", kind, "-U", uuid, "-d"])
                .arg(&root)
                .arg(&img)
                .env("E2FSPROGS_FAKE_TIME", "1700000000");
            if size_mib >= 32 {
                // As cloud images have (mke2fs picks 1 KiB blocks below 512 MiB).
                cmd.args(["-b", "4096"]);
            }
            run(&mut cmd);
        }
        Fs::Vfat => run(Command::new(find_tool("mkfs.vfat", "dosfstools")).arg(&img)),
        Fs::Xfs => run(Command::new(find_tool("mkfs.xfs", "xfsprogs"))
            .args(["-q", "-f"])
            .arg(&img)),
        Fs::Blank => {}
    }
    img
}

/// A partitioned disk: `label` is "gpt" or "dos"; each partition a file system
/// image and an sfdisk type (e.g. "L" Linux, "U" EFI system, or a GUID).
/// Partitions start at 1 MiB and follow each other, 1 MiB aligned; `numbers`
/// (GPT only) places them at other entry numbers.
pub fn disk(
    dir: &TempDir,
    label: &str,
    parts: &[(PathBuf, &str)],
    numbers: Option<&[u32]>,
) -> PathBuf {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let img = dir.path(&format!("disk{n}.img"));
    let mut total = 1u64 << 20;
    let mut layout = Vec::new();
    for (fs_img, _) in parts {
        let len = fs::metadata(fs_img)
            .unwrap()
            .len()
            .next_multiple_of(1 << 20);
        layout.push((total, len));
        total += len;
    }
    total += 1 << 20;
    let f = fs::File::create(&img).unwrap();
    f.set_len(total).unwrap();
    drop(f);
    let mut script = format!("label: {label}\n");
    for (i, ((_, kind), (start, len))) in parts.iter().zip(&layout).enumerate() {
        let num = numbers.map(|n| n[i]);
        let prefix = match num {
            Some(num) => format!("{}{num} : ", img.display()),
            None => String::new(),
        };
        script.push_str(&format!(
            "{prefix}start={}, size={}, type={kind}\n",
            start / 512,
            len / 512
        ));
    }
    let mut child = Command::new(find_tool("sfdisk", "fdisk"))
        .args(["-q", "--no-reread", "--no-tell-kernel"])
        .arg(&img)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "sfdisk failed on\n{script}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut f = fs::OpenOptions::new().write(true).open(&img).unwrap();
    for ((fs_img, _), (start, _)) in parts.iter().zip(&layout) {
        let data = fs::read(fs_img).unwrap();
        f.seek(SeekFrom::Start(*start)).unwrap();
        f.write_all(&data).unwrap();
    }
    img
}

/// A kernel-like blob: random-ish bytes of `len`, different per `seed`.
pub fn blob(seed: u8, len: usize) -> Vec<u8> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ u64::from(seed);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

pub const UUID_ROOT: &str = "2f1c1a6e-0d3b-4c55-9e6a-6f1d2b3c4d5e";
pub const UUID_BOOT: &str = "7a8b9c0d-1e2f-4a3b-8c4d-5e6f7a8b9c0d";

/// Runs debugfs (read-write) on file system image `img` with `script`, one
/// command a line; returns its output.
pub fn debugfs(img: &Path, script: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let cmds = img.with_extension(format!("debugfs{n}"));
    fs::write(&cmds, script).unwrap();
    let out = Command::new(find_tool("debugfs", "e2fsprogs"))
        .arg("-w")
        .arg("-f")
        .arg(&cmds)
        .arg(img)
        .env("E2FSPROGS_FAKE_TIME", "1700000000")
        .output()
        .unwrap();
    let _ = fs::remove_file(&cmds);
    assert!(out.status.success(), "debugfs {script}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// One line of `debugfs -R "ex FILE"`: an index entry (`level < depth`) or an
/// extent (`level == depth`), its first file block, first disk block and
/// length in blocks, and whether it is uninitialized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExtentLine {
    pub level: u32,
    pub depth: u32,
    pub logical: u64,
    pub physical: u64,
    pub len: u64,
    pub uninit: bool,
}

/// The extent tree of `path` in file system image `img`, as debugfs shows it.
pub fn extents(img: &Path, path: &str) -> Vec<ExtentLine> {
    let out = debugfs(img, &format!("ex {path}\n"));
    let mut lines = Vec::new();
    for line in out.lines() {
        // " 1/ 1   3/ 75    16 -    23  1364 -  1371      8 Uninit"
        let t = line.replace('/', " / ").replace('-', " - ");
        let w: Vec<&str> = t.split_whitespace().collect();
        let Some(level) = w.first().and_then(|s| s.parse().ok()) else {
            continue;
        };
        let nums: Vec<u64> = w
            .iter()
            .filter(|s| **s != "/" && **s != "-")
            .map_while(|s| s.parse().ok())
            .collect();
        // level depth entry entries logical [logical_end] physical [physical_end] len
        // An index entry: logical range, block, blocks covered; an extent:
        // logical range, physical range, length.
        let (logical, physical, len) = match nums.len() {
            8 => (nums[4], nums[6], nums[7]),
            9 => (nums[4], nums[6], nums[8]),
            _ => continue,
        };
        lines.push(ExtentLine {
            level,
            depth: nums[1] as u32,
            logical,
            physical,
            len,
            uninit: line.contains("Uninit"),
        });
    }
    lines
}

/// Byte offset of `path`'s inode in file system image `img` (debugfs `imap`).
pub fn inode_offset(img: &Path, path: &str, block_size: u64) -> u64 {
    let out = debugfs(img, &format!("imap {path}\n"));
    // "Inode 14 is part of block group 0\n\tlocated at block 37, offset 0x0d00"
    let rest = out.split("located at block ").nth(1).unwrap();
    let (block, rest) = rest.split_once(", offset 0x").unwrap();
    let offset = u64::from_str_radix(rest.trim(), 16).unwrap();
    block.trim().parse::<u64>().unwrap() * block_size + offset
}

/// The inode number of `path` in file system image `img` (debugfs `imap`).
pub fn inode_number(img: &Path, path: &str) -> u32 {
    let out = debugfs(img, &format!("imap {path}\n"));
    let rest = out.split("Inode ").nth(1).unwrap();
    rest.split_whitespace().next().unwrap().parse().unwrap()
}

/// CRC-32C as ext4 uses it: no final inversion, `crc` the running value.
pub fn crc32c(mut crc: u32, data: &[u8]) -> u32 {
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82f6_3b78
            } else {
                crc >> 1
            };
        }
    }
    crc
}

/// Rewrites the metadata checksum of inode `ino` at `inode` (bytes of `fs`, a
/// file system image with metadata_csum and 256-byte inodes), so that an edit
/// of the inode gets past the checksum to what reads it next.
pub fn fix_inode_checksum(fs: &mut [u8], ino: u32, inode: usize) {
    let sb = &fs[1024..2048];
    let incompat = u32::from_le_bytes(sb[0x60..0x64].try_into().unwrap());
    let seed = if incompat & 0x2000 != 0 {
        u32::from_le_bytes(sb[0x270..0x274].try_into().unwrap())
    } else {
        crc32c(!0, &sb[0x68..0x78])
    };
    let raw = &mut fs[inode..inode + 256];
    raw[0x7c..0x7e].fill(0);
    raw[0x82..0x84].fill(0);
    let mut crc = crc32c(seed, &ino.to_le_bytes());
    crc = crc32c(crc, &raw[0x64..0x68]);
    crc = crc32c(crc, raw);
    raw[0x7c..0x7e].copy_from_slice(&(crc as u16).to_le_bytes());
    raw[0x82..0x84].copy_from_slice(&((crc >> 16) as u16).to_le_bytes());
}

/// A file system image whose file `path` is `content` in many extents: free
/// space cut into 8-block holes by deleting every other filler file, then the
/// file written into them with debugfs. Blocks of 1 KiB, `size_mib` MiB.
pub fn fragmented_fs(
    dir: &TempDir,
    tree: Tree,
    path: &str,
    content: &[u8],
    size_mib: u64,
) -> PathBuf {
    let mut tree = tree;
    for i in 0..(content.len() / 8192 + 2) {
        tree = tree.file(&format!("/fill/{i:04}"), blob(i as u8, 8192));
    }
    let fillers = tree
        .files
        .iter()
        .filter(|(p, _)| p.starts_with("/fill/"))
        .count();
    let img = make_fs(
        dir,
        &Fs::Ext {
            kind: "ext4",
            uuid: UUID_ROOT,
            tree,
        },
        size_mib,
    );
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let host = dir.path(&format!("content{n}"));
    fs::write(&host, content).unwrap();
    let (parent, name) = path.rsplit_once('/').unwrap();
    let mut script = String::new();
    for i in (0..fillers).step_by(2) {
        script.push_str(&format!("rm /fill/{i:04}\n"));
    }
    let parent = if parent.is_empty() { "/" } else { parent };
    // mkdir fails harmlessly when the directory is there.
    script.push_str(&format!(
        "mkdir {parent}\ncd {parent}\nwrite {} {name}\n",
        host.display()
    ));
    debugfs(&img, &script);
    img
}
