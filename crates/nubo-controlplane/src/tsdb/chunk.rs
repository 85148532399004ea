//! The compressed chunk format of the metrics store: one series' samples
//! as Gorilla streams (Facebook's "Gorilla: a fast, scalable, in-memory
//! time series database", 2015, as Prometheus' TSDB uses it):
//! delta-of-delta timestamps and XOR-ed floats, and a resource chunk that
//! packs the streams of all series of one resource (an instance or host)
//! for one flush into one byte string, one database row.
//!
//! Written here rather than taken from a crate: `tsz` (the one Gorilla
//! crate) has seen no release since 2017 and encodes timestamps in
//! seconds, where Nubo's samples are in milliseconds; `pco` compresses
//! whole numeric columns at once, which fits a flush but not a head that
//! grows one sample at a time and is read while it grows. The format is
//! small and its tests below pin it.
//!
//! A series stream holds samples in strictly increasing time order: the
//! head (see `head`) drops a sample at or before the series' newest one.

/// Appends bits, most significant first.
#[derive(Debug, Clone, Default)]
struct BitWriter {
    bytes: Vec<u8>,
    /// Bits used in the last byte (0..8; 0 = the next bit opens a byte).
    used: u8,
}

impl BitWriter {
    fn push_bit(&mut self, bit: bool) {
        if self.used == 0 {
            self.bytes.push(0);
        }
        if bit {
            if let Some(last) = self.bytes.last_mut() {
                *last |= 0x80 >> self.used;
            }
        }
        self.used = (self.used + 1) % 8;
    }

    /// The low `n` bits of `v` (n <= 64), most significant first.
    fn push_bits(&mut self, v: u64, n: u8) {
        for i in (0..n).rev() {
            self.push_bit((v >> i) & 1 == 1);
        }
    }
}

/// Reads what a [`BitWriter`] wrote.
struct BitReader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl BitReader<'_> {
    fn bit(&mut self) -> Option<bool> {
        let byte = *self.bytes.get(self.pos / 8)?;
        let bit = byte & (0x80 >> (self.pos % 8)) != 0;
        self.pos += 1;
        Some(bit)
    }

    fn bits(&mut self, n: u8) -> Option<u64> {
        let mut v = 0u64;
        for _ in 0..n {
            v = (v << 1) | u64::from(self.bit()?);
        }
        Some(v)
    }
}

/// `v`'s low `n` bits as a signed number (two's complement).
fn sign_extend(v: u64, n: u8) -> i64 {
    let shift = 64 - u32::from(n);
    ((v << shift) as i64) >> shift
}

/// Delta-of-delta buckets, Prometheus' choice for millisecond stamps:
/// (prefix, prefix length, value bits). Zero is the one-bit `0`.
const DOD_BUCKETS: [(u64, u8, u8); 3] = [(0b10, 2, 14), (0b110, 3, 17), (0b1110, 4, 20)];

/// One series' samples, compressed as they arrive.
#[derive(Debug, Clone, Default)]
pub struct SeriesEncoder {
    bits: BitWriter,
    count: u32,
    last_at: i64,
    last_delta: i64,
    last_value: u64,
    /// Leading and trailing zero bits of the last XOR written with its
    /// own window (`11` case); 0xff before the first.
    leading: u8,
    trailing: u8,
}

impl SeriesEncoder {
    pub fn new() -> Self {
        Self { leading: 0xff, ..Default::default() }
    }

