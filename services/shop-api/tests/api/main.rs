mod create_order;
mod decisions;
mod helpers;
mod s3;
