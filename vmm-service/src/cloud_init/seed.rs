//! The seed disk: a FAT file system labelled `CIDATA` with the seed files in its
//! root, which cloud-init's NoCloud source (and the lab's busybox init) look for.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::files::SeedFiles;

/// NoCloud finds the seed by this label; FAT labels are 11 bytes, space-padded.
pub const SEED_LABEL: &str = "CIDATA";
const LABEL_BYTES: [u8; 11] = *b"CIDATA     ";
const MIB: u64 = 1 << 20;
/// Room for the boot sector, FATs, root directory and a cluster's slack per file.
const FAT_OVERHEAD: u64 = 256 << 10;

#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    #[error("cannot write the cloud-init seed image {path}: {source}; check that the service's state directory is writable and has space")]
    Write { path: PathBuf, source: io::Error },
}

/// The image size for `files`: whole MiB, at least 1.
pub fn image_size(files: &SeedFiles) -> u64 {
    let content: u64 = files
        .named()
        .iter()
        .map(|(_, text)| text.len() as u64)
        .sum();
    (content + FAT_OVERHEAD).div_ceil(MIB).max(1) * MIB
}

/// Writes the seed image to `path`, replacing any earlier one only once the new one
/// is complete. Owner-only: user-data may carry secrets.
pub fn write_seed_image(path: &Path, files: &SeedFiles) -> Result<(), SeedError> {
    let fail = |source| SeedError::Write {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(fail)?;
    }
    let partial = partial_path(path);
    let written = build(&partial, files).and_then(|()| fs::rename(&partial, path));
    if let Err(e) = written {
        let _ = fs::remove_file(&partial);
        return Err(fail(e));
    }
    Ok(())
}

/// Removes the seed image; an absent one is not an error.
pub fn remove_seed_image(path: &Path) -> io::Result<()> {
    let _ = fs::remove_file(partial_path(path));
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

fn partial_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    path.with_file_name(name)
}

fn build(path: &Path, files: &SeedFiles) -> io::Result<()> {
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.set_len(image_size(files))?;
    fatfs::format_volume(
        &mut file,
        fatfs::FormatVolumeOptions::new().volume_label(LABEL_BYTES),
    )?;
    {
        let fs = fatfs::FileSystem::new(&mut file, fatfs::FsOptions::new())?;
        for (name, text) in files.named() {
            let mut entry = fs.root_dir().create_file(name)?;
            entry.truncate()?;
            entry.write_all(text.as_bytes())?;
            entry.flush()?;
        }
        fs.unmount()?;
    }
    file.sync_all()
}

/// A seed image as read back: its volume label and each file in its root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeedImage {
    pub label: String,
    /// (name, text), sorted by name.
    pub files: Vec<(String, String)>,
}

/// Reads a seed image back (tests, and operators checking what a guest was given).
pub fn read_seed_image(path: &Path) -> io::Result<SeedImage> {
    use std::io::Read;
    let fs = fatfs::FileSystem::new(File::open(path)?, fatfs::FsOptions::new())?;
    let label = fs
        .read_volume_label_from_root_dir()?
        .unwrap_or_else(|| fs.volume_label());
    let mut files = Vec::new();
    for entry in fs.root_dir().iter() {
        let entry = entry?;
        if entry.is_file() {
            let mut text = String::new();
            entry.to_file().read_to_string(&mut text)?;
            files.push((entry.file_name(), text));
        }
    }
    files.sort();
    Ok(SeedImage { label, files })
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn files(user_data: String) -> SeedFiles {
        SeedFiles {
            meta_data: "instance-id: \"vm\"\n".into(),
            user_data,
            network_config: "version: 2\n".into(),
        }
    }

    #[test]
    fn the_image_holds_the_label_and_the_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vms/vm/seed.img");
        let files = files("#cloud-config\nhostname: \"vm\"\n".into());
        write_seed_image(&path, &files).unwrap();
        let meta = fs::metadata(&path).unwrap();
        assert_eq!(meta.len(), MIB);
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let image = read_seed_image(&path).unwrap();
        assert_eq!(image.label, SEED_LABEL);
        // blkid reads the label from the root directory, older tools from the boot
        // sector: both must say CIDATA.
        let fs =
            fatfs::FileSystem::new(File::open(&path).unwrap(), fatfs::FsOptions::new()).unwrap();
        assert_eq!(fs.volume_label(), SEED_LABEL);
        assert_eq!(
            image.files,
            vec![
                ("meta-data".to_string(), files.meta_data.clone()),
                ("network-config".to_string(), files.network_config.clone()),
                ("user-data".to_string(), files.user_data.clone()),
            ]
        );
        assert!(!partial_path(&path).exists());
    }

    #[test]
    fn large_user_data_grows_the_image_and_rewriting_replaces_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seed.img");
        let big = "#!/bin/sh\n".to_string() + &"echo x\n".repeat(400_000);
        let files_big = files(big.clone());
        write_seed_image(&path, &files_big).unwrap();
        assert_eq!(fs::metadata(&path).unwrap().len(), image_size(&files_big));
        assert!(image_size(&files_big) >= 3 * MIB);
        let read = read_seed_image(&path).unwrap().files;
        assert_eq!(read[2].1, big);

        let small = files("#cloud-config\n".into());
        write_seed_image(&path, &small).unwrap();
        let read = read_seed_image(&path).unwrap().files;
        assert_eq!(read[2].1, "#cloud-config\n");
        remove_seed_image(&path).unwrap();
        assert!(!path.exists());
        remove_seed_image(&path).unwrap();
    }

    /// What guests use to find and check the seed (blkid's probe, as udev and
    /// cloud-init's `blkid -tLABEL=CIDATA` do; the FAT checker) agree with fatfs.
    /// Both are optional host tools: absent, the check is skipped with a note.
    #[test]
    fn blkid_and_fsck_accept_the_image() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seed.img");
        write_seed_image(&path, &files("#cloud-config\n".into())).unwrap();
        match std::process::Command::new("blkid")
            .args(["-p", "-o", "export"])
            .arg(&path)
            .output()
        {
            Ok(out) => {
                let text = String::from_utf8_lossy(&out.stdout);
                assert!(text.contains("TYPE=vfat\n"), "{text}");
                assert!(text.contains("LABEL=CIDATA\n"), "{text}");
            }
            Err(e) => eprintln!("skipping the blkid check: {e}"),
        }
        match std::process::Command::new("fsck.fat")
            .arg("-n")
            .arg(&path)
            .output()
        {
            Ok(out) => assert!(
                out.status.success(),
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
            Err(e) => eprintln!("skipping the fsck.fat check: {e}"),
        }
    }

    #[test]
    fn an_unwritable_place_is_an_error_naming_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let blocker = dir.path().join("file");
        fs::write(&blocker, b"").unwrap();
        let path = blocker.join("seed.img");
        let err = write_seed_image(&path, &files(String::new())).unwrap_err();
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );
    }
}
