//! The control plane's sagas (multi-step operations run by
//! `crate::saga`'s runner), one module each: group scaling, and the
//! actions of a firing policy.

pub mod group_scale;
pub mod policy_action;
