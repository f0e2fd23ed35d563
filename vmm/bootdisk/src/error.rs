//! What can go wrong, each naming what was looked for.

/// Why no boot entry came out of an image. Messages name the image (and the
/// partition) so they can be shown as they are.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{image}: cannot read the disk: {source}")]
    Io {
        image: String,
        source: std::io::Error,
    },
    #[error("{image}: {reason}")]
    PartitionTable { image: String, reason: String },
    #[error("{image} {part}: {fs} is not supported: form-vmm reads ext2/3/4; give --kernel (payload.kernel)")]
    Unsupported {
        image: String,
        part: String,
        fs: String,
    },
    #[error("{image}: no partition holds /boot/grub/grub.cfg, /boot/loader/entries or /boot/vmlinuz-* ({seen}); give --kernel (payload.kernel)")]
    NothingToBoot { image: String, seen: String },
    #[error("{image} {part}: {what}")]
    Entry {
        image: String,
        part: String,
        what: String,
    },
    #[error("{image} {part}: {path}: {what}")]
    File {
        image: String,
        part: String,
        path: String,
        what: String,
    },
}
