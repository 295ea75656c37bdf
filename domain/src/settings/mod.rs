//! `ProductSettings`: one aggregate per product for its scheduling settings (the
//! scoring weights' product override). Changed rarely, by operators: never per claim.

use crate::scheduler::WeightOverrides;
use crate::{ProductId, Timestamp};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq)]
pub enum SettingsCommand {
    /// Replace the product's weight override (empty: back to the defaults).
    SetWeights {
        product_id: ProductId,
        weights: WeightOverrides,
        now: Timestamp,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all_fields = "camelCase")]
pub enum SettingsEvent {
    WeightsSet {
        product_id: ProductId,
        weights: WeightOverrides,
        at: Timestamp,
    },
}

impl DomainEvent for SettingsEvent {
    fn event_type(&self) -> String {
        match self {
            Self::WeightsSet { .. } => "WeightsSet".to_string(),
        }
    }
    fn event_version(&self) -> String {
        "1".to_string()
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SettingsError {}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
pub struct ProductSettings {
    pub version: u64,
    pub product_id: Option<ProductId>,
    pub weights: WeightOverrides,
}

impl Aggregate for ProductSettings {
    const TYPE: &'static str = "product_settings";
    type Command = SettingsCommand;
    type Event = SettingsEvent;
    type Error = SettingsError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _: &(),
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        match command {
            SettingsCommand::SetWeights {
                product_id,
                weights,
                now,
            } => {
                if self.product_id.as_ref() == Some(&product_id) && self.weights == weights {
                    return Ok(());
                }
                sink.write(
                    SettingsEvent::WeightsSet {
                        product_id,
                        weights,
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
        match event {
            SettingsEvent::WeightsSet {
                product_id,
                weights,
                ..
            } => {
                self.product_id = Some(product_id);
                self.weights = weights;
            }
        }
    }
}

impl crate::Stream for ProductSettings {
    fn version(&self) -> u64 {
        self.version
    }
    fn product_id(&self) -> Option<String> {
        self.product_id.as_ref().map(|p| p.0.clone())
    }
    fn visible_to(&self) -> Vec<String> {
        self.product_id().into_iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::Term;
    use chrono::{TimeZone, Utc};
    use cqrs_es::test::TestFramework;

    #[tokio::test]
    async fn setting_the_same_weights_again_appends_nothing() {
        let t = Utc.timestamp_opt(1_800_000_000, 0).unwrap();
        let mut w = WeightOverrides::default();
        w.0.insert(Term::Age, 2.0);
        let set = SettingsEvent::WeightsSet {
            product_id: ProductId("p".into()),
            weights: w.clone(),
            at: t,
        };
        TestFramework::<ProductSettings>::with(())
            .given(vec![set.clone()])
            .when_async(SettingsCommand::SetWeights {
                product_id: ProductId("p".into()),
                weights: w,
                now: t,
            })
            .await
            .then_expect_events(vec![]);
        TestFramework::<ProductSettings>::with(())
            .given(vec![set])
            .when_async(SettingsCommand::SetWeights {
                product_id: ProductId("p".into()),
                weights: WeightOverrides::default(),
                now: t,
            })
            .await
            .then_expect_events(vec![SettingsEvent::WeightsSet {
                product_id: ProductId("p".into()),
                weights: WeightOverrides::default(),
                at: t,
            }]);
    }
}
