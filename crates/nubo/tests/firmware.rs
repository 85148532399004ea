//! UEFI, TPM and display on real `tiny` guests under TCG (`nubo up`): a
//! guest booted by OVMF writes a UEFI variable through efivarfs, and after
//! a stop and a start it is still there with its data (the instance's own
//! variable store in its directory); the same guest sees a TPM 2.0 at
//! /dev/tpm0, and its display answers a VNC handshake on the instance
//! directory's unix socket. A Secure Boot guest boots with Secure Boot
//! on, and a guest without a display has no VNC socket.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

mod common;
use common::*;
use std::io::Read;
use std::time::{Duration, Instant};

/// A vendor GUID of our own, so the variable is nobody else's.
const VAR: &str = "NuboTest-6e75626f-7465-7374-8000-000000000042";

/// From QEMU's start to the guest's boot-complete line, from the
/// instance's life events.
fn boot_time(cloud: &Cloud, id: &str) -> String {
    let at = |i: &serde_json::Value, stage: &str| {
        i["events"].as_array().unwrap().iter().rev().find(|e| e["stage"] == stage).and_then(|e| e["at_ms"].as_i64())
    };
    // The agent reports boot-complete shortly after the console shows it.
    let (start, done) = wait_until("the boot_complete event", Duration::from_secs(30), || {
        let i = cloud.instance(id);
        Some((at(&i, "qemu_started")?, at(&i, "boot_complete")?))
    });
    format!("QEMU start to boot-complete {:.1} s", (done - start) as f64 / 1000.0)
}

/// Waits until the guest agent runs commands.
fn wait_guest(cloud: &Cloud, id: &str) {
    wait_until(&format!("the guest agent of {id}"), Duration::from_secs(120), || {
        let (code, _) = guest(cloud, id, "true");
        (code == 0).then_some(())
    });
}

fn efivarfs(cloud: &Cloud, id: &str) {
    let (code, out) = guest(
        cloud,
        id,
        "grep -q efivarfs /proc/mounts || mount -t efivarfs efivarfs /sys/firmware/efi/efivars; ls /sys/firmware/efi/efivars | head -3",
    );
    assert_eq!(code, 0, "cannot mount efivarfs in {id}: {out}");
}

#[test]
fn uefi_variables_survive_a_restart_and_tpm_and_display_are_there() {
    let cloud = Cloud::up();
    let started = Instant::now();
    let id = cloud
        .nubo_ok(&[
            "instance",
            "run",
            "--image",
            "tiny",
            "--memory",
            "256",
            "--firmware",
            "uefi",
            "--tpm",
            "--display",
            "--wait",
        ])
        .trim()
        .to_string();
    cloud.wait_console(&id, nubo_api::BOOT_COMPLETE_MARKER, 1, Duration::from_secs(120));
    eprintln!(
        "UEFI boot: {} ({:.1} s after `instance run`, an image build included if there was one)",
        boot_time(&cloud, &id),
        started.elapsed().as_secs_f64()
    );
    let i = cloud.instance(&id);
    assert_eq!(i["hardware"]["firmware"], "uefi", "{i}");
    assert_eq!((i["hardware"]["tpm"].as_bool(), i["hardware"]["display"].as_bool()), (Some(true), Some(true)));
    let dir = cloud.agent_dir().join("instances").join(&id);
    assert!(dir.join("efivars.fd").is_file(), "the instance has its own variable store");

    // The display: VNC on the instance directory's unix socket, nothing on TCP.
    let mut vnc = std::os::unix::net::UnixStream::connect(dir.join("vnc.sock")).expect("connect to vnc.sock");
    vnc.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut hello = [0u8; 12];
    vnc.read_exact(&mut hello).unwrap();
    assert_eq!(&hello, b"RFB 003.008\n");
    drop(vnc);

    wait_guest(&cloud, &id);
    // Booted by UEFI, with a TPM 2.0.
    let out = guest_probe(
        &cloud,
        &id,
        "test -d /sys/firmware/efi && echo efi-yes; ls /dev/tpm0 && cat /sys/class/tpm/tpm0/tpm_version_major",
    );
    assert!(out.contains("efi-yes"), "{out}");
    assert!(out.contains("/dev/tpm0\n2\n"), "no TPM 2.0 in the guest: {out}");

    // A variable: 4 bytes of attributes (non-volatile, boot service and
    // runtime access), then the data, in one write.
    efivarfs(&cloud, &id);
    let (code, out) = guest(
        &cloud,
        &id,
        &format!(
            "printf '\\007\\000\\000\\000nubo-keeps-me' > /tmp/var && dd if=/tmp/var of=/sys/firmware/efi/efivars/{VAR} bs=64 2>&1 && tail -c +5 /sys/firmware/efi/efivars/{VAR}"
        ),
    );
    assert!(code == 0 && out.contains("nubo-keeps-me"), "cannot write the variable (exit {code}): {out}");

    cloud.nubo_ok(&["instance", "stop", &id, "--wait"]);
    // swtpm went with QEMU; the TPM's state and the variables stay.
    assert!(!dir.join("swtpm.sock").exists() && !dir.join("vnc.sock").exists());
    assert!(dir.join("tpm").read_dir().unwrap().next().is_some(), "the TPM state is kept");
    cloud.nubo_ok(&["instance", "start", &id, "--wait"]);
    wait_guest(&cloud, &id);
    efivarfs(&cloud, &id);
    let (code, out) = guest(&cloud, &id, &format!("tail -c +5 /sys/firmware/efi/efivars/{VAR}"));
    assert!(code == 0 && out.contains("nubo-keeps-me"), "the variable is gone after a restart (exit {code}): {out}");
    let out = guest_probe(&cloud, &id, "cat /sys/class/tpm/tpm0/tpm_version_major");
    assert!(out.starts_with("2\n"), "{out}");
    cloud.nubo_ok(&["instance", "terminate", &id]);

    // Secure Boot: on in the guest; no display asked, so no VNC socket.
    let sb = cloud
        .nubo_ok(&[
            "instance",
            "run",
            "--image",
            "tiny",
            "--memory",
            "256",
            "--firmware",
            "uefi",
            "--secure-boot",
            "--wait",
        ])
        .trim()
        .to_string();
    cloud.wait_console(&sb, nubo_api::BOOT_COMPLETE_MARKER, 1, Duration::from_secs(120));
    eprintln!("Secure Boot UEFI boot: {}", boot_time(&cloud, &sb));
    wait_guest(&cloud, &sb);
    let out = guest_probe(&cloud, &sb, "dmesg | grep -i 'secure boot'");
    assert!(out.contains("Secure boot enabled"), "{out}");
    assert!(!cloud.agent_dir().join("instances").join(&sb).join("vnc.sock").exists());
    // Secure Boot without UEFI is refused before anything starts.
    let out = cloud.nubo(&["instance", "run", "--image", "tiny", "--secure-boot"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("UEFI"), "{err}");
}
