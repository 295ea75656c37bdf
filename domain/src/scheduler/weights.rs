//! Scoring weights: fixed defaults, optionally overridden per product (stored as
//! events) and per claim request. [`FleetWeightConfig`] resolves them in that order.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::fmt;

/// A named term of the score.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Term {
    /// `critical` 3, `high` 2, `normal` 1, `low` 0.
    Priority,
    /// Minutes since the job was created (not reset by requeues): unbounded, so a
    /// waiting job eventually outranks any stream of newer, higher ones.
    Age,
    /// How narrowly the factory's capabilities match the job's: required / offered
    /// (1 when the factory offers none). Specialised factories take specialised work.
    CapabilityFit,
    /// 1 when this factory holds the job's latest checkpoint, else 0.
    Affinity,
    /// 1 / (1 + running jobs of the job's product): products with fewer running jobs
    /// first.
    Fairness,
}

impl Term {
    pub const ALL: [Term; 5] = [
        Self::Priority,
        Self::Age,
        Self::CapabilityFit,
        Self::Affinity,
        Self::Fairness,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::Priority => "priority",
            Self::Age => "age",
            Self::CapabilityFit => "capabilityFit",
            Self::Affinity => "affinity",
            Self::Fairness => "fairness",
        }
    }

    pub fn parse(s: &str) -> Option<Term> {
        Self::ALL.into_iter().find(|t| t.name() == s)
    }

    /// Position in [`Term::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Term {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A full set of weights, one per term (indexed by [`Term::index`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Weights([f64; 5]);

impl Weights {
    /// The defaults (see docs/scheduler.md for why): priority levels are worth one
    /// point each; ten minutes of waiting are worth one priority level; affinity is
    /// worth one level; fit and fairness half a level at most.
    pub fn defaults() -> Self {
        // In Term::ALL order: priority, age, capabilityFit, affinity, fairness.
        Self([1.0, 0.1, 0.5, 1.0, 0.5])
    }

    pub fn get(&self, term: Term) -> f64 {
        self.0[term.index()]
    }

    /// These weights with `overrides` applied.
    pub fn with(&self, overrides: &WeightOverrides) -> Self {
        let mut w = self.0;
        for (t, v) in &overrides.0 {
            w[t.index()] = *v;
        }
        Self(w)
    }

    pub fn iter(&self) -> impl Iterator<Item = (Term, f64)> + '_ {
        Term::ALL.into_iter().map(|t| (t, self.get(t)))
    }

    /// As a JSON object `{"<term>": weight}`.
    pub fn to_json(&self) -> Value {
        Value::Object(
            self.iter()
                .map(|(t, w)| (t.name().to_string(), Value::from(w)))
                .collect(),
        )
    }
}

/// Some terms' weights, replacing the defaults (product) or the product's (request).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct WeightOverrides(pub BTreeMap<Term, f64>);

/// A weight that cannot be used; `field` names it (`weights.<term>`).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct WeightError {
    pub field: String,
    pub message: String,
}

impl WeightOverrides {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Parses `{"<term>": number}`: unknown terms, non-numbers, negative, NaN or
    /// infinite weights are refused, naming the field.
    pub fn parse(map: &Map<String, Value>) -> Result<Self, WeightError> {
        let mut out = BTreeMap::new();
        for (name, value) in map {
            let field = format!("weights.{name}");
            let term = Term::parse(name).ok_or_else(|| WeightError {
                field: field.clone(),
                message: format!(
                    "unknown term {name:?}; terms are {}",
                    Term::ALL.map(Term::name).join(", ")
                ),
            })?;
            let w = value.as_f64().ok_or_else(|| WeightError {
                field: field.clone(),
                message: format!("the weight of {name} must be a number"),
            })?;
            if !w.is_finite() || w < 0.0 {
                return Err(WeightError {
                    field,
                    message: format!("the weight of {name} must be a finite number ≥ 0"),
                });
            }
            out.insert(term, w);
        }
        Ok(Self(out))
    }

    pub fn to_json(&self) -> Value {
        Value::Object(
            self.0
                .iter()
                .map(|(t, w)| (t.name().to_string(), Value::from(*w)))
                .collect(),
        )
    }
}

/// Defaults → product override → request override.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct FleetWeightConfig {
    pub product: Option<WeightOverrides>,
    pub request: Option<WeightOverrides>,
}

impl FleetWeightConfig {
    pub fn resolve(&self) -> Weights {
        let mut w = Weights::defaults();
        if let Some(p) = &self.product {
            w = w.with(p);
        }
        if let Some(r) = &self.request {
            w = w.with(r);
        }
        w
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn request_overrides_product_overrides_defaults() {
        let product =
            WeightOverrides::parse(json!({"age": 1.0, "affinity": 0.0}).as_object().unwrap())
                .unwrap();
        let request = WeightOverrides::parse(json!({"age": 2.0}).as_object().unwrap()).unwrap();
        let w = FleetWeightConfig {
            product: Some(product),
            request: Some(request),
        }
        .resolve();
        assert_eq!(w.get(Term::Age), 2.0);
        assert_eq!(w.get(Term::Affinity), 0.0);
        assert_eq!(w.get(Term::Priority), 1.0);
    }

    #[test]
    fn bad_weights_name_the_field() {
        for (body, field) in [
            (json!({"speed": 1.0}), "weights.speed"),
            (json!({"age": -1.0}), "weights.age"),
            (json!({"age": "high"}), "weights.age"),
        ] {
            let e = WeightOverrides::parse(body.as_object().unwrap()).unwrap_err();
            assert_eq!(e.field, field);
        }
    }
}
