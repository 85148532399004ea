//! The one JSON shape every API error is rendered in.

use serde::{Deserialize, Serialize};

/// Body of every non-2xx response: a stable machine-readable `code` and a
/// `message` written for the person who made the request.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Stable code, e.g. `invalid_request`, `not_found`, `no_valid_host`.
    pub code: String,
    /// What went wrong and what to do about it.
    pub message: String,
}
