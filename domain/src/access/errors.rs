#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AccessTokenError {
    #[error("token not found")]
    NotFound,
    #[error("token already exists")]
    AlreadyExists,
    #[error("{message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
}
