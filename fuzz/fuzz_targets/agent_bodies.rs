//! The agent protocol's request bodies (`RegisterHost`, `HostReport`,
//! `ConsoleChunk`): arbitrary bytes through the parser each handler uses.
//! No panic, and whatever parses must round-trip through JSON unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nubo_api::agent::{ConsoleChunk, HostReport, RegisterHost};
use serde::de::DeserializeOwned;
use serde::Serialize;

fn round_trip<T: Serialize + DeserializeOwned>(data: &[u8]) {
    let Ok(v) = serde_json::from_slice::<T>(data) else { return };
    let json = serde_json::to_vec(&v).expect("a parsed body serialises");
    let back: T = serde_json::from_slice(&json).expect("a serialised body parses back");
    assert_eq!(
        serde_json::to_value(&v).unwrap(),
        serde_json::to_value(&back).unwrap(),
        "round trip changed the body"
    );
}

fuzz_target!(|data: &[u8]| {
    round_trip::<RegisterHost>(data);
    round_trip::<HostReport>(data);
    round_trip::<ConsoleChunk>(data);
    if let Ok(r) = serde_json::from_slice::<RegisterHost>(data) {
        // The register handler checks the host's name with this.
        let _ = nubo_controlplane::validate::name(&r.name).map_err(|e| e.to_string());
    }
});
