//! The legal transitions of run, migration, check, alert, notification,
//! policy firing and action, balancer and backend states, as tables: each
//! enum's `can_become` against every pair of its states.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use nubo_api::automation::{ActionState, FiringState};
use nubo_api::lb::{BackendHealth, BalancerState};
use nubo_api::monitoring::{AlertState, CheckState, NotificationState};
use nubo_api::views::{MigrationState, RunState};

/// Every (from, to) pair `can` allows, spelled, for comparing to a table.
fn allowed<S: Copy + std::fmt::Display>(all: &[S], can: impl Fn(S, S) -> bool) -> Vec<String> {
    let mut out = Vec::new();
    for &from in all {
        for &to in all {
            if can(from, to) {
                out.push(format!("{from}>{to}"));
            }
        }
    }
    out
}

#[test]
fn runs_go_forward_and_never_change_once_finished() {
    assert_eq!(
        allowed(RunState::ALL, RunState::can_become),
        [
            "pending>running",
            "pending>succeeded",
            "pending>failed",
            "running>running",
            "running>succeeded",
            "running>failed"
        ]
    );
    let finished: Vec<_> = RunState::ALL.iter().filter(|s| s.finished()).map(|s| s.as_str()).collect();
    assert_eq!(finished, ["succeeded", "failed"]);
}

#[test]
fn migrations_end_once_from_preparing_or_migrating() {
    assert_eq!(
        allowed(MigrationState::ALL, MigrationState::can_become),
        [
            "preparing>migrating",
            "preparing>completed",
            "preparing>failed",
            "migrating>migrating",
            "migrating>completed",
            "migrating>failed"
        ]
    );
    let active: Vec<_> = MigrationState::ALL.iter().filter(|s| s.active()).map(|s| s.as_str()).collect();
    assert_eq!(active, ["preparing", "migrating"]);
}

#[test]
fn checks_take_their_exit_codes_state_and_are_never_pending_again() {
    for from in CheckState::ALL {
        assert!(!from.can_become(CheckState::Pending), "{from}");
        for status in 0..=4u8 {
            assert!(from.can_become(CheckState::from_status(status)), "{from} after {status}");
        }
    }
    let by_code: Vec<_> = (0..=4u8).map(|c| CheckState::from_status(c).as_str()).collect();
    assert_eq!(by_code, ["OK", "WARNING", "CRITICAL", "UNKNOWN", "UNKNOWN"]);
    assert_eq!(CheckState::Pending.status(), None);
    assert_eq!(CheckState::Unknown.status(), Some(3));
    let fires_on_warning: Vec<_> =
        CheckState::ALL.iter().filter(|s| s.fires(CheckState::Warning)).map(|s| s.as_str()).collect();
    assert_eq!(fires_on_warning, ["WARNING", "CRITICAL", "UNKNOWN"]);
    let fires_on_critical: Vec<_> =
        CheckState::ALL.iter().filter(|s| s.fires(CheckState::Critical)).map(|s| s.as_str()).collect();
    assert_eq!(fires_on_critical, ["CRITICAL"]);
}

#[test]
fn alerts_fire_then_resolve_and_deliveries_end_once() {
    assert_eq!(
        allowed(AlertState::ALL, AlertState::can_become),
        ["pending>firing", "pending>resolved", "firing>resolved"]
    );
    assert_eq!(
        allowed(NotificationState::ALL, NotificationState::can_become),
        ["pending>pending", "pending>sent", "pending>failed"]
    );
}

#[test]
fn firings_and_their_actions_end_once() {
    assert_eq!(allowed(FiringState::ALL, FiringState::can_become), ["running>succeeded", "running>failed"]);
    assert_eq!(
        allowed(ActionState::ALL, ActionState::can_become),
        ["pending>running", "running>running", "running>succeeded", "running>failed"]
    );
    let ended: Vec<_> = ActionState::ALL.iter().filter(|s| s.ended()).map(|s| s.as_str()).collect();
    assert_eq!(ended, ["succeeded", "failed", "skipped"]);
    use ActionState::*;
    assert_eq!(FiringState::of_ended([Succeeded, Skipped]), FiringState::Succeeded);
    assert_eq!(FiringState::of_ended([Succeeded, Failed]), FiringState::Failed);
}

#[test]
fn balancers_leave_pending_and_backends_follow_their_checks() {
    assert_eq!(
        allowed(BalancerState::ALL, BalancerState::can_become),
        ["pending>active", "pending>error", "active>active", "active>error", "error>active", "error>error"]
    );
    assert_eq!(
        allowed(BackendHealth::ALL, BackendHealth::can_become),
        [
            "up>up",
            "up>down",
            "up>failing",
            "up>draining",
            "down>up",
            "down>down",
            "down>failing",
            "down>draining",
            "unknown>up",
            "unknown>down",
            "unknown>failing",
            "unknown>draining",
            "failing>up",
            "failing>down",
            "failing>failing",
            "failing>draining"
        ]
    );
    // The control plane's reasons keep the spellings users always saw.
    let reasons: Vec<_> = BackendHealth::ALL.iter().filter(|h| !h.reported()).map(|h| h.as_str()).collect();
    assert_eq!(reasons, ["terminated", "not running", "not on the network", "on another host", "no forwarded port"]);
}
