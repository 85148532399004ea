//! `POST /api/v1/instances`: arbitrary bytes through the same JSON parser
//! and validation the handler runs. Neither may panic; a body the parser
//! accepts must survive a serialise/parse round trip unchanged, and the
//! validation verdict must not depend on which of the two it saw.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nubo_api::params::InstanceCreate;
use nubo_controlplane::validate;

fuzz_target!(|data: &[u8]| {
    let Ok(p) = serde_json::from_slice::<InstanceCreate>(data) else { return };
    let verdict = validate::instance_create(&p).map_err(|e| e.to_string());

    let json = serde_json::to_vec(&p).expect("a parsed InstanceCreate serialises");
    let back: InstanceCreate = serde_json::from_slice(&json).expect("a serialised InstanceCreate parses back");
    assert_eq!(
        serde_json::to_value(&p).unwrap(),
        serde_json::to_value(&back).unwrap(),
        "round trip changed the request"
    );
    assert_eq!(verdict, validate::instance_create(&back).map_err(|e| e.to_string()));

    if let Some(name) = &p.name {
        // The name check is also used on its own (host registration).
        let _ = validate::name(name).map_err(|e| e.to_string());
    }
});
