//! The `Factory` aggregate: an enrolled worker process, its products, capabilities,
//! capacity and token. Heartbeats are liveness, not history: they are not events.

mod aggregate;
mod commands;
mod errors;
mod events;
#[cfg(test)]
mod tests;

pub use aggregate::{Factory, FactoryStatus, TOKEN_ROTATION_GRACE_SECS};
pub use commands::{FactoryCommand, NewFactory};
pub use errors::FactoryError;
pub use events::FactoryEvent;
