//! Fleet-wide run-time flags (`FLEET_PREEMPTION`, `FLEET_BUDGETS`): `off` (default) |
//! `shadow` (decide and record what would have happened, change nothing) | `on`.
//! One aggregate for the fleet; the environment seeds a flag only while the log has
//! no event for it.

use crate::Timestamp;
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::str::FromStr;

/// The aggregate id of the fleet's flags.
pub const FLEET_FLAGS_ID: &str = "fleet";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Flag {
    Preemption,
    Budgets,
}

impl Flag {
    pub const ALL: [Flag; 2] = [Self::Preemption, Self::Budgets];
    pub fn name(self) -> &'static str {
        match self {
            Self::Preemption => "preemption",
            Self::Budgets => "budgets",
        }
    }
    /// The environment variable that seeds it.
    pub fn env_var(self) -> &'static str {
        match self {
            Self::Preemption => "FLEET_PREEMPTION",
            Self::Budgets => "FLEET_BUDGETS",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum FlagMode {
    #[default]
    Off,
    Shadow,
    On,
}

impl FlagMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Off => "off",
            Self::Shadow => "shadow",
            Self::On => "on",
        }
    }
}

impl FromStr for FlagMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "off" => Ok(Self::Off),
            "shadow" => Ok(Self::Shadow),
            "on" => Ok(Self::On),
            other => Err(format!("{other:?} is not one of off, shadow, on")),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum FlagsCommand {
    /// Set some flags; flags already at that mode append nothing.
    Set {
        modes: BTreeMap<Flag, FlagMode>,
        now: Timestamp,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all_fields = "camelCase")]
pub enum FlagsEvent {
    FlagChanged {
        flag: Flag,
        mode: FlagMode,
        at: Timestamp,
    },
}

impl DomainEvent for FlagsEvent {
    fn event_type(&self) -> String {
        "FlagChanged".to_string()
    }
    fn event_version(&self) -> String {
        "1".to_string()
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FlagsError {}

/// The flags as the log has them: a flag absent here has never been set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct FleetFlags {
    pub version: u64,
    pub modes: BTreeMap<Flag, FlagMode>,
}

impl Aggregate for FleetFlags {
    const TYPE: &'static str = "fleet_flags";
    type Command = FlagsCommand;
    type Event = FlagsEvent;
    type Error = FlagsError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _: &(),
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        let FlagsCommand::Set { modes, now } = command;
        for (flag, mode) in modes {
            if self.modes.get(&flag) != Some(&mode) {
                sink.write(
                    FlagsEvent::FlagChanged {
                        flag,
                        mode,
                        at: now,
                    },
                    self,
                )
                .await;
            }
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        self.version += 1;
        let FlagsEvent::FlagChanged { flag, mode, .. } = event;
        self.modes.insert(flag, mode);
    }
}

impl crate::Stream for FleetFlags {
    fn version(&self) -> u64 {
        self.version
    }
    fn product_id(&self) -> Option<String> {
        None
    }
    /// Fleet-wide: only `*` callers and the admin see flag events.
    fn visible_to(&self) -> Vec<String> {
        vec![]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};
    use cqrs_es::test::TestFramework;

    #[tokio::test]
    async fn only_changes_are_recorded() {
        let t = Utc.timestamp_opt(1_800_000_000, 0).unwrap();
        TestFramework::<FleetFlags>::with(())
            .given(vec![FlagsEvent::FlagChanged {
                flag: Flag::Preemption,
                mode: FlagMode::On,
                at: t,
            }])
            .when_async(FlagsCommand::Set {
                modes: BTreeMap::from([
                    (Flag::Preemption, FlagMode::On),
                    (Flag::Budgets, FlagMode::Shadow),
                ]),
                now: t,
            })
            .await
            .then_expect_events(vec![FlagsEvent::FlagChanged {
                flag: Flag::Budgets,
                mode: FlagMode::Shadow,
                at: t,
            }]);
    }

    #[test]
    fn modes_parse() {
        assert_eq!("shadow".parse::<FlagMode>(), Ok(FlagMode::Shadow));
        assert!("maybe".parse::<FlagMode>().is_err());
    }
}
