//! Shared helpers for the workspace's benchmarks and the loopback load tools.
//!
//! - [`hist`]: an HdrHistogram-style latency histogram.
//! - [`ids`]: message-ID spaces, client endpoints and the loopback-only rule.
//! - [`wire`]: the requests the load tool sends and the answers it reads, and the ceiling
//!   loop's in-place answer.
//! - [`batch`]: `recvmmsg` / `sendmmsg` on Linux without unsafe code.
//! - [`cli`]: argument values, CPU time and report pieces the load tools share.
//!
//! The binaries are `coap-bench` (the load tool), `udp-echo-ceiling` (a bare UDP loop that
//! answers every request with a fixed 2.05, the upper bound a server can reach on this
//! machine) and `tokio-client-bench` (client throughput of coap-tokio's `Client`);
//! `benches/compare.sh` runs them against other CoAP implementations.

pub mod batch;
pub mod cli;
pub mod hist;
pub mod ids;
pub mod wire;
