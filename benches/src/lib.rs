//! Shared helpers for the workspace's benchmarks.
