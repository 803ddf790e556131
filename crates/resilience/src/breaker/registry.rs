//! The named breakers a service exposes (health, metrics, logs).

use std::{fmt, sync::Arc};

use parking_lot::RwLock;

use super::{BreakerConfig, BreakerSnapshot, BreakerState, CircuitBreaker};

/// Named breakers a service exposes. Clones share the same set; breakers are listed in the order
/// they were registered.
#[derive(Clone, Default)]
pub struct Registry {
    breakers: Arc<RwLock<Vec<CircuitBreaker>>>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Builds a breaker from `config` and registers it under `config.name`. A breaker already
    /// registered under that name is replaced (in place), so the registry never lists a name twice.
    pub fn register(&self, config: BreakerConfig) -> CircuitBreaker {
        let breaker = CircuitBreaker::new(config);
        let mut breakers = self.breakers.write();
        match breakers.iter_mut().find(|b| b.name() == breaker.name()) {
            Some(existing) => *existing = breaker.clone(),
            None => breakers.push(breaker.clone()),
        }
        breaker
    }

    /// The breaker registered under `name`.
    pub fn get(&self, name: &str) -> Option<CircuitBreaker> {
        self.breakers
            .read()
            .iter()
            .find(|b| b.name() == name)
            .cloned()
    }

    /// Every registered breaker.
    pub fn all(&self) -> Vec<CircuitBreaker> {
        self.breakers.read().clone()
    }

    /// A snapshot of every registered breaker.
    pub fn snapshots(&self) -> Vec<BreakerSnapshot> {
        self.breakers
            .read()
            .iter()
            .map(CircuitBreaker::snapshot)
            .collect()
    }

    /// Whether any breaker is not closed (open, or half-open waiting on its trial call).
    pub fn any_open(&self) -> bool {
        self.breakers
            .read()
            .iter()
            .any(|b| b.state() != BreakerState::Closed)
    }
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.breakers.read().iter()).finish()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn config(name: &str) -> BreakerConfig {
        BreakerConfig::new(name, 50, Duration::from_secs(30), 1, Duration::from_secs(1))
    }

    fn trip(breaker: &CircuitBreaker) {
        match breaker.try_acquire() {
            Ok(permit) => permit.failure(),
            Err(rejected) => panic!("unexpected rejection: {rejected}"),
        }
        assert_eq!(breaker.state(), BreakerState::Open);
    }

    #[test]
    fn registers_gets_and_snapshots_in_order() {
        let registry = Registry::new();
        registry.register(config("delivery"));
        let product = registry.register(config("product"));
        assert_eq!(
            registry.get("product").map(|b| b.name().to_owned()),
            Some("product".to_owned())
        );
        assert!(registry.get("database").is_none());
        let names: Vec<_> = registry.all().iter().map(|b| b.name().to_owned()).collect();
        assert_eq!(names, ["delivery", "product"]);

        assert!(!registry.any_open());
        trip(&product);
        assert!(registry.any_open());
        let snapshots = registry.snapshots();
        assert_eq!(snapshots.len(), 2);
        assert_eq!(snapshots[0].state, BreakerState::Closed);
        assert_eq!(snapshots[1].name, "product");
        assert_eq!(snapshots[1].state, BreakerState::Open);
        assert_eq!(snapshots[1].failures, 1);
        assert_eq!(snapshots[1].opened_total, 1);
        assert_eq!(snapshots[1].reset_timeout_ms, 30_000);
    }

    #[test]
    fn clones_share_breakers_and_registering_a_name_again_replaces_it() {
        let registry = Registry::new();
        let first = registry.register(config("delivery"));
        trip(&first);
        let clone = registry.clone();
        assert!(clone.any_open());
        let second = clone.register(config("delivery"));
        assert_eq!(registry.all().len(), 1);
        assert_eq!(second.state(), BreakerState::Closed);
        assert!(!registry.any_open());
    }

    #[test]
    fn snapshot_serializes_state_in_screaming_snake_case() {
        let registry = Registry::new();
        registry.register(config("delivery"));
        let json = serde_json::to_value(registry.snapshots()).expect("serializes");
        assert_eq!(json[0]["state"], "CLOSED");
        assert_eq!(json[0]["name"], "delivery");
        assert_eq!(
            serde_json::to_value(BreakerState::HalfOpen).expect("serializes"),
            "HALF_OPEN"
        );
    }
}
