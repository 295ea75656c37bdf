//! The one error type of the HTTP API: every handler returns `Result<_, ApiError>`,
//! and every error answers `{"error": {"code", "message", "field"?, "current"?}}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use gigafactory_domain::job::{CurrentState, JobError};
use serde_json::json;

#[derive(Debug, Clone, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    MalformedJson(String),
    #[error("{message}")]
    Invalid { field: String, message: String },
    #[error("missing or invalid bearer token")]
    Unauthorized,
    #[error("{0}")]
    Forbidden(&'static str),
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("stale lease epoch: the lease is no longer held with this epoch")]
    Fenced { current: CurrentState },
    #[error("{message}")]
    InvalidStage {
        current: CurrentState,
        message: String,
    },
    #[error("{0}")]
    Conflict(String),
    #[error("request body too large")]
    TooLarge,
    #[error("database unavailable")]
    Unavailable,
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Invalid {
            field: field.into(),
            message: message.into(),
        }
    }

    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            Self::MalformedJson(_) => (StatusCode::BAD_REQUEST, "malformed_json"),
            Self::Invalid { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "invalid"),
            Self::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            Self::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            Self::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            Self::Fenced { .. } => (StatusCode::CONFLICT, "fenced"),
            Self::InvalidStage { .. } => (StatusCode::CONFLICT, "invalid_stage"),
            Self::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            Self::TooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
            Self::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            Self::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }

    /// The status and the `{"code", "message", "field"?, "current"?}` object this
    /// error answers with (also one item's outcome in a batch answer). Logs and counts
    /// it as the answer would.
    pub fn status_and_body(&self) -> (StatusCode, serde_json::Value) {
        let (status, code) = self.status_and_code();
        if let Self::Internal(detail) = self {
            tracing::error!(error = %detail, "internal error");
        }
        if let Self::Fenced { .. } = self {
            metrics::counter!("gigafactory_fenced_writes_total").increment(1);
        }
        let mut body = json!({"code": code, "message": self.to_string()});
        match self {
            Self::Invalid { field, .. } => body["field"] = json!(field),
            Self::Fenced { current } | Self::InvalidStage { current, .. } => {
                body["current"] = json!({"stage": current.stage, "epoch": current.epoch});
            }
            _ => {}
        }
        (status, body)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, body) = self.status_and_body();
        (status, Json(json!({ "error": body }))).into_response()
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_) => Self::Unavailable,
            sqlx::Error::Database(d) if d.code().is_some_and(|c| unavailable_code(&c)) => {
                Self::Unavailable
            }
            _ => Self::Internal(e.to_string()),
        }
    }
}

/// SQLSTATEs that mean "the database is not there for us": connection exceptions
/// (08…), the database missing (3D000), shutting down or starting (57P01–57P03), too
/// many connections (53300), authentication failures (28…).
fn unavailable_code(code: &str) -> bool {
    code.starts_with("08")
        || code.starts_with("28")
        || matches!(code, "3D000" | "57P01" | "57P02" | "57P03" | "53300")
}

impl From<gigafactory_projections::ProjectionError> for ApiError {
    fn from(e: gigafactory_projections::ProjectionError) -> Self {
        match e {
            gigafactory_projections::ProjectionError::Db(e) => e.into(),
            other => Self::Internal(other.to_string()),
        }
    }
}

impl From<JobError> for ApiError {
    fn from(e: JobError) -> Self {
        match e {
            JobError::NotFound => Self::NotFound("job"),
            JobError::AlreadyExists => Self::Conflict("job already exists".into()),
            JobError::Fenced { current } => Self::Fenced { current },
            JobError::InvalidStage { current, message } => Self::InvalidStage { current, message },
            JobError::NotExpired => Self::Conflict("lease has not expired".into()),
            JobError::NotCapable => Self::Conflict("factory lacks required capabilities".into()),
            JobError::Invalid { field, message } => Self::invalid(field, message),
        }
    }
}

impl From<gigafactory_domain::factory::FactoryError> for ApiError {
    fn from(e: gigafactory_domain::factory::FactoryError) -> Self {
        use gigafactory_domain::factory::FactoryError as F;
        match e {
            F::NotFound => Self::NotFound("factory"),
            F::AlreadyExists => Self::Conflict("factory already enrolled".into()),
            F::Revoked => Self::Conflict("factory is revoked".into()),
            F::Invalid { field, message } => Self::invalid(field, message),
        }
    }
}

impl From<gigafactory_domain::access::AccessTokenError> for ApiError {
    fn from(e: gigafactory_domain::access::AccessTokenError) -> Self {
        use gigafactory_domain::access::AccessTokenError as T;
        match e {
            T::NotFound => Self::NotFound("token"),
            T::AlreadyExists => Self::Conflict("token already exists".into()),
            T::Invalid { field, message } => Self::invalid(field, message),
        }
    }
}

impl From<gigafactory_domain::settings::SettingsError> for ApiError {
    fn from(e: gigafactory_domain::settings::SettingsError) -> Self {
        match e {}
    }
}

impl From<gigafactory_domain::flags::FlagsError> for ApiError {
    fn from(e: gigafactory_domain::flags::FlagsError) -> Self {
        match e {}
    }
}
