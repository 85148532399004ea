//! `AppError`: every error the API returns, rendered in one JSON shape
//! (`nubo_api::error::ErrorBody`). The user-facing message is kept apart
//! from internal context, which is logged and never sent.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use nubo_api::error::{ErrorBody, ErrorDetail};

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The request is malformed or a value is out of range.
    #[error("{0}")]
    BadRequest(String),
    /// No credential, or one that is not valid.
    #[error("{0}")]
    Unauthorized(String),
    /// A valid credential that may not do this.
    #[error("{0}")]
    Forbidden(String),
    /// The named resource does not exist.
    #[error("{kind} '{id}' does not exist: check the id with `nubo {kind} list`")]
    NotFound { kind: &'static str, id: String },
    /// No such API path.
    #[error("there is no API route '{0}': see /api/v1/openapi.json for the routes")]
    UnknownRoute(String),
    /// The resource is in a state where this cannot be done.
    #[error("{0}")]
    Conflict(String),
    /// The project's quota does not allow this.
    #[error("{0}")]
    QuotaExceeded(String),
    /// The request body is larger than allowed.
    #[error("{0}")]
    PayloadTooLarge(String),
    /// The credential sent too many requests.
    #[error("{0}")]
    TooManyRequests(String),
    /// Too many attempts (sign-ins): refused until `retry_after_secs` have
    /// passed, which the response's Retry-After header says too.
    #[error("{message}")]
    RateLimited { message: String, retry_after_secs: u64 },
    /// A service Nubo depends on (e.g. the LDAP server) cannot be reached.
    #[error("{0}")]
    Unavailable(String),
    /// The scheduler found no host; the message names each host's reason.
    #[error("{0}")]
    NoValidHost(String),
    /// Something broke on our side; `internal` is logged, not returned.
    #[error("internal error: {internal}")]
    Internal { internal: String },
}

impl AppError {
    pub fn internal(e: impl std::fmt::Display) -> Self {
        Self::Internal { internal: e.to_string() }
    }

    pub(crate) fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            Self::BadRequest(_) => (StatusCode::BAD_REQUEST, "invalid_request"),
            Self::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            Self::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            Self::NotFound { .. } | Self::UnknownRoute(_) => (StatusCode::NOT_FOUND, "not_found"),
            Self::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            Self::NoValidHost(_) => (StatusCode::CONFLICT, "no_valid_host"),
            Self::QuotaExceeded(_) => (StatusCode::FORBIDDEN, "quota_exceeded"),
            Self::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            Self::PayloadTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            Self::TooManyRequests(_) | Self::RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, "too_many_requests"),
            Self::Internal { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }

    /// The message a user sees.
    pub(crate) fn public_message(&self) -> String {
        match self {
            Self::Internal { .. } => {
                "the control plane hit an internal error; it has been logged: retry, and report it if it persists"
                    .to_string()
            }
            other => other.to_string(),
        }
    }
}

impl From<sqlx::Error> for AppError {
    fn from(e: sqlx::Error) -> Self {
        Self::internal(format!("database: {e}"))
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        if let Self::Internal { internal } = &self {
            tracing::error!(error = %internal, "internal error");
        }
        let body = ErrorBody { error: ErrorDetail { code: code.to_string(), message: self.public_message() } };
        let mut resp = (status, axum::Json(body)).into_response();
        if let Self::RateLimited { retry_after_secs, .. } = &self {
            resp.headers_mut()
                .insert(axum::http::header::RETRY_AFTER, axum::http::HeaderValue::from(*retry_after_secs));
        }
        resp
    }
}

/// `Json<T>` whose rejections (bad JSON, wrong content type, unknown field)
/// come back as our `invalid_request` error instead of axum's plain text.
pub struct ApiJson<T>(pub T);

impl<S, T> axum::extract::FromRequest<S> for ApiJson<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = AppError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(Self(v)),
            Err(rejection) => Err(AppError::BadRequest(format!(
                "{}: send a JSON body matching the API schema (see /api/v1/openapi.json)",
                rejection.body_text()
            ))),
        }
    }
}

/// `Query<T>` whose rejections come back in our JSON error shape.
pub struct ApiQuery<T>(pub T);

impl<S, T> axum::extract::FromRequestParts<S> for ApiQuery<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(Self(v)),
            Err(rejection) => Err(AppError::BadRequest(format!(
                "{}: check the query parameters against /api/v1/openapi.json",
                rejection.body_text()
            ))),
        }
    }
}

pub type AppResult<T> = Result<T, AppError>;
