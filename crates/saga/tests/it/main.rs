//! Integration tests of the saga engine against real PostgreSQL: every test gets a fresh
//! database with the sales migrations (`#[sqlx::test]`, server from `DATABASE_URL`).

#![allow(clippy::unwrap_used)]

mod basics;
mod checkpoints;
mod common;
mod crash;
mod parallel;
mod park;
mod race;
mod retry;
