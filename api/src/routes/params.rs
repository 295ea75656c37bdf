//! Query-string and path parsing with the API's errors (422 naming the field; 404
//! for an id that cannot exist).

use crate::error::ApiError;
use std::collections::HashMap;
use uuid::Uuid;

pub type QueryMap = HashMap<String, String>;

/// `?limit=` (default 50, 1–500).
pub fn limit(q: &QueryMap) -> Result<i64, ApiError> {
    match q.get("limit") {
        None => Ok(50),
        Some(s) => match s.parse::<i64>() {
            Ok(n) if (1..=500).contains(&n) => Ok(n),
            _ => Err(ApiError::invalid(
                "limit",
                "limit must be an integer from 1 to 500",
            )),
        },
    }
}

/// An integer query parameter ≥ 0, default 0.
pub fn non_negative(q: &QueryMap, name: &'static str) -> Result<i64, ApiError> {
    match q.get(name) {
        None => Ok(0),
        Some(s) => match s.parse::<i64>() {
            Ok(n) if n >= 0 => Ok(n),
            _ => Err(ApiError::invalid(
                name,
                format!("{name} must be an integer ≥ 0"),
            )),
        },
    }
}

/// An id in the path: anything that is not a UUID names nothing (404).
pub fn id(s: &str, what: &'static str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(s).map_err(|_| ApiError::NotFound(what))
}
