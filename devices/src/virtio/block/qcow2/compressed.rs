//! Compressed clusters: raw deflate (no zlib header), as QEMU writes them with
//! compression_type zlib, inflated into exactly one cluster.

use std::io;

use miniz_oxide::inflate::core::{decompress, inflate_flags, DecompressorOxide};
use miniz_oxide::inflate::TINFLStatus;

/// Inflates `input` into `out`, which must come out full (QEMU's rule: a stream
/// that ends short, or is damaged, is an I/O error).
pub(super) fn inflate_cluster(input: &[u8], out: &mut [u8]) -> io::Result<()> {
    let mut state = Box::<DecompressorOxide>::default();
    // The whole input is here and `out` holds the whole output: no wrapping window.
    let flags = inflate_flags::TINFL_FLAG_USING_NON_WRAPPING_OUTPUT_BUF;
    let (status, _read, written) = decompress(&mut state, input, out, 0, flags);
    match status {
        TINFLStatus::Done | TINFLStatus::HasMoreOutput if written == out.len() => Ok(()),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "a compressed cluster does not inflate to a whole cluster ({status:?}, \
                 {written} of {} bytes)",
                out.len()
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stored (uncompressed) deflate block: the simplest valid raw stream.
    fn stored(data: &[u8]) -> Vec<u8> {
        let len = data.len() as u16;
        let mut s = vec![1u8];
        s.extend_from_slice(&len.to_le_bytes());
        s.extend_from_slice(&(!len).to_le_bytes());
        s.extend_from_slice(data);
        s
    }

    #[test]
    fn inflates_a_whole_cluster_and_refuses_short_or_broken_streams() {
        let data: Vec<u8> = (0..512u32).map(|i| (i * 7) as u8).collect();
        let mut out = vec![0u8; 512];
        let mut input = stored(&data);
        input.extend_from_slice(&[0xaa; 100]); // sector padding after the stream
        inflate_cluster(&input, &mut out).unwrap();
        assert_eq!(out, data);

        let mut short = vec![0u8; 1024];
        assert!(inflate_cluster(&stored(&data), &mut short).is_err());
        assert!(inflate_cluster(&[0xff; 64], &mut out).is_err());
        assert!(inflate_cluster(&[], &mut out).is_err());
    }
}
