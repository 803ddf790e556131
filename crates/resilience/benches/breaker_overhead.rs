//! What a closed breaker adds to a call: `try_acquire()` + `Permit::success()` around a
//! synchronous call, and `CircuitBreaker::call` (with its timeout) around a ready future, each
//! against the bare call. The last group repeats the synchronous case with a Prometheus recorder
//! installed (as in the services), so the cost of the breaker's metrics shows; the groups before
//! it run without a recorder, where metrics are no-ops.

use std::{hint::black_box, time::Duration};

use criterion::{Criterion, criterion_group, criterion_main};
use resilience::{BreakerConfig, CircuitBreaker, Outcome};

fn breaker() -> CircuitBreaker {
    CircuitBreaker::new(BreakerConfig::new(
        "bench",
        50,
        Duration::from_secs(30),
        10,
        Duration::from_secs(1),
    ))
}

#[inline(never)]
fn work(x: u64) -> Result<u64, ()> {
    Ok(black_box(x).wrapping_mul(3))
}

fn sync(c: &mut Criterion) {
    let cb = breaker();
    let mut group = c.benchmark_group("sync");
    group.bench_function("bare", |b| b.iter(|| work(black_box(1))));
    group.bench_function("closed_breaker", |b| {
        b.iter(|| match cb.try_acquire() {
            Ok(permit) => {
                let result = work(black_box(1));
                permit.success();
                result
            }
            Err(_) => Err(()),
        })
    });
    group.finish();
}

fn asynchronous(c: &mut Criterion) {
    let cb = breaker();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => panic!("tokio runtime: {e}"),
    };
    let mut group = c.benchmark_group("async");
    group.bench_function("bare", |b| {
        b.to_async(&rt).iter(|| async { work(black_box(1)) })
    });
    group.bench_function("closed_breaker", |b| {
        b.to_async(&rt).iter(|| {
            cb.call(
                |_: &Result<u64, ()>| Outcome::Success,
                || async { work(black_box(1)) },
            )
        })
    });
    group.finish();
}

/// Runs last: it installs the global recorder for the rest of the process.
fn sync_recorded(c: &mut Criterion) {
    if let Err(e) = metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder() {
        panic!("installing the recorder: {e}");
    }
    // Built after the recorder is installed, so its metric handles record.
    let cb = breaker();
    let mut group = c.benchmark_group("sync_with_recorder");
    group.bench_function("closed_breaker", |b| {
        b.iter(|| match cb.try_acquire() {
            Ok(permit) => {
                let result = work(black_box(1));
                permit.success();
                result
            }
            Err(_) => Err(()),
        })
    });
    group.finish();
}

criterion_group!(benches, sync, asynchronous, sync_recorded);
criterion_main!(benches);
