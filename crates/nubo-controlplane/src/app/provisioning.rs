//! Operations on provisioning (being moved here from `api::provisioning`).
