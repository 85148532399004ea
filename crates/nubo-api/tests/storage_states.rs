//! The storage states' spellings and transition tables: volumes, their
//! attachments, snapshots, images, and what hosts report of them.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use nubo_api::agent::{ActualSnapshotState, ActualVolumeState, CaptureState};
use nubo_api::views::{AttachState, ImageState, SnapshotState, VolumeState};

/// Every (from, to) pair `can_become` allows, as spellings.
fn allowed<S: Copy>(all: &[S], can: impl Fn(S, S) -> bool, name: impl Fn(S) -> &'static str) -> Vec<String> {
    let mut out = Vec::new();
    for &from in all {
        for &to in all {
            if can(from, to) {
                out.push(format!("{} -> {}", name(from), name(to)));
            }
        }
    }
    out
}

#[test]
fn spellings_are_the_wire_and_database_ones() {
    let v: Vec<&str> = VolumeState::ALL.iter().map(|s| s.as_str()).collect();
    assert_eq!(v, ["creating", "available", "in-use", "deleting", "deleted", "error"]);
    let a: Vec<&str> = AttachState::ALL.iter().map(|s| s.as_str()).collect();
    assert_eq!(a, ["attaching", "attached", "detaching"]);
    let s: Vec<&str> = SnapshotState::ALL.iter().map(|s| s.as_str()).collect();
    assert_eq!(s, ["pending", "completed", "deleting", "deleted", "error"]);
    let i: Vec<&str> = ImageState::ALL.iter().map(|s| s.as_str()).collect();
    assert_eq!(i, ["queued", "saving", "active", "error"]);
    let rv: Vec<&str> = ActualVolumeState::ALL.iter().map(|s| s.as_str()).collect();
    assert_eq!(rv, ["creating", "available", "deleted", "error"]);
    let rs: Vec<&str> = ActualSnapshotState::ALL.iter().map(|s| s.as_str()).collect();
    assert_eq!(rs, ["pending", "completed", "deleted", "error"]);
    let c: Vec<&str> = CaptureState::ALL.iter().map(|s| s.as_str()).collect();
    assert_eq!(c, ["saving", "failed"]);
    assert_eq!(serde_json::to_value(VolumeState::InUse).unwrap(), serde_json::json!("in-use"));
    assert_eq!("in-use".parse::<VolumeState>(), Ok(VolumeState::InUse));
    let err = "in_use".parse::<VolumeState>().unwrap_err().to_string();
    assert_eq!(
        err,
        "'in_use' is not a volume state; expected one of: creating, available, in-use, deleting, deleted, error"
    );
}

#[test]
fn volume_transitions() {
    let moves: Vec<String> = allowed(VolumeState::ALL, VolumeState::can_become, VolumeState::as_str)
        .into_iter()
        .filter(|m| {
            let (a, b) = m.split_once(" -> ").unwrap();
            a != b
        })
        .collect();
    assert_eq!(
        moves,
        [
            "creating -> available",
            "creating -> in-use",
            "creating -> error",
            "available -> in-use",
            "available -> deleting",
            "in-use -> available",
            "in-use -> deleting",
            "deleting -> deleted",
            "error -> available",
            "error -> in-use",
            "error -> deleting",
        ]
    );
    for s in VolumeState::ALL {
        assert!(s.can_become(*s), "{s} may stay");
    }
    // Deleted is the end; nothing comes back from it.
    assert!(VolumeState::ALL.iter().all(|to| *to == VolumeState::Deleted || !VolumeState::Deleted.can_become(*to)));
    assert_eq!(VolumeState::live(true), VolumeState::InUse);
    assert_eq!(VolumeState::live(false), VolumeState::Available);
    let live: Vec<_> = VolumeState::ALL.iter().filter(|s| s.is_live()).map(|s| s.as_str()).collect();
    assert_eq!(live, ["available", "in-use"]);
    let deletable: Vec<_> = VolumeState::ALL.iter().filter(|s| s.is_deletable()).map(|s| s.as_str()).collect();
    assert_eq!(deletable, ["available", "error"]);
    // What may be deleted may become deleting.
    for s in VolumeState::ALL.iter().filter(|s| s.is_deletable()) {
        assert!(s.can_become(VolumeState::Deleting));
    }
}

#[test]
fn attachment_transitions() {
    let moves = allowed(AttachState::ALL, AttachState::can_become, AttachState::as_str);
    assert_eq!(
        moves,
        [
            "attaching -> attaching",
            "attaching -> attached",
            "attaching -> detaching",
            "attached -> attached",
            "attached -> detaching",
            "detaching -> detaching",
        ]
    );
    use AttachState::*;
    // A report moves a wanted attachment on to attached, never back.
    assert_eq!(Attaching.after_report(Attached), Attached);
    assert_eq!(Attaching.after_report(Attaching), Attaching);
    assert_eq!(Attaching.after_report(Detaching), Attaching);
    assert_eq!(Attached.after_report(Attaching), Attached);
    assert_eq!(Attached.after_report(Attached), Attached);
    assert_eq!(Attached.after_report(Detaching), Attached);
    // A report never moves a detaching one (it ends when the host drops it).
    assert_eq!(Detaching.after_report(Attached), Detaching);
    let wanted: Vec<_> = AttachState::ALL.iter().filter(|s| s.is_wanted()).map(|s| s.as_str()).collect();
    assert_eq!(wanted, ["attaching", "attached"]);
}

#[test]
fn snapshot_transitions() {
    let moves = allowed(SnapshotState::ALL, SnapshotState::can_become, SnapshotState::as_str);
    assert_eq!(
        moves,
        [
            "pending -> pending",
            "pending -> completed",
            "pending -> error",
            "completed -> completed",
            "completed -> deleting",
            "deleting -> deleting",
            "deleting -> deleted",
            "deleted -> deleted",
            "error -> deleting",
            "error -> error",
        ]
    );
    let deletable: Vec<_> = SnapshotState::ALL.iter().filter(|s| s.is_deletable()).map(|s| s.as_str()).collect();
    assert_eq!(deletable, ["completed", "error"]);
}

#[test]
fn image_transitions() {
    let moves = allowed(ImageState::ALL, ImageState::can_become, ImageState::as_str);
    assert_eq!(
        moves,
        [
            "queued -> queued",
            "queued -> saving",
            "queued -> error",
            "saving -> saving",
            "saving -> active",
            "saving -> error",
            "active -> active",
            "error -> error",
        ]
    );
    let bootable: Vec<_> = ImageState::ALL.iter().filter(|s| s.is_bootable()).map(|s| s.as_str()).collect();
    assert_eq!(bootable, ["active"]);
}
