//! POSIX access ACLs, read and written as the kernel's `system.posix_acl_access`
//! extended attribute, for one thing only: letting a VMM's uid reopen the images the
//! service handed it (a reboot reopens `/proc/self/fd/N`, which the kernel checks
//! against the file's owner, mode and ACL) without changing who owns them. Each VMM
//! uid gets its own named entry, removed when its VM stops, so images shared by VMs
//! (a read-only base image) keep every other VM's entry.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

const XATTR: &[u8] = b"system.posix_acl_access\0";
const VERSION: u32 = 2;
const UNDEFINED_ID: u32 = u32::MAX;

const USER_OBJ: u16 = 0x01;
const USER: u16 = 0x02;
const GROUP_OBJ: u16 = 0x04;
const GROUP: u16 = 0x08;
const MASK: u16 = 0x10;
const OTHER: u16 = 0x20;

/// Read (4), write (2), execute or search (1), as in a mode's digit.
pub type Perm = u16;
pub const READ: Perm = 4;
pub const WRITE: Perm = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    tag: u16,
    perm: Perm,
    id: u32,
}

/// An access ACL, its entries in the order the kernel requires (by tag, then id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acl(Vec<Entry>);

impl Acl {
    /// The ACL a file without one has: its mode's three digits.
    pub fn from_mode(mode: u32) -> Acl {
        let digit = |shift: u32| ((mode >> shift) & 7) as Perm;
        Acl(vec![
            Entry {
                tag: USER_OBJ,
                perm: digit(6),
                id: UNDEFINED_ID,
            },
            Entry {
                tag: GROUP_OBJ,
                perm: digit(3),
                id: UNDEFINED_ID,
            },
            Entry {
                tag: OTHER,
                perm: digit(0),
                id: UNDEFINED_ID,
            },
        ])
    }

    pub fn parse(bytes: &[u8]) -> io::Result<Acl> {
        let invalid = || io::Error::new(io::ErrorKind::InvalidData, "malformed POSIX ACL");
        let (version, rest) = bytes.split_at_checked(4).ok_or_else(invalid)?;
        if u32::from_le_bytes(version.try_into().map_err(|_| invalid())?) != VERSION
            || rest.len() % 8 != 0
        {
            return Err(invalid());
        }
        Ok(Acl(rest
            .chunks_exact(8)
            .map(|c| Entry {
                tag: u16::from_le_bytes([c[0], c[1]]),
                perm: u16::from_le_bytes([c[2], c[3]]),
                id: u32::from_le_bytes([c[4], c[5], c[6], c[7]]),
            })
            .collect()))
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = VERSION.to_le_bytes().to_vec();
        for e in &self.0 {
            out.extend_from_slice(&e.tag.to_le_bytes());
            out.extend_from_slice(&e.perm.to_le_bytes());
            out.extend_from_slice(&e.id.to_le_bytes());
        }
        out
    }

    /// The permissions of `uid`'s named entry, if it has one.
    pub fn user(&self, uid: u32) -> Option<Perm> {
        self.0
            .iter()
            .find(|e| e.tag == USER && e.id == uid)
            .map(|e| e.perm)
    }

    /// Gives `uid` a named entry with `perm` (replacing one it had).
    pub fn set_user(&mut self, uid: u32, perm: Perm) {
        self.0.retain(|e| !(e.tag == USER && e.id == uid));
        self.0.push(Entry {
            tag: USER,
            perm,
            id: uid,
        });
        self.normalize();
    }

    /// Removes `uid`'s named entry; false if it had none.
    pub fn remove_user(&mut self, uid: u32) -> bool {
        let before = self.0.len();
        self.0.retain(|e| !(e.tag == USER && e.id == uid));
        let removed = self.0.len() != before;
        self.normalize();
        removed
    }

    /// Sorts the entries and sets the mask to what the group class holds, as
    /// setfacl does: a mask is required with named entries and must not hide the
    /// permission just granted. Without named entries the mask goes, so the kernel
    /// stores the ACL as a plain mode again.
    fn normalize(&mut self) {
        self.0.retain(|e| e.tag != MASK);
        let named = self.0.iter().any(|e| e.tag == USER || e.tag == GROUP);
        if named {
            let perm = self
                .0
                .iter()
                .filter(|e| matches!(e.tag, USER | GROUP_OBJ | GROUP))
                .fold(0, |acc, e| acc | e.perm);
            self.0.push(Entry {
                tag: MASK,
                perm,
                id: UNDEFINED_ID,
            });
        }
        self.0.sort_by_key(|e| (e.tag, e.id));
    }
}

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path with a NUL byte"))
}

