//! The background workers. Each takes a narrow dependency struct (the database, the
//! one client and the cache it needs, its own config), never the HTTP state, and each is
//! safe with several sales instances (`SKIP LOCKED`, advisory locks or leases). The app
//! (`app`) builds and spawns them; tests drive them step by step.

pub mod alerts;
pub mod availability_recheck;
pub mod delivery_events;
pub mod delivery_retry;
pub mod reconciliation;
pub mod reservation_keeper;
pub mod saga_recovery;
