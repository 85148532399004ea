//! Input checks at the edge: every value a user sends is checked here,
//! before anything is written, with a message that says what is allowed.

use crate::error::AppError;
use nubo_api::params::InstanceCreate;
use nubo_api::MAX_USER_DATA_BYTES;

pub const MAX_VCPUS: u32 = 64;
pub const MIN_MEMORY_MIB: u64 = 64;
pub const MAX_MEMORY_MIB: u64 = 1024 * 1024;
pub const MAX_DISK_GIB: u64 = 16 * 1024;
pub const MAX_PORTS: usize = 16;

/// Names: 1-63 of letters, digits, `-`, `_`, `.`, not starting with `.`
/// or `-` (they end up in file names and QEMU's `-name`).
pub fn name(n: &str) -> Result<(), AppError> {
    name_of("name", n, 63)
}

/// Like [`name`] for `what` (e.g. "image name"), at most `max` long. Such a
/// name can never be a path: no `/`, no leading `.`.
pub fn name_of(what: &str, n: &str, max: usize) -> Result<(), AppError> {
    let ok = !n.is_empty()
        && n.len() <= max
        && !n.starts_with(['.', '-'])
        && n.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(AppError::BadRequest(format!(
            "{what} '{}' is not valid: use 1-{max} letters, digits, '-', '_' or '.', not starting with '.' or '-'",
            n.chars().take(80).collect::<String>()
        )))
    }
}

pub fn instance_create(p: &InstanceCreate) -> Result<(), AppError> {
    if p.vcpus == 0 || p.vcpus > MAX_VCPUS {
        return Err(AppError::BadRequest(format!("vcpus must be between 1 and {MAX_VCPUS}, got {}", p.vcpus)));
    }
    if !(MIN_MEMORY_MIB..=MAX_MEMORY_MIB).contains(&p.memory_mib) {
        return Err(AppError::BadRequest(format!(
            "memory_mib must be between {MIN_MEMORY_MIB} and {MAX_MEMORY_MIB}, got {}",
            p.memory_mib
        )));
    }
    if p.disk_gib == 0 || p.disk_gib > MAX_DISK_GIB {
        return Err(AppError::BadRequest(format!("disk_gib must be between 1 and {MAX_DISK_GIB}, got {}", p.disk_gib)));
    }
    if let Some(n) = &p.name {
        name(n)?;
    }
    if let Some(ud) = &p.user_data {
        if ud.len() > MAX_USER_DATA_BYTES {
            return Err(AppError::BadRequest(format!(
                "user_data is {} bytes; the limit is {MAX_USER_DATA_BYTES} bytes (64 KiB)",
                ud.len()
            )));
        }
    }
    if p.ports.len() > MAX_PORTS {
        return Err(AppError::BadRequest(format!("at most {MAX_PORTS} ports can be forwarded, got {}", p.ports.len())));
    }
    if p.tags.len() > crate::tags::MAX_TAGS_PER_RESOURCE as usize {
        return Err(AppError::BadRequest(format!(
            "at most {} tags are allowed, got {}",
            crate::tags::MAX_TAGS_PER_RESOURCE,
            p.tags.len()
        )));
    }
    for (k, v) in &p.tags {
        tag(k, v)?;
    }
    let mut seen = std::collections::HashSet::new();
    for port in &p.ports {
        if *port == 0 {
            return Err(AppError::BadRequest("port 0 is not a valid guest port: use 1-65535".into()));
        }
        if !seen.insert(port) {
            return Err(AppError::BadRequest(format!("port {port} is listed twice")));
        }
    }
    Ok(())
}

/// A tag, as EC2 allows them: a key of 1-128 characters not starting
/// with `aws:`, a value of at most 256, no control characters.
pub fn tag(key: &str, value: &str) -> Result<(), AppError> {
    let shown: String = key.chars().take(80).collect();
    if key.is_empty() || key.chars().count() > 128 {
        return Err(AppError::BadRequest(format!("tag key '{shown}' must be 1-128 characters long")));
    }
    if key.to_ascii_lowercase().starts_with("aws:") {
        return Err(AppError::BadRequest(format!("tag key '{shown}': keys starting with 'aws:' are reserved")));
    }
    if value.chars().count() > 256 {
        return Err(AppError::BadRequest(format!("the value of tag '{shown}' is longer than 256 characters")));
    }
    if key.chars().chain(value.chars()).any(char::is_control) {
        return Err(AppError::BadRequest(format!("tag '{shown}' contains control characters")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req() -> InstanceCreate {
        InstanceCreate {
            image: "tiny".into(),
            vcpus: 1,
            memory_mib: 128,
            disk_gib: 1,
            name: None,
            user_data: None,
            ports: vec![],
            key_name: None,
            recipe: None,
            metadata: None,
            tags: Default::default(),
            networks: vec![],
            security_groups: vec![],
            cdrom: None,
            boot: None,
            hardware: Default::default(),
        }
    }

    #[test]
    fn accepts_a_plain_request() {
        instance_create(&req()).unwrap();
    }

    #[test]
    fn refuses_out_of_range_values_with_the_range() {
        let e = instance_create(&InstanceCreate { vcpus: 0, ..req() }).unwrap_err().to_string();
        assert!(e.contains("between 1 and 64"), "{e}");
        assert!(instance_create(&InstanceCreate { memory_mib: 1, ..req() }).is_err());
        assert!(instance_create(&InstanceCreate { disk_gib: 0, ..req() }).is_err());
        assert!(instance_create(&InstanceCreate { ports: vec![80, 80], ..req() }).is_err());
        assert!(instance_create(&InstanceCreate { user_data: Some("x".repeat(65 * 1024)), ..req() }).is_err());
    }

    #[test]
    fn names_cannot_escape_or_inject() {
        for bad in ["../etc", "a/b", "", "-rf", "a b", "x;rm", &"a".repeat(64)] {
            assert!(name(bad).is_err(), "{bad}");
        }
        name("web-1.prod_a").unwrap();
    }
}
