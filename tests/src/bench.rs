//! What the benchmarks (`tests/benches`) share: their knobs and percentiles.

/// The benchmark knob `name` from the environment, or `default` when unset or not a number.
pub fn knob(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The `p` quantile (0 to 1) of `sorted` (ascending, not empty), nearest rank.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// The file `BENCH_MARKDOWN` names, opened for appending a section of results (`None`
/// when unset).
pub fn markdown_file() -> Option<std::fs::File> {
    let path = std::env::var_os("BENCH_MARKDOWN")?;
    Some(
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap(),
    )
}

/// One markdown table row of `(label, value)` pairs: `| a | b |` of the labels, the
/// separator, and the values with `decimals` decimals.
pub fn markdown_table(pairs: &[(&str, f64)], decimals: usize) -> (String, String, String) {
    let labels = pairs
        .iter()
        .map(|(k, _)| *k)
        .collect::<Vec<_>>()
        .join(" | ");
    let values = pairs
        .iter()
        .map(|(_, v)| format!("{v:.decimals$}"))
        .collect::<Vec<_>>()
        .join(" | ");
    (labels, "---|".repeat(pairs.len()), values)
}
