//! Configuration of an [`Endpoint`](super::Endpoint): transmission parameters and table bounds.

use alloc::vec::Vec;
use core::fmt;
use core::time::Duration;

use crate::msg::{MessageType, OptionNumber};

/// Configuration of an endpoint.
///
/// [`Config::default()`] gives the transmission parameters of RFC 7252 §4.8 and bounds sized for
/// a server handling thousands of peers. Every table whose size a peer can influence has a bound
/// here; reaching it gives a defined answer (5.03 Service Unavailable with Max-Age for incoming
/// requests, a typed error to the caller for outgoing ones), never unbounded growth.
///
/// Check a hand-made configuration with [`Config::validate`]; [`Endpoint::new`](super::Endpoint::new)
/// does so too.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct Config {
    /// ACK_TIMEOUT (RFC 7252 §4.8): the base timeout before the first retransmission of a
    /// Confirmable message. Default 2 s.
    pub ack_timeout: Duration,
    /// ACK_RANDOM_FACTOR (RFC 7252 §4.8): the initial timeout is drawn uniformly from
    /// `[ACK_TIMEOUT, ACK_TIMEOUT × ACK_RANDOM_FACTOR]`. Default 1.5; must be at least 1.0.
    pub ack_random_factor: f64,
    /// MAX_RETRANSMIT (RFC 7252 §4.8): retransmissions of a Confirmable message before giving
    /// up. Default 4.
    pub max_retransmit: u32,
    /// NSTART (RFC 7252 §4.7): outstanding interactions per peer; further requests to that peer
    /// wait in order. Default 1.
    pub nstart: usize,
    /// DEFAULT_LEISURE (RFC 7252 §8.2): the window within which a server spreads its responses
    /// to a multicast request. Default 5 s.
    pub default_leisure: Duration,
    /// PROBING_RATE (RFC 7252 §4.7) in bytes per second. Default 1. Kept for completeness and
    /// reported by [`Config::probing_rate`]; the engine does not throttle NON traffic by it.
    pub probing_rate: u32,
    /// MAX_LATENCY (RFC 7252 §4.8.2): the longest a datagram is expected to travel. Default 100 s.
    pub max_latency: Duration,
    /// How long a server waits for the application's response before it sends an empty ACK
    /// and makes the response a separate one (RFC 7252 §5.2.2). Default 100 ms.
    pub empty_ack_delay: Duration,
    /// How long a client waits for a separate response after the server acknowledged its
    /// request with an empty ACK. Default: EXCHANGE_LIFETIME (247 s with defaults).
    pub separate_response_timeout: Option<Duration>,
    /// How long a client waits for the response to a Non-confirmable request. Default:
    /// MAX_TRANSMIT_WAIT (93 s with defaults).
    pub non_response_timeout: Option<Duration>,
    /// How long a client collects responses to a multicast request. Default 10 s.
    pub multicast_response_window: Duration,
    /// Message type of requests that do not choose one. Default Confirmable.
    pub default_request_type: MessageType,
    /// Length of the tokens this endpoint generates, 0 to 8 bytes. Default 8 (RFC 7252 §5.3.1
    /// asks for enough randomness to make tokens hard to guess).
    pub token_len: usize,
    /// Longest token accepted in incoming requests (RFC 8974). Requests with longer tokens are
    /// handled as message-format errors, as RFC 8974 §2.2.1 prescribes. Default 8; at most
    /// 65804.
    pub max_token_len: usize,
    /// Largest datagram the endpoint will send or expects to receive. Default 1152 bytes, the
    /// size RFC 7252 §4.6 recommends when nothing is known about the path MTU.
    pub max_message_size: usize,
    /// Option numbers the application understands beyond those the engine knows. A request
    /// carrying an unknown critical option is answered 4.02 Bad Option (RFC 7252 §5.4.1).
    pub extra_critical_options: Vec<OptionNumber>,
    /// Whether the application acts as a forward proxy. If false, requests with Proxy-Uri or
    /// Proxy-Scheme are answered 5.05 Proxying Not Supported (RFC 7252 §5.7.2). If true, they
    /// reach the application, and unrecognized critical options that are Safe-to-Forward no
    /// longer make the engine answer 4.02 (a proxy forwards them, §5.7.1); an observe
    /// registration among them is kept under the target URI
    /// ([`proxy::observe_key`](crate::proxy::observe_key)) and registers the client only if
    /// the application's 2.xx answer carries an Observe option. Default false; the
    /// runtime crates set it and let their router decide (a router without a proxy route
    /// answers 5.05).
    pub proxy: bool,
    /// Emit [`Event::Progress`](super::Event::Progress) for each step of each client exchange
    /// (queued, sent, retransmitted, acknowledged). Default false: no cost when nobody listens.
    pub report_progress: bool,
    /// Most client exchanges (queued or in flight) at once. Default 65 536.
    pub max_client_exchanges: usize,
    /// Most incoming requests handed to the application and not yet answered. Over the bound,
    /// new requests are answered 5.03 Service Unavailable with Max-Age. Default 16 384.
    pub max_server_exchanges: usize,
    /// Most requests queued for one peer behind NSTART or Message ID exhaustion. Default 4096.
    pub max_queued_per_peer: usize,
    /// Most peers this endpoint keeps message-layer state for (those it sent its own messages
    /// to). Default 65 536.
    pub max_peers: usize,
    /// Most entries in the deduplication cache. The oldest entry is evicted first when full
    /// (RFC 7252 §4.5 lets idempotent requests be reprocessed; evictions are counted in
    /// [`Stats`](super::Stats)). Default 100 000.
    pub max_dedup_entries: usize,
    /// Most bytes the deduplication cache holds: every entry's bookkeeping (about 130 bytes
    /// on a 64-bit target: its slot in the expiry queue, which holds a reply of up to 62
    /// bytes inline, and its items in the hash table) plus the replies too large to hold
    /// inline that it keeps for answering duplicates. At the bound the oldest entries are
    /// evicted first, as with [`max_dedup_entries`](Self::max_dedup_entries). A server at
    /// full speed sees far more requests per EXCHANGE_LIFETIME (247 s) than any cache holds,
    /// so this is the knob for the cache's memory. Default 16 MiB.
    pub max_dedup_bytes: usize,
    /// Most datagrams waiting for [`Endpoint::poll_transmit`](super::Endpoint::poll_transmit).
    /// Past it, new datagrams are dropped as if lost on the network (and counted). Default 65 536.
    pub max_transmit_queue: usize,
    /// Preferred block size for block-wise transfers (RFC 7959), a power of two from 16 to
    /// 1024. Request bodies larger than this go in blocks, response bodies larger than this
    /// (or than the block size a client asks for) are served in blocks, and a smaller value is
    /// proposed to servers with early Block2 negotiation (§2.4). Default 1024.
    pub block_size: usize,
    /// Largest body reassembled from blocks, in either direction. A larger upload is refused
    /// with 4.13 Request Entity Too Large and Size1; a larger download fails with
    /// [`Failure::BodyTooLarge`](super::Failure::BodyTooLarge). Default 8 MiB.
    pub max_body_size: usize,
    /// Bytes of partial request bodies held for one peer. Default 16 MiB.
    pub max_reassembly_bytes_per_peer: usize,
    /// Bytes of partial request bodies held in total. Default 64 MiB.
    pub max_reassembly_bytes: usize,
    /// How long a partial request body waits for its next block. Default: EXCHANGE_LIFETIME,
    /// after which RFC 7959 §2.5 lets a server discard it.
    pub reassembly_timeout: Option<Duration>,
    /// Bytes of whole representations kept for clients fetching them block by block.
    /// Default 16 MiB.
    pub max_representation_bytes: usize,
    /// How long a representation served in blocks is kept for follow-up requests. Default
    /// 120 s.
    pub representation_lifetime: Duration,
    /// When the ETag changes in the middle of a block-wise download: start over (up to three
    /// times) instead of failing with `ResourceChanged`. Default false.
    pub restart_download_on_change: bool,
    /// Uri-Path prefixes (such as `"/raw"`) whose handlers see Block1 and Block2 options
    /// themselves instead of whole bodies (aiocoap's `needs_blockwise_assembly = False`).
    pub raw_block_paths: Vec<alloc::string::String>,
    /// Most observers on this server in total. Registrations over any observer bound are
    /// served as plain requests (RFC 7641 §4.1). Default 65 536.
    pub max_observers: usize,
    /// Most observers of one resource. Default 65 536.
    pub max_observers_per_resource: usize,
    /// Most observations one peer may hold on this server. Default 256.
    pub max_observers_per_peer: usize,
    /// Message type of notifications: Non-confirmable by default, with a Confirmable one at
    /// least every [`Config::con_notification_interval`] per observer (RFC 7641 §4.5).
    pub notification_type: MessageType,
    /// The longest an observer goes without a Confirmable notification. Default 24 hours.
    pub con_notification_interval: Duration,
    /// Deliver notifications older than the freshest one so far, marked `fresh: false`,
    /// instead of dropping them. Default false.
    pub deliver_stale_notifications: bool,
    /// How long past Max-Age of its last notification a client waits before it registers
    /// again. Default 5 s.
    pub reregistration_grace: Duration,
    /// How many re-registrations in a row may go unanswered before an observation ends
    /// with a timeout; between attempts the client waits `reregistration_grace`. Default 3.
    pub reregistration_attempts: u32,
    /// Max-Age (seconds) carried by 5.03 Service Unavailable answers when a table is full.
    /// Default 2.
    pub overload_max_age: u32,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            ack_timeout: Duration::from_secs(2),
            ack_random_factor: 1.5,
            max_retransmit: 4,
            nstart: 1,
            default_leisure: Duration::from_secs(5),
            probing_rate: 1,
            max_latency: Duration::from_secs(100),
            empty_ack_delay: Duration::from_millis(100),
            separate_response_timeout: None,
            non_response_timeout: None,
            multicast_response_window: Duration::from_secs(10),
            default_request_type: MessageType::Con,
            token_len: 8,
            max_token_len: 8,
            max_message_size: 1152,
            extra_critical_options: Vec::new(),
            proxy: false,
            report_progress: false,
            max_client_exchanges: 65_536,
            max_server_exchanges: 16_384,
            max_queued_per_peer: 4096,
            max_peers: 65_536,
            max_dedup_entries: 100_000,
            max_dedup_bytes: 16 << 20,
            max_transmit_queue: 65_536,
            overload_max_age: 2,
            block_size: 1024,
            max_body_size: 8 << 20,
            max_reassembly_bytes_per_peer: 16 << 20,
            max_reassembly_bytes: 64 << 20,
            reassembly_timeout: None,
            max_representation_bytes: 16 << 20,
            representation_lifetime: Duration::from_secs(120),
            restart_download_on_change: false,
            raw_block_paths: Vec::new(),
            max_observers: 65_536,
            max_observers_per_resource: 65_536,
            max_observers_per_peer: 256,
            notification_type: MessageType::Non,
            con_notification_interval: Duration::from_secs(24 * 3600),
            deliver_stale_notifications: false,
            reregistration_grace: Duration::from_secs(5),
            reregistration_attempts: 3,
        }
    }
}

