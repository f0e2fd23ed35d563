//! The reader on real images: GPT and MBR tables written by sfdisk, ext2/3/4 file
//! systems written by mkfs.ext4, with the boot layouts of common cloud images.

mod common;

use common::*;
use form_bootdisk::{find_boot_entry, load_boot, ConfigKind, Error, Limits};
use std::fs::File;

const UBUNTU_CFG: &str = r#"
if [ -s $prefix/grubenv ]; then
  set have_grubenv=true
  load_env
fi
if [ "${next_entry}" ] ; then
   set default="${next_entry}"
   set next_entry=
   save_env next_entry
   set boot_once=true
else
   set default="0"
fi
if [ x"${feature_menuentry_id}" = xy ]; then
  menuentry_id_option="--id"
else
  menuentry_id_option=""
fi
function recordfail {
  set recordfail=1
}
menuentry 'Ubuntu' --class ubuntu $menuentry_id_option 'gnulinux-simple-x' {
	recordfail
	insmod ext2
	search --no-floppy --fs-uuid --set=root 7a8b9c0d-1e2f-4a3b-8c4d-5e6f7a8b9c0d
	linux	/vmlinuz-6.8.0-31-generic root=LABEL=cloudimg-rootfs ro  console=tty1 console=ttyS0
	initrd	/initrd.img-6.8.0-31-generic
}
submenu 'Advanced options for Ubuntu' $menuentry_id_option 'gnulinux-advanced-x' {
	menuentry 'Ubuntu, with Linux 6.5.0-9-generic' --class ubuntu $menuentry_id_option 'gnulinux-6.5.0-9-generic-advanced-x' {
		linux	/vmlinuz-6.5.0-9-generic root=LABEL=cloudimg-rootfs ro quiet
		initrd	/initrd.img-6.5.0-9-generic
	}
}
"#;

fn open(path: &std::path::Path) -> File {
    File::open(path).unwrap()
}

/// Ubuntu 24.04's layout: root on partition 1, a separate /boot on 16 with
/// /grub/grub.cfg, an EFI system partition (vfat) on 15.
fn ubuntu(dir: &TempDir, grubenv: Option<&str>) -> std::path::PathBuf {
    let root = make_fs(
        dir,
        &Fs::Ext {
            kind: "ext4",
            uuid: UUID_ROOT,
            tree: Tree::default()
                .file("/etc/fstab", "LABEL=cloudimg-rootfs / ext4 defaults 0 1\n")
                .file("/boot/.keep", ""),
        },
        8,
    );
    let mut boot_tree = Tree::default()
        .file("/grub/grub.cfg", UBUNTU_CFG)
        .file("/vmlinuz-6.8.0-31-generic", blob(1, 300_000))
        .file("/initrd.img-6.8.0-31-generic", blob(2, 500_001))
        .file("/vmlinuz-6.5.0-9-generic", blob(3, 1000))
        .file("/initrd.img-6.5.0-9-generic", blob(4, 1000))
        .link("/vmlinuz", "vmlinuz-6.8.0-31-generic");
    if let Some(env) = grubenv {
        boot_tree = boot_tree.file("/grub/grubenv", env);
    }
    let boot = make_fs(
        dir,
        &Fs::Ext {
            kind: "ext4",
            uuid: UUID_BOOT,
            tree: boot_tree,
        },
        8,
    );
    let esp = make_fs(dir, &Fs::Vfat, 2);
    disk(
        dir,
        "gpt",
        &[(root, "L"), (esp, "U"), (boot, "L")],
        Some(&[1, 15, 16]),
    )
}

#[test]
fn ubuntu_separate_boot_partition_grub_default() {
    let dir = TempDir::new("ubuntu");
    let img = ubuntu(&dir, None);
    let files = load_boot(open(&img), "ubuntu.img", &Limits::default()).unwrap();
    let e = &files.entry;
    assert_eq!(e.kind, ConfigKind::GrubCfg);
    assert_eq!((e.config_partition, e.partition), (16, 16));
    assert_eq!(e.config_path, "/grub/grub.cfg");
    assert_eq!(e.title, "Ubuntu");
    assert_eq!(e.kernel, "/vmlinuz-6.8.0-31-generic");
    assert_eq!(e.initrd, ["/initrd.img-6.8.0-31-generic"]);
    assert_eq!(
        e.cmdline(None),
        "root=LABEL=cloudimg-rootfs ro console=tty1 console=ttyS0"
    );
    assert_eq!(
        e.cmdline(Some("systemd.unit=rescue.target")),
        "root=LABEL=cloudimg-rootfs ro console=tty1 console=ttyS0 systemd.unit=rescue.target"
    );
    assert_eq!(files.kernel, blob(1, 300_000));
    let initrd = files.initrd.unwrap();
    // Padded to 4 bytes.
    assert_eq!(initrd.len(), 500_004);
    assert_eq!(&initrd[..500_001], &blob(2, 500_001)[..]);
}

