//! What every Hallmark service process needs, so each service's `main.rs` stays a few lines:
//! configuration from the environment ([`env`]), the database pool ([`db`]), object storage
//! with spans ([`storage`]), the JSON error body ([`error`]) and graceful serving ([`server`]).

pub mod db;
pub mod env;
pub mod error;
pub mod extract;
pub mod server;
pub mod service;
pub mod storage;
