//! Operations on volumes (being moved here from `api::volumes`).