#[test]
fn grubenv_next_entry_is_followed_into_the_submenu() {
    let dir = TempDir::new("ubuntu-env");
    let env = "# GRUB Environment Block\nnext_entry=gnulinux-advanced-x>gnulinux-6.5.0-9-generic-advanced-x\n";
    let env = format!("{env}{}", "#".repeat(1024 - env.len()));
    let img = ubuntu(&dir, Some(&env));
    let e = find_boot_entry(open(&img), "ubuntu.img", &Limits::default()).unwrap();
    assert_eq!(e.title, "Ubuntu, with Linux 6.5.0-9-generic");
    assert_eq!(e.kernel, "/vmlinuz-6.5.0-9-generic");
    assert_eq!(
        e.cmdline(None),
        "root=LABEL=cloudimg-rootfs ro quiet console=ttyS0"
    );
}

/// Debian's layout: one ext4 root (partition 1) with /boot/grub/grub.cfg, MBR.
#[test]
fn debian_mbr_root_with_boot_directory() {
    let dir = TempDir::new("debian");
    let cfg = "set default=\"0\"\nmenuentry 'Debian GNU/Linux' --class debian {\n\tsearch --no-floppy --fs-uuid --set=root 2f1c1a6e\n\tlinux\t/boot/vmlinuz-6.1.0-18-cloud-amd64 root=PARTUUID=x ro console=tty0 console=ttyS0,115200 earlyprintk=ttyS0,115200 consoleblank=0\n\tinitrd\t/boot/initrd.img-6.1.0-18-cloud-amd64\n}\n";
    let root = make_fs(
        &dir,
        &Fs::Ext {
            kind: "ext4",
            uuid: UUID_ROOT,
            tree: Tree::default()
                .file("/boot/grub/grub.cfg", cfg)
                .file("/boot/vmlinuz-6.1.0-18-cloud-amd64", blob(5, 4096))
                .file("/boot/initrd.img-6.1.0-18-cloud-amd64", blob(6, 4096)),
        },
        8,
    );
    let img = disk(&dir, "dos", &[(root, "L")], None);
    let files = load_boot(open(&img), "debian.img", &Limits::default()).unwrap();
    assert_eq!(files.entry.partition, 1);
    assert_eq!(files.entry.kernel, "/boot/vmlinuz-6.1.0-18-cloud-amd64");
    assert_eq!(files.kernel, blob(5, 4096));
    assert!(files.entry.cmdline(None).ends_with("consoleblank=0"));
}

