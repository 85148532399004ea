//! Installing an OS from an ISO, end to end under `nubo up`: an installer
//! CD built in the test (xorriso, isolinux, tiny's kernel; see
//! `common/iso.rs`) is imported with `--format iso` (and a non-ISO
//! declared iso is refused), then `nubo instance run --image blank
//! --cdrom installer` boots it with an empty root disk. The installer
//! writes a bootable system onto the disk; the test ejects the CD while
//! the VM runs (CLI, applied over QMP), stops and starts the instance,
//! and the installed system boots from the disk (its marker on the serial
//! console, the installer not run again). A disc inserted while the
//! installed system runs reaches its drive too.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

mod common;
#[path = "common/iso.rs"]
mod iso;

use common::*;
use std::path::Path;
use std::time::Duration;

const BOOT: Duration = Duration::from_secs(240);

/// What the agent recorded as being in the instance's drive, once it
/// changed the disc over QMP (`empty` or the ISO's SHA-256).
fn disc_in_drive(cloud: &Cloud, id: &str) -> Option<String> {
    let p = cloud.agent_dir().join("instances").join(id).join("cdrom.applied");
    std::fs::read_to_string(p).ok().map(|s| s.trim().to_string())
}

#[test]
fn an_os_installed_from_an_iso_boots_from_its_disk() {
    let cloud = Cloud::up();
    let dir = tempfile::tempdir().unwrap();
    let cd = iso::build_installer_iso(Path::new(&cloud.image_of("tiny")), dir.path());

    // A file that is no ISO is refused as one, and nothing is kept.
    let not_iso = dir.path().join("not.iso");
    std::fs::write(&not_iso, vec![0x5au8; 1 << 20]).unwrap();
    let out = cloud.nubo(&["image", "import", not_iso.to_str().unwrap(), "--name", "fake", "--format", "iso"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("not an ISO 9660 image"), "{err}");
    let images = cloud.nubo_json(&["image", "list"]);
    assert!(!images.as_array().unwrap().iter().any(|i| i["name"] == "fake"), "{images}");

    let iso_id = cloud
        .nubo_ok(&["image", "import", cd.to_str().unwrap(), "--name", "installer", "--format", "iso"])
        .trim()
        .to_string();
    let image = cloud.nubo_json(&["image", "show", &iso_id]);
    assert_eq!((image["disk_format"].as_str(), image["state"].as_str()), (Some("iso"), Some("active")));
    let iso_sha = image["sha256"].as_str().unwrap().to_string();
    // An ISO is no root disk.
    let out = cloud.nubo(&["instance", "run", "--image", "installer"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot be a root disk"), "{out:?}");

    // Boot the installer with an empty disk; it installs.
    let id = cloud
        .nubo_ok(&[
            "instance",
            "run",
            "--image",
            "blank",
            "--cdrom",
            "installer",
            "--disk",
            "2",
            "--memory",
            "384",
            "--name",
            "installed",
        ])
        .trim()
        .to_string();
    let i = cloud.instance(&id);
    assert_eq!((i["image"].as_str(), i["cdrom"]["boot_order"].as_str()), (Some("blank"), Some("cdrom,disk")));
    cloud.wait_console(&id, iso::INSTALLER_STARTED, 1, BOOT);
    let console = cloud.wait_console(&id, iso::INSTALL_DONE, 1, BOOT);
    assert!(!console.contains("NUBO_ISO_INSTALL_FAILED"), "{console}");

    // Eject while it runs: the agent empties the drive over QMP.
    let i = cloud.nubo_json(&["instance", "cdrom", "eject", &id]);
    assert!(i["cdrom"]["image_id"].is_null(), "{i}");
    wait_until("the agent to eject the CD", Duration::from_secs(60), || {
        (disc_in_drive(&cloud, &id).as_deref() == Some("empty")).then_some(())
    });

    // Stop and start: the CD stays out, and the installed system boots from the disk.
    cloud.nubo_ok(&["instance", "stop", &id, "--wait"]);
    cloud.nubo_ok(&["instance", "start", &id, "--wait"]);
    let console = cloud.wait_console(&id, iso::INSTALLED_MARKER, 1, BOOT);
    assert_eq!(console.matches(iso::INSTALLER_STARTED).count(), 1, "the installer did not run again:\n{console}");

    // A disc inserted while it runs reaches the drive.
    let i = cloud.nubo_json(&["instance", "cdrom", "insert", &id, "installer"]);
    assert_eq!(i["cdrom"]["image_id"].as_str(), Some(iso_id.as_str()));
    wait_until("the agent to insert the CD", Duration::from_secs(60), || {
        (disc_in_drive(&cloud, &id).as_deref() == Some(iso_sha.as_str())).then_some(())
    });
    // The boot order is set while stopped only.
    let out = cloud.nubo(&["instance", "boot-order", &id, "disk,cdrom"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("stop it first"), "{out:?}");

    cloud.nubo_ok(&["instance", "terminate", &id, "--wait"]);
    cloud.nubo_ok(&["image", "delete", "installer"]);
}
