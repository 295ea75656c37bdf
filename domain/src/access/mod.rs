//! Operator and auditor access tokens, issued by the admin. Only a SHA-256 of the
//! token is stored (in the event and the auth read model); the token is shown once.

mod aggregate;
mod commands;
mod errors;
mod events;
#[cfg(test)]
mod tests;

pub use aggregate::AccessToken;
pub use commands::{AccessTokenCommand, NewAccessToken};
pub use errors::AccessTokenError;
pub use events::{AccessTokenEvent, Role};