/// Fedora's layout: /boot (ext4) with grub2's blscfg and BLS entries; the root
/// is btrfs, which is never read.
#[test]
fn fedora_blscfg_with_saved_entry() {
    let dir = TempDir::new("fedora");
    let entry = |v: &str, title: &str| {
        format!("title {title}\nversion {v}\nlinux /vmlinuz-{v}\ninitrd /initramfs-{v}.img\noptions root=UUID=r ro rootflags=subvol=root $extra\n")
    };
    let boot = make_fs(
        &dir,
        &Fs::Ext {
            kind: "ext4",
            uuid: UUID_BOOT,
            tree: Tree::default()
                .file("/grub2/grub.cfg", "load_env -f ${config_directory}/grubenv\nset default=\"${saved_entry}\"\nblscfg\n")
                .file("/grub2/grubenv", "# GRUB Environment Block\nsaved_entry=abc-6.8.5-301.fc40.x86_64\nextra=rhgb quiet\n")
                .file("/loader/entries/abc-6.8.5-301.fc40.x86_64.conf", entry("6.8.5-301.fc40.x86_64", "Fedora Linux (6.8.5-301.fc40.x86_64) 40"))
                .file("/loader/entries/abc-6.10.6-200.fc40.x86_64.conf", entry("6.10.6-200.fc40.x86_64", "Fedora Linux (6.10.6-200.fc40.x86_64) 40"))
                .file("/vmlinuz-6.8.5-301.fc40.x86_64", blob(7, 100))
                .file("/initramfs-6.8.5-301.fc40.x86_64.img", blob(8, 100))
                .file("/vmlinuz-6.10.6-200.fc40.x86_64", blob(9, 100))
                .file("/initramfs-6.10.6-200.fc40.x86_64.img", blob(10, 100)),
        },
        8,
    );
    let esp = make_fs(&dir, &Fs::Vfat, 2);
    let img = disk(&dir, "gpt", &[(esp, "U"), (boot, "L")], None);
    let e = find_boot_entry(open(&img), "fedora.img", &Limits::default()).unwrap();
    assert_eq!(e.kind, ConfigKind::Bls);
    assert_eq!(e.partition, 2);
    assert_eq!(e.title, "Fedora Linux (6.8.5-301.fc40.x86_64) 40");
    assert_eq!(
        e.config_path,
        "/loader/entries/abc-6.8.5-301.fc40.x86_64.conf"
    );
    assert_eq!(e.kernel, "/vmlinuz-6.8.5-301.fc40.x86_64");
    assert_eq!(e.args, "root=UUID=r ro rootflags=subvol=root rhgb quiet");
}

/// BLS without GRUB (systemd-boot style): the newest version is the default.
#[test]
fn bls_alone_newest_version_first() {
    let dir = TempDir::new("bls");
    let entry = |v: &str| {
        format!("title Linux {v}\nversion {v}\nlinux /boot/vmlinuz-{v}\noptions root=/dev/vda1\n")
    };
    let root = make_fs(
        &dir,
        &Fs::Ext {
            kind: "ext3",
            uuid: UUID_ROOT,
            tree: Tree::default()
                .file("/boot/loader/entries/m-5.14.0-9.conf", entry("5.14.0-9"))
                .file("/boot/loader/entries/m-5.14.0-70.conf", entry("5.14.0-70"))
                .file(
                    "/boot/loader/entries/m-5.14.0-362.conf",
                    entry("5.14.0-362"),
                )
                .file("/boot/vmlinuz-5.14.0-9", blob(1, 10))
                .file("/boot/vmlinuz-5.14.0-70", blob(2, 10))
                .file("/boot/vmlinuz-5.14.0-362", blob(3, 10)),
        },
        8,
    );
    let img = disk(&dir, "gpt", &[(root, "L")], None);
    let files = load_boot(open(&img), "bls.img", &Limits::default()).unwrap();
    assert_eq!(files.entry.title, "Linux 5.14.0-362");
    assert_eq!(files.kernel, blob(3, 10));
    assert!(files.initrd.is_none());
    assert_eq!(files.entry.cmdline(None), "root=/dev/vda1 console=ttyS0");
}

/// No configuration: the newest /boot/vmlinuz-* by version, its initrd, and
/// root= the file system's UUID. A whole-disk ext2 file system (no table).
#[test]
fn newest_kernel_fallback_on_an_unpartitioned_ext2() {
    let dir = TempDir::new("newest");
    let root = make_fs(
        &dir,
        &Fs::Ext {
            kind: "ext2",
            uuid: UUID_ROOT,
            tree: Tree::default()
                .file("/boot/vmlinuz-6.1.0-9-amd64", blob(1, 10))
                .file("/boot/vmlinuz-6.1.0-10-amd64", blob(2, 10))
                .file("/boot/initrd.img-6.1.0-10-amd64", blob(3, 10))
                .file("/boot/vmlinuz-6.1.0-10-amd64.old", blob(4, 10))
                .link("/boot/vmlinuz", "vmlinuz-6.1.0-10-amd64"),
        },
        4,
    );
    let files = load_boot(open(&root), "plain.img", &Limits::default()).unwrap();
    let e = &files.entry;
    assert_eq!(e.kind, ConfigKind::NewestKernel);
    assert_eq!(e.partition, 0);
    assert_eq!(e.kernel, "/boot/vmlinuz-6.1.0-10-amd64");
    assert_eq!(e.initrd, ["/boot/initrd.img-6.1.0-10-amd64"]);
    assert_eq!(
        e.cmdline(None),
        format!("root=UUID={UUID_ROOT} ro console=ttyS0")
    );
    assert_eq!(files.kernel, blob(2, 10));
}

