//! A reusable buffer aligned for O_DIRECT, between guest memory (any alignment) and
//! the image.

/// Memory alignment of direct-I/O buffers: the page size covers every logical
/// block size Linux supports.
const DIRECT_ALIGN: usize = 4096;

#[derive(Default)]
pub(crate) struct BounceBuffer {
    storage: Vec<u8>,
}

impl BounceBuffer {
    /// `len` bytes starting on a `DIRECT_ALIGN` boundary; contents unspecified.
    pub fn get(&mut self, len: usize) -> &mut [u8] {
        let needed = len + DIRECT_ALIGN;
        if self.storage.len() < needed {
            self.storage.resize(needed, 0);
        }
        let misalign = self.storage.as_ptr() as usize % DIRECT_ALIGN;
        let start = (DIRECT_ALIGN - misalign) % DIRECT_ALIGN;
        &mut self.storage[start..start + len]
    }
}
