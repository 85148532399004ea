//! Typed ids from untrusted strings (URL path segments, JSON fields).
//! `FromStr` must never panic, must accept exactly "prefix + 17 lowercase
//! hex digits", must give back the very string it parsed, and the serde
//! path (`try_from = "String"`) must agree with `FromStr`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nubo_api::ids::{HostId, InstanceId};
use std::fmt::Display;
use std::str::FromStr;

fn reference(s: &str, prefix: &str) -> bool {
    s.len() == prefix.len() + 17
        && s.starts_with(prefix)
        && s[prefix.len()..].bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn check<T>(s: &str, prefix: &str)
where
    T: FromStr + Display + serde::de::DeserializeOwned + serde::Serialize + PartialEq + std::fmt::Debug,
    T::Err: Display,
{
    let parsed = s.parse::<T>();
    assert_eq!(parsed.is_ok(), reference(s, prefix), "FromStr disagrees with the id grammar on {s:?}");
    let via_serde = serde_json::from_value::<T>(serde_json::Value::String(s.to_string()));
    match (&parsed, &via_serde) {
        (Ok(a), Ok(b)) => {
            assert_eq!(a, b);
            assert_eq!(a.to_string(), s);
            assert_eq!(serde_json::to_value(a).unwrap(), serde_json::Value::String(s.to_string()));
        }
        (Err(e), Err(_)) => {
            // The message is shown to users; it quotes at most 64 chars.
            let _ = e.to_string();
        }
        _ => panic!("FromStr and serde disagree on {s:?}"),
    }
}

fuzz_target!(|data: &[u8]| {
    let s = String::from_utf8_lossy(data);
    check::<InstanceId>(&s, "i-");
    check::<HostId>(&s, "h-");
});
