//! Integration tests against the SNS/SQS emulator (LocalStack) on `AWS_ENDPOINT_URL`, default
//! `http://127.0.0.1:4566` (start it with `scripts/ensure-localstack`). Every test makes its own
//! uniquely named topic and queues, so tests run in parallel and never see each other's messages.
//! If the emulator is not reachable, the tests fail saying so.

#![allow(clippy::unwrap_used)]

mod common;
mod consume;
mod envelope;
mod provision;
mod publish;