/// A configuration value that cannot work.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigError {
    /// `ack_timeout` is zero.
    ZeroAckTimeout,
    /// `ack_random_factor` is below 1.0 or not a finite number.
    BadAckRandomFactor,
    /// `max_retransmit` is above 20 (the back-off would overflow any sensible time).
    TooManyRetransmits,
    /// `nstart` is zero: no request could ever be sent.
    ZeroNstart,
    /// `token_len` is above 8.
    TokenTooLong,
    /// `max_token_len` is below 8 or above 65804 (RFC 8974 §2.2.1).
    BadMaxTokenLen,
    /// `max_message_size` is below 64 bytes or above 65507 (the largest UDP payload).
    BadMaxMessageSize,
    /// A table bound is zero.
    ZeroBound(&'static str),
    /// `block_size` is not a power of two from 16 to 1024.
    BadBlockSize,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::ZeroAckTimeout => f.write_str("ack_timeout must be greater than zero"),
            ConfigError::BadAckRandomFactor => {
                f.write_str("ack_random_factor must be a finite number of at least 1.0")
            }
            ConfigError::TooManyRetransmits => f.write_str("max_retransmit must be at most 20"),
            ConfigError::ZeroNstart => f.write_str("nstart must be at least 1"),
            ConfigError::TokenTooLong => f.write_str("token_len must be at most 8 bytes"),
            ConfigError::BadMaxTokenLen => {
                f.write_str("max_token_len must be between 8 and 65804 bytes")
            }
            ConfigError::BadMaxMessageSize => {
                f.write_str("max_message_size must be between 64 and 65507 bytes")
            }
            ConfigError::ZeroBound(name) => write!(f, "{name} must be at least 1"),
            ConfigError::BadBlockSize => {
                f.write_str("block_size must be a power of two from 16 to 1024")
            }
        }
    }
}

