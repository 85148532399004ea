//! Operations on automation (being moved here from `api::automation`).
