//! Gigafactory's server: the HTTP API (axum), authentication, the coordinator (claims,
//! leases, the sweeper), the log worker (sequencer + projector), the embedded
//! PostgreSQL and the `gigafactory` CLI.

pub mod app;
pub mod artifacts;
pub mod audit_cli;
pub mod auth;
pub mod background;
pub mod claim;
pub mod cli;
pub mod coalesce;
pub mod coalesced;
pub mod commands;
pub mod db;
pub mod embedded;
pub mod error;
pub mod flags;
pub mod job_products;
pub mod json;
pub mod maintenance;
pub mod metrics;
pub mod openapi;
pub mod preemption;
pub mod routes;
pub mod scheduling;
pub mod simulate;
pub mod views;

pub use app::{App, AppState, Settings};
