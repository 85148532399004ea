//! The binary encoding of a [`DiskIndex`]: `NUBOIDX1`, the disk's size and
//! the chunk count (u64 little-endian each), then per chunk a flag byte
//! (0: all zeros, 1: a chunk name) and 32 bytes (the name, or zeros).
//! Fixed-size records keep an index of a 1 TiB disk at 33 MiB before
//! compression, and decoding checks every length and flag so a damaged
//! index is refused with an error rather than read wrong.

use crate::{DiskIndex, CHUNK_SIZE};

const MAGIC: &[u8; 8] = b"NUBOIDX1";
const HEADER: usize = 8 + 8 + 8;
const RECORD: usize = 33;

/// Why bytes are not an index.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IndexError {
    #[error("not a disk index (bad magic)")]
    Magic,
    #[error("truncated: {0} bytes")]
    Truncated(usize),
    #[error("{count} chunks do not cover a disk of {size} bytes")]
    Count { size: u64, count: u64 },
    #[error("length {len} does not match {count} chunks")]
    Length { len: usize, count: u64 },
    #[error("chunk {0} has an unknown flag {1}")]
    Flag(u64, u8),
}

/// The number of chunks of a disk of `size` bytes.
pub fn chunk_count(size: u64) -> u64 {
    size.div_ceil(CHUNK_SIZE)
}

pub fn encode(index: &DiskIndex) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + index.chunks.len() * RECORD);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&index.size.to_le_bytes());
    out.extend_from_slice(&(index.chunks.len() as u64).to_le_bytes());
    for c in &index.chunks {
        match c {
            None => {
                out.push(0);
                out.extend_from_slice(&[0; 32]);
            }
            Some(name) => {
                out.push(1);
                out.extend_from_slice(name);
            }
        }
    }
    out
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(v)
}

pub fn decode(bytes: &[u8]) -> Result<DiskIndex, IndexError> {
    if bytes.len() < HEADER {
        return Err(IndexError::Truncated(bytes.len()));
    }
    if &bytes[..8] != MAGIC {
        return Err(IndexError::Magic);
    }
    let size = u64_at(bytes, 8);
    let count = u64_at(bytes, 16);
    if count != chunk_count(size) {
        return Err(IndexError::Count { size, count });
    }
    let want = usize::try_from(count).ok().and_then(|c| c.checked_mul(RECORD)).and_then(|b| b.checked_add(HEADER));
    if want != Some(bytes.len()) {
        return Err(IndexError::Length { len: bytes.len(), count });
    }
    let mut chunks = Vec::with_capacity(count as usize);
    for (i, rec) in bytes[HEADER..].chunks_exact(RECORD).enumerate() {
        match rec[0] {
            0 => chunks.push(None),
            1 => {
                let mut name = [0u8; 32];
                name.copy_from_slice(&rec[1..]);
                chunks.push(Some(name));
            }
            f => return Err(IndexError::Flag(i as u64, f)),
        }
    }
    Ok(DiskIndex { size, chunks })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> DiskIndex {
        DiskIndex { size: 3 * CHUNK_SIZE - 5, chunks: vec![Some([1; 32]), None, Some([0xfe; 32])] }
    }

    #[test]
    fn round_trip() {
        let ix = sample();
        let b = encode(&ix);
        assert_eq!(b.len(), HEADER + 3 * RECORD);
        assert_eq!(decode(&b).unwrap(), ix);
        let empty = DiskIndex { size: 0, chunks: vec![] };
        assert_eq!(decode(&encode(&empty)).unwrap(), empty);
    }

    #[test]
    fn malformed_refused() {
        let b = encode(&sample());
        assert_eq!(decode(&b[..10]), Err(IndexError::Truncated(10)));
        assert!(matches!(decode(&b[..b.len() - 1]), Err(IndexError::Length { .. })));
        let mut extra = b.clone();
        extra.push(0);
        assert!(matches!(decode(&extra), Err(IndexError::Length { .. })));
        let mut magic = b.clone();
        magic[0] = b'X';
        assert_eq!(decode(&magic), Err(IndexError::Magic));
        let mut flag = b.clone();
        flag[HEADER + RECORD] = 7;
        assert_eq!(decode(&flag), Err(IndexError::Flag(1, 7)));
        let mut count = b.clone();
        count[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(decode(&count), Err(IndexError::Count { .. })));
        // A size whose chunk count overflows the length computation.
        let mut huge = b.clone();
        huge[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
        huge[16..24].copy_from_slice(&chunk_count(u64::MAX).to_le_bytes());
        assert!(matches!(decode(&huge), Err(IndexError::Length { .. })));
        // Random garbage never panics.
        for n in 0..200 {
            let junk: Vec<u8> = (0..n).map(|_| rand::random()).collect();
            assert!(decode(&junk).is_err());
        }
    }
}