    /// Samples so far.
    pub fn len(&self) -> u32 {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The stream so far (its length in samples is [`Self::len`]).
    pub fn bytes(&self) -> &[u8] {
        &self.bits.bytes
    }

    /// Appends a sample; `at_ms` must be after the previous one's (the
    /// caller checks it).
    pub fn push(&mut self, at_ms: i64, value: f64) {
        let v = value.to_bits();
        match self.count {
            0 => {
                self.bits.push_bits(at_ms as u64, 64);
                self.bits.push_bits(v, 64);
            }
            1 => {
                let delta = at_ms.wrapping_sub(self.last_at);
                self.bits.push_bits(delta as u64, 64);
                self.push_value(v);
                self.last_delta = delta;
            }
            _ => {
                let delta = at_ms.wrapping_sub(self.last_at);
                let dod = delta.wrapping_sub(self.last_delta);
                self.push_dod(dod);
                self.push_value(v);
                self.last_delta = delta;
            }
        }
        self.last_at = at_ms;
        self.last_value = v;
        self.count += 1;
    }

    fn push_dod(&mut self, dod: i64) {
        if dod == 0 {
            self.bits.push_bit(false);
            return;
        }
        for (prefix, len, n) in DOD_BUCKETS {
            let half = 1i64 << (n - 1);
            if (-half..half).contains(&dod) {
                self.bits.push_bits(prefix, len);
                self.bits.push_bits(dod as u64, n);
                return;
            }
        }
        self.bits.push_bits(0b1111, 4);
        self.bits.push_bits(dod as u64, 64);
    }

    fn push_value(&mut self, v: u64) {
        let xor = v ^ self.last_value;
        if xor == 0 {
            self.bits.push_bit(false);
            return;
        }
        self.bits.push_bit(true);
        // At most 31 leading zeros: the count has 5 bits.
        let leading = (xor.leading_zeros() as u8).min(31);
        let trailing = xor.trailing_zeros() as u8;
        if self.leading != 0xff && leading >= self.leading && trailing >= self.trailing {
            // Fits the previous window: its meaningful bits only.
            self.bits.push_bit(false);
            let n = 64 - self.leading - self.trailing;
            self.bits.push_bits(xor >> self.trailing, n);
        } else {
            self.bits.push_bit(true);
            let n = 64 - leading - trailing;
            self.bits.push_bits(u64::from(leading), 5);
            // 64 meaningful bits are written as 0: 6 bits hold 0..63.
            self.bits.push_bits(u64::from(n % 64), 6);
            self.bits.push_bits(xor >> trailing, n);
            self.leading = leading;
            self.trailing = trailing;
        }
    }
}

/// Decodes `count` samples of a series stream; None if it is cut short.
pub fn decode_series(bytes: &[u8], count: u32) -> Option<Samples> {
    let mut out = Vec::with_capacity(count as usize);
    if count == 0 {
        return Some(out);
    }
    let mut r = BitReader { bytes, pos: 0 };
    let mut at = r.bits(64)? as i64;
    let mut v = r.bits(64)?;
    out.push((at, f64::from_bits(v)));
    let (mut leading, mut trailing) = (0u8, 0u8);
    let mut delta = 0i64;
    for i in 1..count {
        if i == 1 {
            delta = r.bits(64)? as i64;
        } else {
            let dod = if !r.bit()? {
                0
            } else if !r.bit()? {
                sign_extend(r.bits(14)?, 14)
            } else if !r.bit()? {
                sign_extend(r.bits(17)?, 17)
            } else if !r.bit()? {
                sign_extend(r.bits(20)?, 20)
            } else {
                r.bits(64)? as i64
            };
            delta = delta.wrapping_add(dod);
        }
        at = at.wrapping_add(delta);
        if r.bit()? {
            if r.bit()? {
                leading = r.bits(5)? as u8;
                let n = match r.bits(6)? as u8 {
                    0 => 64,
                    n => n,
                };
                trailing = 64u8.checked_sub(leading)?.checked_sub(n)?;
            }
            let n = 64 - leading - trailing;
            v ^= r.bits(n)? << trailing;
        }
        out.push((at, f64::from_bits(v)));
    }
    Some(out)
}

/// Why a stored chunk could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ChunkError {
    #[error("metric chunk format {0} is not one this Nubo reads; it was written by a newer version")]
    Version(u8),
    #[error("metric chunk is cut short or damaged")]
    Truncated,
}

/// The chunk format's version byte.
const VERSION: u8 = 1;

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn get_varint(bytes: &[u8], pos: &mut usize) -> Result<u64, ChunkError> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *bytes.get(*pos).ok_or(ChunkError::Truncated)?;
        *pos += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err(ChunkError::Truncated)
}

/// Packs series streams (metric name, encoder) into one resource chunk:
/// a version byte, the number of series, then per series its name, its
/// sample count and its stream, each prefixed with its length, so that a
/// reader skips the series it does not want without decoding them.
pub fn pack<'a>(series: impl IntoIterator<Item = (&'a str, &'a SeriesEncoder)>) -> Vec<u8> {
    let series: Vec<_> = series.into_iter().filter(|(_, e)| !e.is_empty()).collect();
    let mut out = vec![VERSION];
    put_varint(&mut out, series.len() as u64);
    for (metric, enc) in series {
        put_varint(&mut out, metric.len() as u64);
        out.extend_from_slice(metric.as_bytes());
        put_varint(&mut out, u64::from(enc.len()));
        put_varint(&mut out, enc.bytes().len() as u64);
        out.extend_from_slice(enc.bytes());
    }
    out
}

/// One series' samples: (at_ms, value), in time order.
pub type Samples = Vec<(i64, f64)>;

