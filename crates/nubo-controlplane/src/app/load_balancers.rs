//! Operations on load_balancers (being moved here from `api::load_balancers`).
