//! The control plane's sagas (multi-step operations run by
//! `crate::saga`'s runner), one module each: group scaling, the actions
//! of a firing policy, a live migration, failing an instance over off a
//! down host, and a launch with a recipe.

pub mod failover;
pub mod group_scale;
pub mod launch;
pub mod migration;
pub mod policy_action;
