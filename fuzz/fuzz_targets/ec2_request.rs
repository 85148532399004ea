//! The EC2 API's request parsers: arbitrary bytes as the form body
//! (lists, structures, filters, tags, pages), as the SigV4 Authorization
//! header and as X-Amz-Date, and the filter wildcards. No panic; a header
//! that parses keeps a 32-byte signature and names `host`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nubo_controlplane::ec2::{query, sigv4};

fuzz_target!(|data: &[u8]| {
    let p = query::Params::from_form(data);
    let _ = p.list("InstanceId");
    let _ = p.filters();
    let _ = p.tags("Tag");
    for s in p.structs("TagSpecification") {
        let _ = s.tags("Tag");
    }
    let _ = p.int_in("MaxCount", 1..=100);
    let _ = p.bool("DryRun");
    if let Ok(page) = query::Page::parse(&p, 5, 1000) {
        let _ = page.apply(vec![0u8; 8]);
    }
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(h) = sigv4::parse_authorization(text) {
            assert_eq!(h.signature.len(), 32);
            assert!(h.signed_headers.iter().any(|s| s == "host"));
        }
        let _ = sigv4::parse_amz_date(text);
        if let Some((pattern, value)) = text.split_once('\n') {
            let _ =
                query::glob(&pattern.chars().take(64).collect::<String>(), &value.chars().take(64).collect::<String>());
        }
    }
});
