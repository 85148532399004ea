//! The messages of Prometheus' remote-write protocol 1.0 (`prompb`'s
//! `WriteRequest`, `TimeSeries`, `Label`, `Sample`), with the same field
//! numbers, and their encoding on the wire: protobuf, then snappy's block
//! format. Written by hand with prost's derives: the four messages are a
//! few lines, while the crates that ship them generated are small,
//! seldom released and pin older prost versions.

use prost::Message;

#[derive(Clone, PartialEq, prost::Message)]
pub struct WriteRequest {
    #[prost(message, repeated, tag = "1")]
    pub timeseries: Vec<TimeSeries>,
}

/// One series: its labels sorted by name (Prometheus requires it), and
/// its samples oldest first.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TimeSeries {
    #[prost(message, repeated, tag = "1")]
    pub labels: Vec<Label>,
    #[prost(message, repeated, tag = "2")]
    pub samples: Vec<Sample>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Label {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Sample {
    #[prost(double, tag = "1")]
    pub value: f64,
    /// Milliseconds since the epoch.
    #[prost(int64, tag = "2")]
    pub timestamp: i64,
}

/// The body of a remote-write request: the protobuf, snappy-compressed
/// in the block (not framed) format, as the protocol says.
pub fn encode(req: &WriteRequest) -> Result<Vec<u8>, snap::Error> {
    snap::raw::Encoder::new().compress_vec(&req.encode_to_vec())
}

/// The inverse of [`encode`] (tests, and a receiver's view).
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("not snappy block data: {0}")]
    Snappy(#[from] snap::Error),
    #[error("not a WriteRequest: {0}")]
    Protobuf(#[from] prost::DecodeError),
}

pub fn decode(body: &[u8]) -> Result<WriteRequest, DecodeError> {
    let raw = snap::raw::Decoder::new().decompress_vec(body)?;
    Ok(WriteRequest::decode(raw.as_slice())?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What goes on the wire decodes back, with the same crates, to the
    /// same request; and the bytes are those of the protocol's field
    /// numbers (a hand-built encoding of one label checks the tags).
    #[test]
    fn a_request_round_trips_through_protobuf_and_snappy() {
        let req = WriteRequest {
            timeseries: vec![TimeSeries {
                labels: vec![
                    Label { name: "__name__".into(), value: "nubo_cpu_percent".into() },
                    Label { name: "resource".into(), value: "i-0123456789abcdef0".into() },
                ],
                samples: vec![
                    Sample { value: 42.5, timestamp: 1_700_000_000_000 },
                    Sample { value: 7.0, timestamp: 1_700_000_010_000 },
                ],
            }],
        };
        let body = encode(&req).unwrap();
        // Snappy's block format starts with the uncompressed length as a varint.
        let plain = req.encode_to_vec();
        assert_eq!(snap::raw::decompress_len(&body).unwrap(), plain.len());
        assert_eq!(decode(&body).unwrap(), req);

        // Label {name: "a", value: "b"}: field 1 and 2, length-delimited.
        let one = Label { name: "a".into(), value: "b".into() }.encode_to_vec();
        assert_eq!(one, vec![0x0a, 1, b'a', 0x12, 1, b'b']);
        // Sample: field 1 a double (wire type 1), field 2 a varint.
        let s = Sample { value: 1.0, timestamp: 3 }.encode_to_vec();
        assert_eq!(s[0], 0x09);
        assert_eq!(&s[1..9], &1.0f64.to_le_bytes());
        assert_eq!(&s[9..], &[0x10, 3]);
    }

    #[test]
    fn garbage_is_refused_not_panicked_on() {
        assert!(decode(b"not snappy at all").is_err());
    }
}
