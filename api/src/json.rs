//! A JSON body extractor whose errors follow the API's shape: 400 for a body that is
//! not JSON, 422 naming the field for a value of the wrong type or a missing field,
//! 413 for a body over the limit.

use crate::error::ApiError;
use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::TooLarge
            } else {
                ApiError::MalformedJson(e.body_text())
            }
        })?;
        parse(&bytes).map(JsonBody)
    }
}

/// Parses a JSON body: syntax errors are 400, shape errors 422 with the field path.
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let bytes = if bytes.iter().all(|b| b.is_ascii_whitespace()) {
        b"{}" as &[u8]
    } else {
        bytes
    };
    let value: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| ApiError::MalformedJson(format!("request body is not valid JSON: {e}")))?;
    if let Some(field) = nul_at(&value, String::new()) {
        // PostgreSQL's jsonb cannot hold U+0000: refuse it here rather than store an
        // event nobody can read back.
        return Err(ApiError::invalid(
            field,
            "text may not contain the NUL character (U+0000)",
        ));
    }
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        let field = if path == "." {
            // "missing field `title`" names the field only in the message.
            inner.split('`').nth(1).unwrap_or("body").to_string()
        } else {
            path
        };
        ApiError::invalid(field, inner)
    })
}

/// The path of the first string (or key) containing U+0000, if any.
fn nul_at(v: &serde_json::Value, path: String) -> Option<String> {
    let here = |p: &str| {
        if p.is_empty() {
            "body".to_string()
        } else {
            p.to_string()
        }
    };
    match v {
        serde_json::Value::String(s) if s.contains('\0') => Some(here(&path)),
        serde_json::Value::Array(a) => a
            .iter()
            .enumerate()
            .find_map(|(i, x)| nul_at(x, format!("{path}[{i}]"))),
        serde_json::Value::Object(m) => m.iter().find_map(|(k, x)| {
            let p = if path.is_empty() {
                k.clone()
            } else {
                format!("{path}.{k}")
            };
            if k.contains('\0') {
                Some(p)
            } else {
                nul_at(x, p)
            }
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Deserialize, Debug)]
    #[allow(dead_code)]
    struct Body {
        title: String,
        budget: Option<Budget>,
    }
    #[derive(Deserialize, Debug)]
    #[allow(dead_code)]
    struct Budget {
        usd: f64,
    }

    #[test]
    fn names_the_field() {
        match parse::<Body>(br#"{"title": "x", "budget": {"usd": "a"}}"#) {
            Err(ApiError::Invalid { field, .. }) => assert_eq!(field, "budget.usd"),
            other => panic!("{other:?}"),
        }
        match parse::<Body>(br#"{}"#) {
            Err(ApiError::Invalid { field, .. }) => assert_eq!(field, "title"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            parse::<Body>(b"{nope"),
            Err(ApiError::MalformedJson(_))
        ));
    }
}