#[test]
fn xfs_root_is_refused_by_name() {
    let dir = TempDir::new("xfs");
    let root = make_fs(&dir, &Fs::Xfs, 300);
    let esp = make_fs(&dir, &Fs::Vfat, 2);
    let img = disk(&dir, "gpt", &[(esp, "U"), (root, "L")], None);
    let err = find_boot_entry(open(&img), "rocky.img", &Limits::default()).unwrap_err();
    assert!(matches!(err, Error::Unsupported { .. }), "{err}");
    assert_eq!(
        err.to_string(),
        "rocky.img partition 2: xfs is not supported: form-vmm reads ext2/3/4; give --kernel (payload.kernel)"
    );
}

#[test]
fn nothing_to_boot_names_what_was_looked_for() {
    let dir = TempDir::new("empty");
    let data = make_fs(
        &dir,
        &Fs::Ext {
            kind: "ext4",
            uuid: UUID_ROOT,
            tree: Tree::default().file("/home/user/notes", "x"),
        },
        4,
    );
    let blank = make_fs(&dir, &Fs::Blank, 1);
    let img = disk(&dir, "gpt", &[(data, "L"), (blank, "L")], None);
    let err = find_boot_entry(open(&img), "data.img", &Limits::default()).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.starts_with("data.img: no partition holds /boot/grub/grub.cfg, /boot/loader/entries or /boot/vmlinuz-*"),
        "{msg}"
    );
    assert!(msg.contains("partition 1: ext2/3/4"), "{msg}");
    assert!(
        msg.contains("partition 2: no file system form-vmm knows"),
        "{msg}"
    );
}

#[test]
fn missing_kernel_and_size_limits_are_reported() {
    let dir = TempDir::new("limits");
    let cfg = "menuentry 'A' {\n linux /boot/vmlinuz-a root=/dev/vda1\n initrd /boot/initrd-a\n}\n";
    let root = make_fs(
        &dir,
        &Fs::Ext {
            kind: "ext4",
            uuid: UUID_ROOT,
            tree: Tree::default()
                .file("/boot/grub/grub.cfg", cfg)
                .file("/boot/vmlinuz-a", blob(1, 5000)),
        },
        4,
    );
    let img = disk(&dir, "gpt", &[(root.clone(), "L")], None);
    let err = find_boot_entry(open(&img), "a.img", &Limits::default()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "a.img partition 1: /boot/initrd-a: the entry 'A' (/boot/grub/grub.cfg) names it, but no partition holds it"
    );
    let cfg_ok = cfg.replace(" initrd /boot/initrd-a\n", "");
    let root = make_fs(
        &dir,
        &Fs::Ext {
            kind: "ext4",
            uuid: UUID_ROOT,
            tree: Tree::default()
                .file("/boot/grub/grub.cfg", cfg_ok)
                .file("/boot/vmlinuz-a", blob(1, 5000)),
        },
        4,
    );
    let img = disk(&dir, "gpt", &[(root, "L")], None);
    let limits = Limits {
        max_kernel: 4096,
        ..Limits::default()
    };
    let err = load_boot(open(&img), "a.img", &limits).err().unwrap();
    assert_eq!(
        err.to_string(),
        "a.img partition 1: /boot/vmlinuz-a: kernel: 5000 bytes is more than the 4096 bytes form-vmm reads"
    );
}

#[test]
fn symlink_loops_are_errors() {
    let dir = TempDir::new("loop");
    let cfg = "menuentry 'A' {\n linux /boot/vmlinuz-a root=/dev/vda1\n}\n";
    let root = make_fs(
        &dir,
        &Fs::Ext {
            kind: "ext4",
            uuid: UUID_ROOT,
            tree: Tree::default()
                .file("/boot/grub/grub.cfg", cfg)
                .link("/boot/vmlinuz-a", "vmlinuz-b")
                .link("/boot/vmlinuz-b", "vmlinuz-a"),
        },
        4,
    );
    let img = disk(&dir, "gpt", &[(root, "L")], None);
    let err = find_boot_entry(open(&img), "a.img", &Limits::default()).unwrap_err();
    assert!(err.to_string().contains("no partition holds it"), "{err}");
}