/// The access ACL of `path` (following links: `/proc/self/fd/N` names the file).
pub fn read(path: &Path) -> io::Result<Acl> {
    let c = c_path(path)?;
    let mut buf = vec![0u8; 4096];
    // SAFETY: c and buf outlive the call; getxattr writes at most buf.len() bytes.
    let n = unsafe {
        libc::getxattr(
            c.as_ptr(),
            XATTR.as_ptr().cast(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ENODATA) => Ok(Acl::from_mode(
                std::fs::metadata(path)?.permissions().mode(),
            )),
            _ => Err(e),
        };
    }
    buf.truncate(n as usize);
    Acl::parse(&buf)
}

pub fn write(path: &Path, acl: &Acl) -> io::Result<()> {
    let c = c_path(path)?;
    let bytes = acl.to_bytes();
    // SAFETY: c and bytes outlive the call; setxattr only reads them.
    let rc = unsafe {
        libc::setxattr(
            c.as_ptr(),
            XATTR.as_ptr().cast(),
            bytes.as_ptr().cast(),
            bytes.len(),
            0,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Gives `uid` `perm` on `path` (a no-op when it has exactly that).
pub fn grant_user(path: &Path, uid: u32, perm: Perm) -> io::Result<()> {
    let mut acl = read(path)?;
    if acl.user(uid) == Some(perm) {
        return Ok(());
    }
    acl.set_user(uid, perm);
    write(path, &acl)
}

/// Takes `uid`'s named entry off `path`, if it has one.
pub fn revoke_user(path: &Path, uid: u32) -> io::Result<()> {
    let mut acl = read(path)?;
    if acl.remove_user(uid) {
        write(path, &acl)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_named_user_brings_a_mask_and_leaves_with_it() {
        let mut acl = Acl::from_mode(0o640);
        acl.set_user(100_001, READ | WRITE);
        acl.set_user(100_000, READ);
        let tags: Vec<(u16, u16, u32)> = acl.0.iter().map(|e| (e.tag, e.perm, e.id)).collect();
        assert_eq!(
            tags,
            vec![
                (USER_OBJ, 6, UNDEFINED_ID),
                (USER, 4, 100_000),
                (USER, 6, 100_001),
                (GROUP_OBJ, 4, UNDEFINED_ID),
                (MASK, 6, UNDEFINED_ID),
                (OTHER, 0, UNDEFINED_ID),
            ]
        );
        assert_eq!(Acl::parse(&acl.to_bytes()).unwrap(), acl);
        assert!(acl.remove_user(100_001));
        assert_eq!(acl.user(100_001), None);
        // The mask shrinks to what is left of the group class.
        assert!(acl.0.contains(&Entry {
            tag: MASK,
            perm: 4,
            id: UNDEFINED_ID
        }));
        assert!(acl.remove_user(100_000));
        assert!(!acl.remove_user(100_000));
        assert_eq!(acl, Acl::from_mode(0o640));
    }

    #[test]
    fn malformed_attributes_are_refused() {
        assert!(Acl::parse(b"").is_err());
        assert!(Acl::parse(&[1, 0, 0, 0]).is_err());
        assert!(Acl::parse(&[2, 0, 0, 0, 1, 0]).is_err());
        assert_eq!(Acl::parse(&[2, 0, 0, 0]).unwrap(), Acl(Vec::new()));
    }

    /// On a file system with ACLs (tmpfs and ext4 usually), a granted uid shows in
    /// the attribute and revoking gives the file its plain mode back.
    #[test]
    fn grant_and_revoke_on_a_real_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("disk.img");
        std::fs::write(&file, b"x").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        match grant_user(&file, 100_123, READ | WRITE) {
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
                eprintln!("skipping: no ACLs on {}", dir.path().display());
                return;
            }
            other => other.unwrap(),
        }
        assert_eq!(read(&file).unwrap().user(100_123), Some(READ | WRITE));
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o660, "the mask shows as the group digit");
        revoke_user(&file, 100_123).unwrap();
        assert_eq!(read(&file).unwrap(), Acl::from_mode(0o600));
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
}