impl core::error::Error for ConfigError {}

impl Config {
    /// Checks that every value can work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.ack_timeout.is_zero() {
            return Err(ConfigError::ZeroAckTimeout);
        }
        if !(self.ack_random_factor.is_finite() && self.ack_random_factor >= 1.0) {
            return Err(ConfigError::BadAckRandomFactor);
        }
        if self.max_retransmit > 20 {
            return Err(ConfigError::TooManyRetransmits);
        }
        if self.nstart == 0 {
            return Err(ConfigError::ZeroNstart);
        }
        if self.token_len > 8 {
            return Err(ConfigError::TokenTooLong);
        }
        if !(8..=65804).contains(&self.max_token_len) {
            return Err(ConfigError::BadMaxTokenLen);
        }
        if !(64..=65507).contains(&self.max_message_size) {
            return Err(ConfigError::BadMaxMessageSize);
        }
        if !(16..=1024).contains(&self.block_size) || !self.block_size.is_power_of_two() {
            return Err(ConfigError::BadBlockSize);
        }
        for (name, v) in [
            ("max_client_exchanges", self.max_client_exchanges),
            ("max_server_exchanges", self.max_server_exchanges),
            ("max_queued_per_peer", self.max_queued_per_peer),
            ("max_peers", self.max_peers),
            ("max_dedup_entries", self.max_dedup_entries),
            ("max_transmit_queue", self.max_transmit_queue),
        ] {
            if v == 0 {
                return Err(ConfigError::ZeroBound(name));
            }
        }
        Ok(())
    }

    /// MAX_TRANSMIT_SPAN (RFC 7252 §4.8.2): from the first transmission of a Confirmable
    /// message to its last retransmission. 45 s with the defaults.
    pub fn max_transmit_span(&self) -> Duration {
        self.scaled_ack_timeout((1u64 << self.max_retransmit) - 1)
    }

    /// MAX_TRANSMIT_WAIT (RFC 7252 §4.8.2): from the first transmission of a Confirmable
    /// message to giving up on an acknowledgement. 93 s with the defaults.
    pub fn max_transmit_wait(&self) -> Duration {
        self.scaled_ack_timeout((1u64 << (self.max_retransmit + 1)) - 1)
    }

    /// PROCESSING_DELAY (RFC 7252 §4.8.2), taken equal to ACK_TIMEOUT.
    pub fn processing_delay(&self) -> Duration {
        self.ack_timeout
    }

    /// MAX_RTT (RFC 7252 §4.8.2): `2 × MAX_LATENCY + PROCESSING_DELAY`. 202 s with the defaults.
    pub fn max_rtt(&self) -> Duration {
        self.max_latency * 2 + self.processing_delay()
    }

    /// EXCHANGE_LIFETIME (RFC 7252 §4.8.2): how long a Confirmable message's Message ID stays
    /// in use. `MAX_TRANSMIT_SPAN + 2 × MAX_LATENCY + PROCESSING_DELAY`, 247 s with the defaults.
    pub fn exchange_lifetime(&self) -> Duration {
        self.max_transmit_span() + self.max_latency * 2 + self.processing_delay()
    }

    /// NON_LIFETIME (RFC 7252 §4.8.2): how long a Non-confirmable message's Message ID stays in
    /// use. `MAX_TRANSMIT_SPAN + MAX_LATENCY`, 145 s with the defaults.
    pub fn non_lifetime(&self) -> Duration {
        self.max_transmit_span() + self.max_latency
    }

    /// PROBING_RATE in bytes per second.
    pub fn probing_rate(&self) -> u32 {
        self.probing_rate
    }

    /// The wait for a separate response after an empty ACK, resolving the default.
    pub(crate) fn separate_timeout(&self) -> Duration {
        self.separate_response_timeout
            .unwrap_or_else(|| self.exchange_lifetime())
    }

    /// The wait for a response to a NON request, resolving the default.
    pub(crate) fn non_timeout(&self) -> Duration {
        self.non_response_timeout
            .unwrap_or_else(|| self.max_transmit_wait())
    }

    /// The upper bound of the initial retransmission timeout.
    pub(crate) fn max_initial_timeout(&self) -> Duration {
        self.scaled_ack_timeout(1)
    }

    /// `ACK_TIMEOUT × ACK_RANDOM_FACTOR × k`, computed in microseconds without floating-point
    /// rounding surprises for the common factors.
    fn scaled_ack_timeout(&self, k: u64) -> Duration {
        let base = u64::try_from(self.ack_timeout.as_micros()).unwrap_or(u64::MAX);
        // The factor is validated to be finite and >= 1; work in millionths to stay integral.
        let factor_millionths = (self.ack_random_factor * 1_000_000.0) as u64;
        let micros = (u128::from(base) * u128::from(k) * u128::from(factor_millionths)) / 1_000_000;
        Duration::from_micros(u64::try_from(micros).unwrap_or(u64::MAX))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_parameters_match_rfc7252_table_3() {
        let c = Config::default();
        assert_eq!(c.max_transmit_span(), Duration::from_secs(45));
        assert_eq!(c.max_transmit_wait(), Duration::from_secs(93));
        assert_eq!(c.processing_delay(), Duration::from_secs(2));
        assert_eq!(c.max_rtt(), Duration::from_secs(202));
        assert_eq!(c.exchange_lifetime(), Duration::from_secs(247));
        assert_eq!(c.non_lifetime(), Duration::from_secs(145));
        assert_eq!(c.max_initial_timeout(), Duration::from_secs(3));
        assert_eq!(c.validate(), Ok(()));
    }

    #[test]
    fn validation_rejects_unworkable_values() {
        let bad = |f: fn(&mut Config)| {
            let mut c = Config::default();
            f(&mut c);
            c.validate().unwrap_err()
        };
        assert_eq!(bad(|c| c.nstart = 0), ConfigError::ZeroNstart);
        assert_eq!(
            bad(|c| c.ack_random_factor = 0.5),
            ConfigError::BadAckRandomFactor
        );
        assert_eq!(
            bad(|c| c.ack_random_factor = f64::NAN),
            ConfigError::BadAckRandomFactor
        );
        assert_eq!(bad(|c| c.token_len = 9), ConfigError::TokenTooLong);
        assert_eq!(bad(|c| c.max_token_len = 4), ConfigError::BadMaxTokenLen);
        assert_eq!(
            bad(|c| c.max_message_size = 70_000),
            ConfigError::BadMaxMessageSize
        );
        assert_eq!(
            bad(|c| c.max_dedup_entries = 0),
            ConfigError::ZeroBound("max_dedup_entries")
        );
    }
}
