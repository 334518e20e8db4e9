mod auth;
mod config;
mod confirmation;
mod detection;
mod helpers;
mod ingest;
mod journey;
mod unreadable;
