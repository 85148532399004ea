//! Operations on monitoring (being moved here from `api::monitoring`).
