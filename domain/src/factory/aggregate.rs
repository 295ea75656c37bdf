use super::commands::{FactoryCommand, NewFactory};
use super::errors::FactoryError;
use super::events::FactoryEvent;
use crate::Timestamp;
use chrono::Duration;
use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use serde::{Deserialize, Serialize};

/// How long a rotated-out token keeps working if the new one is never used.
pub const TOKEN_ROTATION_GRACE_SECS: i64 = 60;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum FactoryStatus {
    #[default]
    New,
    Active,
    Revoked,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct Factory {
    pub version: u64,
    pub spec: Option<NewFactory>,
    pub status: FactoryStatus,
    pub token_hash: String,
    /// The rotated-out token, while it still works.
    pub previous_token_hash: Option<String>,
    pub enrolled_at: Option<Timestamp>,
}

impl Factory {
    fn handle_command(&self, command: FactoryCommand) -> Result<Vec<FactoryEvent>, FactoryError> {
        use FactoryCommand::*;
        match command {
            Enroll { factory, now } => {
                if self.spec.is_some() {
                    return Err(FactoryError::AlreadyExists);
                }
                validate(&factory)?;
                Ok(vec![FactoryEvent::FactoryEnrolled { factory, at: now }])
            }
            RotateToken {
                new_token_hash,
                now,
            } => {
                self.active()?;
                Ok(vec![FactoryEvent::FactoryTokenRotated {
                    token_hash: new_token_hash,
                    previous_token_hash: self.token_hash.clone(),
                    previous_valid_until: now + Duration::seconds(TOKEN_ROTATION_GRACE_SECS),
                    at: now,
                }])
            }
            ConfirmToken { token_hash, now } => {
                self.active()?;
                match &self.previous_token_hash {
                    Some(prev) if token_hash == self.token_hash => {
                        Ok(vec![FactoryEvent::FactoryTokenConfirmed {
                            token_hash,
                            retired_token_hash: prev.clone(),
                            at: now,
                        }])
                    }
                    _ => Ok(vec![]),
                }
            }
            Revoke { now } => {
                self.active()?;
                Ok(vec![FactoryEvent::FactoryRevoked { at: now }])
            }
        }
    }

    fn active(&self) -> Result<(), FactoryError> {
        match self.status {
            FactoryStatus::New => Err(FactoryError::NotFound),
            FactoryStatus::Revoked => Err(FactoryError::Revoked),
            FactoryStatus::Active => Ok(()),
        }
    }
}

fn validate(f: &NewFactory) -> Result<(), FactoryError> {
    let invalid = |field, message: &str| {
        Err(FactoryError::Invalid {
            field,
            message: message.into(),
        })
    };
    if f.name.trim().is_empty() || f.name.chars().count() > 200 {
        return invalid("name", "name must be 1 to 200 characters");
    }
    if f.product_ids.is_empty() {
        return invalid("productIds", "a factory serves at least one product");
    }
    if !(1..=1000).contains(&f.capacity) {
        return invalid("capacity", "capacity must be between 1 and 1000");
    }
    if f.capabilities.iter().any(|c| c.is_empty() || c.len() > 64) {
        return invalid("capabilities", "each capability must be 1 to 64 characters");
    }
    Ok(())
}

impl Aggregate for Factory {
    const TYPE: &'static str = "factory";
    type Command = FactoryCommand;
    type Event = FactoryEvent;
    type Error = FactoryError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        for e in self.handle_command(command)? {
            sink.write(e, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        self.version += 1;
        match event {
            FactoryEvent::FactoryEnrolled { factory, at } => {
                self.token_hash = factory.token_hash.clone();
                self.spec = Some(factory);
                self.status = FactoryStatus::Active;
                self.enrolled_at = Some(at);
            }
            FactoryEvent::FactoryTokenRotated {
                token_hash,
                previous_token_hash,
                ..
            } => {
                self.token_hash = token_hash;
                self.previous_token_hash = Some(previous_token_hash);
            }
            FactoryEvent::FactoryTokenConfirmed { .. } => self.previous_token_hash = None,
            FactoryEvent::FactoryRevoked { .. } => {
                self.status = FactoryStatus::Revoked;
                self.previous_token_hash = None;
            }
        }
    }
}
