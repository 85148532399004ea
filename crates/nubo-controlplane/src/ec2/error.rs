//! EC2 error responses: a code botocore knows (`InvalidInstanceID.NotFound`,
//! `AuthFailure`, ...), a message that says what went wrong and what to
//! do, and the HTTP status the SDKs expect. Client errors are always 4xx:
//! botocore retries 5xx answers, which would only repeat a refusal.

use crate::error::AppError;
use axum::http::StatusCode;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct Ec2Error {
    pub status: StatusCode,
    pub code: String,
    pub message: String,
}

/// Which resource an action is about, to name a generic refusal the way
/// EC2 does (a conflict is `IncorrectInstanceState` for an instance,
/// `IncorrectState` for a volume; a quota is `InstanceLimitExceeded` or
/// `VolumeLimitExceeded`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Domain {
    Instance,
    Volume,
    Other,
}

impl Ec2Error {
    pub fn new(status: StatusCode, code: impl Into<String>, message: impl Into<String>) -> Self {
        Self { status, code: code.into(), message: message.into() }
    }

    pub fn bad(code: &str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::bad("InvalidParameterValue", message)
    }

    /// A refused `MaxResults` or `NextToken`.
    pub fn from_page(e: crate::pagination::PageError) -> Self {
        match e {
            crate::pagination::PageError::Token => Self::bad(
                "InvalidPaginationToken",
                "The NextToken is not valid: pass the nextToken of the previous answer unchanged",
            ),
            limit @ crate::pagination::PageError::Limit { .. } => Self::invalid(limit.to_string()),
        }
    }

    pub fn missing(name: &str) -> Self {
        Self::bad("MissingParameter", format!("The request must contain the parameter {name}"))
    }

    pub fn auth(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "AuthFailure", message)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "UnauthorizedOperation", message)
    }

    pub fn dry_run_ok() -> Self {
        Self::new(
            StatusCode::PRECONDITION_FAILED,
            "DryRunOperation",
            "Request would have succeeded, but DryRun flag is set.",
        )
    }

    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            "An internal error has occurred; it has been logged: retry, and report it if it persists",
        )
    }

    /// The code for a missing resource of `kind` (as `AppError::NotFound` names kinds).
    pub fn not_found_code(kind: &str) -> &'static str {
        match kind {
            "instance" => "InvalidInstanceID.NotFound",
            "volume" => "InvalidVolume.NotFound",
            "image" => "InvalidAMIID.NotFound",
            "keypair" | "key pair" => "InvalidKeyPair.NotFound",
            "snapshot" => "InvalidSnapshot.NotFound",
            "security group" => "InvalidGroup.NotFound",
            _ => "InvalidParameterValue",
        }
    }

    /// `The instance ID 'i-1' does not exist` / `The instance IDs 'i-1, i-2' do not exist`, as EC2 words it.
    pub fn not_found(kind: &str, ids: &[String]) -> Self {
        let label = match kind {
            "instance" => "instance ID",
            "volume" => "volume",
            "image" => "image id",
            "snapshot" => "snapshot",
            "security group" => "security group",
            "keypair" | "key pair" => "key pair",
            other => other,
        };
        let list = ids.iter().map(|i| i.chars().take(80).collect::<String>()).collect::<Vec<_>>().join(", ");
        let message = if ids.len() == 1 {
            format!("The {label} '{list}' does not exist")
        } else {
            format!("The {label}s '{list}' do not exist")
        };
        Self::bad(Self::not_found_code(kind), message)
    }

    /// A REST-layer refusal, named as EC2 names it for `domain`.
    pub fn from_app(e: AppError, domain: Domain) -> Self {
        let message = e.to_string();
        match e {
            AppError::NotFound { kind, id } => Self::not_found(kind, &[id]),
            AppError::BadRequest(m) | AppError::PayloadTooLarge(m) => Self::invalid(m),
            AppError::Unauthorized(m) => Self::auth(m),
            AppError::Forbidden(m) => Self::unauthorized(m),
            AppError::UnknownRoute(_) => Self::bad("InvalidAction", message),
            AppError::Conflict(m) => match domain {
                Domain::Instance => Self::bad("IncorrectInstanceState", m),
                _ => Self::bad("IncorrectState", m),
            },
            AppError::QuotaExceeded(m) => match domain {
                Domain::Volume => Self::bad("VolumeLimitExceeded", m),
                _ => Self::bad("InstanceLimitExceeded", m),
            },
            AppError::NoValidHost(m) => match domain {
                Domain::Volume => Self::bad("InsufficientVolumeCapacity", m),
                _ => Self::bad("InsufficientInstanceCapacity", m),
            },
            // botocore retries these two after a pause, which is what they call for.
            AppError::TooManyRequests(m) | AppError::RateLimited { message: m, .. } => {
                Self::new(StatusCode::SERVICE_UNAVAILABLE, "RequestLimitExceeded", m)
            }
            AppError::Unavailable(m) => Self::new(StatusCode::SERVICE_UNAVAILABLE, "Unavailable", m),
            AppError::Internal { internal } => {
                tracing::error!(error = %internal, "internal error (EC2 API)");
                Self::internal()
            }
        }
    }
}

impl From<sqlx::Error> for Ec2Error {
    fn from(e: sqlx::Error) -> Self {
        Self::from_app(e.into(), Domain::Other)
    }
}

pub type Ec2Result<T> = Result<T, Ec2Error>;

/// `AppResult` into `Ec2Result`, naming refusals for a domain.
pub trait InDomain<T> {
    fn in_domain(self, domain: Domain) -> Ec2Result<T>;
}

impl<T> InDomain<T> for Result<T, AppError> {
    fn in_domain(self, domain: Domain) -> Ec2Result<T> {
        self.map_err(|e| Ec2Error::from_app(e, domain))
    }
}
