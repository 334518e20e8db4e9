mod detection;
mod helpers;
mod ingest;
mod journey;
