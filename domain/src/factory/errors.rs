#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FactoryError {
    #[error("factory not found")]
    NotFound,
    #[error("factory already enrolled")]
    AlreadyExists,
    #[error("factory is revoked")]
    Revoked,
    #[error("{message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
}
