//! Untrusted disk image headers: `check_qcow2_header` and `sniff_format`
//! must never panic on any bytes, and a header the check accepts must have
//! the properties the rest of Nubo relies on.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nubo_image::inspect::{check_qcow2_header, sniff_format};

fuzz_target!(|data: &[u8]| {
    let tail = &data[data.len().saturating_sub(512)..];
    let sniffed = sniff_format(data, tail);
    // The honest file size, and one so large that only the header itself
    // can make the check fail (the seed corpus is cut to -max_len).
    for file_size in [data.len() as u64, u64::MAX] {
        if let Ok(info) = check_qcow2_header(data, file_size) {
            assert_eq!(sniffed, Some("qcow2"), "an accepted header sniffs as qcow2");
            assert!(matches!(info.version, 2 | 3));
            assert!((9..=21).contains(&info.cluster_bits));
            assert!(info.virtual_size > 0 && info.virtual_size.is_multiple_of(512));
        }
    }
});
