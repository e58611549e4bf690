//! What the load tools share on their command lines and in their reports: argument values,
//! the loopback-only target, CPU time, and the JSON pieces of the report.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use coap_proto::uri::CoapUri;

use crate::hist::Histogram;
use crate::ids::check_loopback;

/// Longest run accepted, so a typo cannot make a tool run for a day.
pub const MAX_SECONDS: f64 = 3600.0;

/// A number of seconds (fractions allowed) from 0 to [`MAX_SECONDS`].
pub fn seconds(s: &str) -> Result<Duration, String> {
    let v: f64 = s.parse().map_err(|e| format!("bad seconds {s}: {e}"))?;
    if !(0.0..=MAX_SECONDS).contains(&v) {
        return Err(format!("{s} s is outside 0..={MAX_SECONDS}"));
    }
    Ok(Duration::from_secs_f64(v))
}

/// A count.
pub fn count(s: &str) -> Result<usize, String> {
    s.parse().map_err(|e| format!("bad number {s}: {e}"))
}

/// A `coap://` URI with a literal loopback address, and the socket address it names.
pub fn loopback_uri(s: &str) -> Result<(CoapUri, SocketAddr), String> {
    let uri = CoapUri::parse(s).map_err(|e| format!("bad URI {s}: {e}"))?;
    let addr = uri.socket_addr_hint().ok_or_else(|| {
        format!("{s}: give a literal loopback address (127.0.0.1 or [::1]), not a name")
    })?;
    check_loopback(addr.ip()).map_err(|e| e.to_string())?;
    Ok((uri, addr))
}

/// CPU time (user + system) this process has used so far.
pub fn cpu_time() -> Duration {
    use nix::sys::resource::{getrusage, UsageWho};
    match getrusage(UsageWho::RUSAGE_SELF) {
        Ok(u) => {
            let tv = |t: nix::sys::time::TimeVal| {
                Duration::new(t.tv_sec().max(0) as u64, (t.tv_usec().max(0) as u32) * 1000)
            };
            tv(u.user_time()) + tv(u.system_time())
        }
        Err(_) => Duration::ZERO,
    }
}

/// Ends the process (exit code 3) if it still runs `limit` from now, whatever it is doing,
/// so a load tool always stops by itself.
pub fn watchdog(tool: &'static str, limit: Duration) {
    std::thread::spawn(move || {
        std::thread::sleep(limit);
        eprintln!("{tool}: watchdog: still running after {limit:?}, stopping");
        std::process::exit(3);
    });
}

/// What a tool does when its arguments do not parse: `error` is empty for `--help`, which
/// prints `usage` and succeeds; otherwise the error and `usage` go to standard error (exit 2).
pub fn usage_exit(tool: &str, usage: &str, error: &str) -> ExitCode {
    if error.is_empty() {
        print!("{usage}");
        return ExitCode::SUCCESS;
    }
    eprintln!("{tool}: {error}\n\n{usage}");
    ExitCode::from(2)
}

/// Prints a run's report on standard output, or its error on standard error.
pub fn finish(tool: &str, outcome: Result<String, String>) -> ExitCode {
    match outcome {
        Ok(report) => {
            println!("{}", report.trim_end());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{tool}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Nanoseconds as microseconds.
pub fn us(ns: u64) -> f64 {
    ns as f64 / 1000.0
}

/// `s` as the inside of a JSON string.
pub fn json_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out
}

/// A histogram of nanoseconds as a JSON object in microseconds: count, p50, p90, p99, max,
/// mean.
pub fn hist_json(h: &Histogram) -> String {
    format!(
        "{{\"count\":{},\"p50\":{:.1},\"p90\":{:.1},\"p99\":{:.1},\"max\":{:.1},\"mean\":{:.1}}}",
        h.count(),
        us(h.quantile(0.5)),
        us(h.quantile(0.9)),
        us(h.quantile(0.99)),
        us(h.max()),
        h.mean() / 1000.0
    )
}

/// A histogram of nanoseconds in one line of text, in microseconds.
pub fn hist_text(h: &Histogram) -> String {
    format!(
        "p50 {:.1} µs, p90 {:.1} µs, p99 {:.1} µs, max {:.1} µs ({} samples)",
        us(h.quantile(0.5)),
        us(h.quantile(0.9)),
        us(h.quantile(0.99)),
        us(h.max()),
        h.count()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_and_targets() {
        assert_eq!(seconds("1.5"), Ok(Duration::from_millis(1500)));
        assert!(seconds("-1").is_err());
        assert!(seconds("3601").is_err());
        assert_eq!(count("64"), Ok(64));
        assert!(count("x").is_err());
        let (_, addr) = loopback_uri("coap://127.0.0.1:5683/bench").unwrap();
        assert_eq!(addr, SocketAddr::from(([127, 0, 0, 1], 5683)));
        assert!(loopback_uri("coap://10.0.0.1/bench")
            .unwrap_err()
            .contains("only loopback"));
        assert!(loopback_uri("coap://example.com/").is_err());
    }

    #[test]
    fn json_pieces() {
        assert_eq!(json_escape("a\"b\\c\n"), "a\\\"b\\\\c\\u000a");
        let mut h = Histogram::new();
        h.record(2_000);
        h.record(4_000);
        let j = hist_json(&h);
        assert!(j.starts_with("{\"count\":2,\"p50\":2.0,"), "{j}");
        assert!(j.ends_with("\"max\":4.0,\"mean\":3.0}"), "{j}");
        assert!(hist_text(&h).contains("p99 4.0 µs"));
    }
}