/// Each series of a resource chunk: (metric, its samples), or only the
/// one named `only`.
pub fn unpack(bytes: &[u8], only: Option<&str>) -> Result<Vec<(String, Samples)>, ChunkError> {
    let version = *bytes.first().ok_or(ChunkError::Truncated)?;
    if version != VERSION {
        return Err(ChunkError::Version(version));
    }
    let mut pos = 1;
    let n = get_varint(bytes, &mut pos)?;
    let mut out = Vec::new();
    for _ in 0..n {
        let take = |pos: &mut usize, len: u64| -> Result<&[u8], ChunkError> {
            let end = pos.checked_add(usize::try_from(len).map_err(|_| ChunkError::Truncated)?);
            let s = end.and_then(|end| bytes.get(*pos..end)).ok_or(ChunkError::Truncated)?;
            *pos += s.len();
            Ok(s)
        };
        let name_len = get_varint(bytes, &mut pos)?;
        let name = take(&mut pos, name_len)?;
        let count = u32::try_from(get_varint(bytes, &mut pos)?).map_err(|_| ChunkError::Truncated)?;
        let len = get_varint(bytes, &mut pos)?;
        let stream = take(&mut pos, len)?;
        let name = std::str::from_utf8(name).map_err(|_| ChunkError::Truncated)?;
        if only.is_some_and(|o| o != name) {
            continue;
        }
        let samples = decode_series(stream, count).ok_or(ChunkError::Truncated)?;
        out.push((name.to_string(), samples));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(samples: &[(i64, f64)]) -> Vec<(i64, f64)> {
        let mut e = SeriesEncoder::new();
        for &(at, v) in samples {
            e.push(at, v);
        }
        decode_series(e.bytes(), e.len()).unwrap()
    }

    /// Bit-exact: values compare by their bits (so -0.0 stays -0.0).
    fn assert_same(a: &[(i64, f64)], b: &[(i64, f64)]) {
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b) {
            assert_eq!(x.0, y.0);
            assert_eq!(x.1.to_bits(), y.1.to_bits(), "{} vs {}", x.1, y.1);
        }
    }

    #[test]
    fn regular_samples_round_trip_and_compress() {
        let t0 = 1_796_000_000_000;
        let s: Vec<_> = (0..360).map(|i| (t0 + i * 10_000 + (i % 3), (i % 7) as f64 * 12.5)).collect();
        let mut e = SeriesEncoder::new();
        s.iter().for_each(|&(t, v)| e.push(t, v));
        assert_same(&decode_series(e.bytes(), e.len()).unwrap(), &s);
        // 16 bytes a sample as rows; a few bits here.
        assert!(e.bytes().len() < s.len() * 4, "{} bytes for {} samples", e.bytes().len(), s.len());
    }

    #[test]
    fn edge_values_round_trip() {
        let s = [
            (1, -1.5),
            (2, -0.0),
            (3, 0.0),
            (4, f64::MAX),
            (5, f64::MIN_POSITIVE),
            (6, -f64::MAX),
            (7, f64::INFINITY),
            (8, 1e-300),
            (9, 123_456_789.125),
            (10, 123_456_789.125),
        ];
        assert_same(&round_trip(&s), &s);
    }

    #[test]
    fn huge_and_irregular_time_gaps_round_trip() {
        let s = [
            (-5_000, 1.0),
            (0, 2.0),
            (1, 3.0),
            (8_000_000_000_000, 4.0),
            (8_000_000_000_001, 5.0),
            (8_000_000_009_000, 6.0),
            (8_000_000_009_000 + (1 << 13), 7.0),
            (8_000_000_009_000 + (1 << 13) + (1 << 16), 8.0),
            (8_000_000_009_000 + (1 << 13) + (1 << 16) + (1 << 19), 9.0),
            (i64::MAX / 2, 10.0),
            (i64::MAX, 11.0),
        ];
        assert_same(&round_trip(&s), &s);
    }

    #[test]
    fn every_bucket_boundary_round_trips() {
        // Deltas-of-deltas at each bucket's edges, both signs.
        let mut s = vec![(0i64, 0.0), (1_000_000_000, 0.0)];
        let mut delta = 1_000_000_000i64;
        for dod in [8191i64, -8192, 8192, -8193, 65535, -65536, 65536, 524287, -524288, 524288, -524289] {
            delta += dod;
            let last = s.last().unwrap().0;
            s.push((last + delta, dod as f64));
        }
        assert_same(&round_trip(&s), &s);
    }

    #[test]
    fn a_resource_chunk_holds_its_series_and_reads_one_alone() {
        let mut cpu = SeriesEncoder::new();
        let mut mem = SeriesEncoder::new();
        let empty = SeriesEncoder::new();
        for i in 0..6 {
            cpu.push(1000 + i * 10, i as f64);
            mem.push(1005 + i * 10, 1e9 + i as f64);
        }
        let bytes = pack([("cpu_percent", &cpu), ("gone", &empty), ("memory_rss_bytes", &mem)]);
        let all = unpack(&bytes, None).unwrap();
        assert_eq!(all.iter().map(|(m, _)| m.as_str()).collect::<Vec<_>>(), ["cpu_percent", "memory_rss_bytes"]);
        let only = unpack(&bytes, Some("memory_rss_bytes")).unwrap();
        assert_eq!(only.len(), 1);
        assert_eq!(only[0].1[5], (1055, 1e9 + 5.0));
    }

    #[test]
    fn damaged_chunks_are_errors_not_panics() {
        let mut e = SeriesEncoder::new();
        (0..20).for_each(|i| e.push(i * 10, i as f64 * 0.3));
        let bytes = pack([("m", &e)]);
        for cut in 0..bytes.len() {
            assert!(unpack(&bytes[..cut], None).is_err(), "cut at {cut}");
        }
        assert!(matches!(unpack(&[9, 0], None), Err(ChunkError::Version(9))));
        // Random bytes after a valid header never panic.
        let mut junk = vec![VERSION, 1, 1, b'm', 200, 3];
        junk.extend((0..3u8).map(|i| i.wrapping_mul(97)));
        let _ = unpack(&junk, None);
    }
}
