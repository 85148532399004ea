//! The `security` test target: one test per attack in docs/security.md,
//! each run the way an attacker would run it (from inside a real guest,
//! as another tenant, as an anonymous client) and each asserting that the
//! attack fails. Every test here failed on the code before its fix.
//!
//! Modules by boundary:
//! - `guests`: what a guest reaches on its host (loopback, the host's own
//!   addresses, the metadata relay, dnsmasq's privileges).
//! - `console`: a guest flooding its serial console.
//! - `host_liveness`: guest-controlled sizes in the guest-agent channel and
//!   the host report, the heartbeat, and fencing of a cut-off host.
//! - `ec2`: SigV4 body binding and replay.
//! - `webhooks`: alert and policy webhooks as SSRF and as a stall.
//! - `identity`: sign-in guessing, token caps, LDAP removal, audit floods.
//! - `tenancy`: removed members, image quotas, rule CIDRs.
//! - `tls`: credentials on the LAN (HTTPS by default beyond loopback,
//!   join tokens that pin the server's CA).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

#[path = "../common/mod.rs"]
mod common;

mod console;
mod ec2;
mod guests;
mod host_liveness;
mod identity;
mod tenancy;
mod tls;
mod webhooks;
