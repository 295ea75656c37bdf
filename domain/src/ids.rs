//! Newtypes for identifiers, so a job id can never be passed where a factory id is
//! expected. Ids are UUID v7 (time ordered) except products, which are names chosen
//! by operators.

use serde::{Deserialize, Serialize};
use std::fmt;
use uuid::Uuid;

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident, $prefix:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Default)]
        #[serde(transparent)]
        pub struct $name(pub Uuid);

        impl $name {
            /// Wraps an id generated elsewhere (ids are injected, never made here).
            pub fn from_uuid(id: Uuid) -> Self {
                Self(id)
            }
            /// Parses the textual form used in URLs and JSON.
            pub fn parse(s: &str) -> Option<Self> {
                Uuid::parse_str(s).ok().map(Self)
            }
            /// The aggregate id under which this entity's events are stored.
            pub fn aggregate_id(&self) -> String {
                format!(concat!($prefix, "{}"), self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

uuid_id!(
    /// A job (UUID v7). Its aggregate id carries the product: see [`JobId::stream_id`].
    JobId, "job:"
);
uuid_id!(
    /// An enrolled factory (worker process).
    FactoryId, "factory:"
);
uuid_id!(
    /// One lease of one job by one factory.
    RunId, "run:"
);
uuid_id!(
    /// An operator or auditor access token (its id, never its secret).
    TokenId, "token:"
);

impl JobId {
    /// Jobs are scoped by product: the stream id is `<productId>/<jobId>`.
    pub fn stream_id(&self, product: &ProductId) -> String {
        format!("{}/{}", product.0, self.0)
    }
}

/// The tenant. Every job, event and token is scoped to products.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Default)]
#[serde(transparent)]
pub struct ProductId(pub String);

impl ProductId {
    /// Checks a product name: 1–64 characters of `[A-Za-z0-9._-]`; `*` is reserved
    /// for "every product" in token scopes.
    pub fn parse(s: &str) -> Option<Self> {
        let ok = !s.is_empty()
            && s.len() <= 64
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        ok.then(|| Self(s.to_string()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ProductId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn product_names_are_checked() {
        assert!(ProductId::parse("shop-1.eu_west").is_some());
        assert!(ProductId::parse("").is_none());
        assert!(ProductId::parse("*").is_none());
        assert!(ProductId::parse("a/b").is_none());
        assert!(ProductId::parse(&"x".repeat(65)).is_none());
    }

    #[test]
    fn job_stream_id_carries_the_product() {
        let id = JobId(Uuid::nil());
        assert_eq!(
            id.stream_id(&ProductId("p1".into())),
            "p1/00000000-0000-0000-0000-000000000000"
        );
    }
}
