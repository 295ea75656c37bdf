use super::commands::AccessTokenCommand;
use super::errors::AccessTokenError;
use super::events::AccessTokenEvent;
use super::NewAccessToken;
use crate::ProductId;
use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct AccessToken {
    pub version: u64,
    pub token: Option<NewAccessToken>,
    pub revoked: bool,
}

impl AccessToken {
    fn handle_command(
        &self,
        command: AccessTokenCommand,
    ) -> Result<Vec<AccessTokenEvent>, AccessTokenError> {
        match command {
            AccessTokenCommand::Issue { token, now } => {
                if self.token.is_some() {
                    return Err(AccessTokenError::AlreadyExists);
                }
                let invalid = |field, message: &str| {
                    Err(AccessTokenError::Invalid {
                        field,
                        message: message.into(),
                    })
                };
                if token.name.trim().is_empty() || token.name.chars().count() > 200 {
                    return invalid("name", "name must be 1 to 200 characters");
                }
                let all = token.products.len() == 1 && token.products[0] == "*";
                if token.products.is_empty()
                    || (!all && token.products.iter().any(|p| ProductId::parse(p).is_none()))
                {
                    return invalid(
                        "products",
                        "products must be [\"*\"] or a list of product ids",
                    );
                }
                Ok(vec![AccessTokenEvent::AccessTokenIssued { token, at: now }])
            }
            AccessTokenCommand::Revoke { now } => match (&self.token, self.revoked) {
                (None, _) => Err(AccessTokenError::NotFound),
                (Some(_), true) => Ok(vec![]),
                (Some(_), false) => Ok(vec![AccessTokenEvent::AccessTokenRevoked { at: now }]),
            },
        }
    }
}

impl Aggregate for AccessToken {
    const TYPE: &'static str = "access_token";
    type Command = AccessTokenCommand;
    type Event = AccessTokenEvent;
    type Error = AccessTokenError;
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
            AccessTokenEvent::AccessTokenIssued { token, .. } => self.token = Some(token),
            AccessTokenEvent::AccessTokenRevoked { .. } => self.revoked = true,
        }
    }
}
