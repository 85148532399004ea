//! The guest-agent reply parser (`nubo_hypervisor::qga::decode`): every
//! byte of a reply is the guest's to choose. Arbitrary lines through the
//! line parser and each typed decoder: no panic, and no error message
//! longer than a preview of what the guest sent (errors end up in logs and
//! in reports to the control plane).
#![no_main]

use libfuzzer_sys::fuzz_target;
use nubo_hypervisor::qga::decode;

/// Longest error message accepted: the fixed text plus two previews.
const MAX_MESSAGE: usize = 1024;

fn check<T>(r: Result<T, nubo_hypervisor::QgaError>) {
    if let Err(e) = r {
        let msg = e.to_string();
        assert!(
            msg.len() <= MAX_MESSAGE,
            "error message of {} bytes: {}",
            msg.len(),
            msg.chars().take(200).collect::<String>()
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let v = match decode::reply("guest-fuzz", data) {
        Ok(Some(v)) => v,
        other => return check(other),
    };
    check(decode::info(&v));
    check(decode::exec_status(&v));
    check(decode::file_read(&v));
    check(decode::fsinfo(&v));
    check(decode::disks(&v));
    check(decode::osinfo(&v));
    check(decode::network_interfaces(&v));
});
