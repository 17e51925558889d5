//! Benchmarks: filled by the benchmark issue.
