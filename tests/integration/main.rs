//! baton's integration tests: every behaviour on SQLite and on a real PostgreSQL.
//!
//! One test binary (one link on a 2-core machine), one module per topic. Each body is written
//! once with [`both_backends!`](support::both_backends) and runs as `<name>_sqlite` and
//! `<name>_postgres`, each on a fresh database that is removed afterwards.
//!
//! PostgreSQL comes from `BATON_TEST_PG_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`); when it cannot be reached the Postgres tests
//! fail, they never skip.

mod support;

mod bad_input;
mod cancel;
mod detection;
mod detection_cost;
mod exactly_once;
mod fan_out;
mod faults;
mod instances;
mod leases;
mod notifications;
mod outcome;
mod processes;
mod reports;
mod retention;
mod small_workflows;
mod subscribers;
mod tls;
mod waiting;
