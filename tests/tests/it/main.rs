//! Integration tests: the real router (and real processes) against a real
//! PostgreSQL, a fresh database per test.

mod artifacts;
mod audit;
mod bad_input;
mod batch;
mod chained;
mod claims;
mod coalesced;
mod leases;
mod lifecycle;
mod openapi;
mod optimistic;
mod platform;
mod preemption;
mod process;
mod projector;
mod scheduler;
mod simulate;
mod tokens;
mod turns;
