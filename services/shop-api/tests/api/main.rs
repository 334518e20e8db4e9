mod access;
mod create_order;
mod decisions;
mod helpers;
mod partner_limits;
mod s3;
mod status_events;
mod tls;
