//! Test support for Hallmark, used by every crate's integration tests.
//!
//! * [`database`]: a fresh PostgreSQL database per test, dropped afterwards.
//! * [`broker`]: a unique exchange/queue namespace per test on the real RabbitMQ, with short
//!   retry delays and queues that expire when the test is gone.
//! * [`otlp`]: a real OTLP/HTTP receiver that keeps every span it is sent.
//! * [`s3`]: a real S3 server (SigV4 authentication, objects in a temporary directory) that can
//!   be made to fail on demand.
//! * [`faults`]: broker connections cut, RabbitMQ stopped, PostgreSQL restarted.
//! * [`process`]: the services as real child processes (what `cargo build` produced).
//! * [`fixtures`]: the shared STL models.
//! * [`journeys`]: realistic spans of many orders' journeys, as the services export them.
//! * [`measure`]: what the benchmarks measure and report with (CPU time, memory, percentiles).
//! * [`tls`]: a CA, server and client certificates, and another CA's, as PEM files.
//! * [`oidc`]: tokens of the demo users from the identity provider (Keycloak in `scripts/test`).
//!
//! Where the servers are: `HALLMARK_TEST_DATABASE_URL` (default
//! `postgres://hallmark:hallmark@127.0.0.1:5432/postgres`) and `HALLMARK_TEST_AMQP_URL` (default
//! `amqp://guest:guest@127.0.0.1:5672/%2f`). `scripts/test` starts both when they are not running,
//! and Keycloak for `HALLMARK_TEST_OIDC_ISSUER` and `HALLMARK_TEST_OIDC_OTHER_ISSUER`.

pub mod broker;
pub mod database;
pub mod faults;
pub mod fixtures;
pub mod journeys;
pub mod measure;
pub mod oidc;
pub mod otlp;
pub mod process;
pub mod s3;
pub mod tls;
pub mod wait;
pub mod webhook;
