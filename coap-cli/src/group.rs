//! Multicast groups on the command line: `--join` for the servers, `--multicast-interface`
//! for the client's requests to a group.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use coap_tokio::{Config, Server};

/// What a server takes for multicast: the groups to join, and how long answers to them wait.
#[derive(Clone, Debug, clap::Args)]
pub(crate) struct Multicast {
    /// Join a multicast group (repeatable), such as 224.0.1.187 or ff02::fd, the All CoAP
    /// Nodes addresses. Requests sent to it are answered after a random leisure, and never
    /// with an error (RFC 7252 §8.2). INTERFACE is the interface's IPv4 address for an IPv4
    /// group, its index for an IPv6 group; without it the system picks. Bind to the wildcard
    /// address (`[::]` or `0.0.0.0`) to receive what is sent to the group.
    #[arg(long, value_name = "GROUP[@INTERFACE]", value_parser = parse_group)]
    pub(crate) join: Vec<Group>,

    /// The longest an answer to a group request waits, in seconds: each waits a random
    /// part of it, so that the group's servers do not all answer at once (RFC 7252 §8.2).
    #[arg(long, value_name = "SECS", default_value = "5", value_parser = parse_seconds)]
    pub(crate) leisure: Duration,
}

impl Multicast {
    /// `config` with this leisure.
    pub(crate) fn configure(&self, mut config: Config) -> Config {
        config.default_leisure = self.leisure;
        config
    }

    /// Joins every group, logging each.
    pub(crate) fn join_all(&self, server: &Server) -> Result<(), String> {
        for &group in &self.join {
            let joined = match group {
                Group::V4(g, i) => server.join_multicast_v4(g, i),
                Group::V6(g, i) => server.join_multicast_v6(g, i),
            };
            joined.map_err(|e| format!("cannot join {}: {e}", describe(group)))?;
            tracing::info!("joined the multicast group {}", describe(group));
        }
        Ok(())
    }
}

fn parse_seconds(text: &str) -> Result<Duration, String> {
    let secs: f64 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a number of seconds"))?;
    Duration::try_from_secs_f64(secs).map_err(|_| format!("{text:?} is not a usable duration"))
}

/// A group a server joins: `GROUP` or `GROUP@INTERFACE`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Group {
    /// An IPv4 group and the address of the interface to join it on (`0.0.0.0`: the system
    /// picks).
    V4(Ipv4Addr, Ipv4Addr),
    /// An IPv6 group and the index of the interface to join it on (0: the system picks).
    V6(Ipv6Addr, u32),
}

/// The interface a request to a group leaves from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Interface {
    /// By the interface's IPv4 address (for IPv4 groups).
    V4(Ipv4Addr),
    /// By the interface's index (for IPv6 groups).
    V6(u32),
}

/// Parses an interface: an IPv4 address or an interface index.
pub(crate) fn parse_interface(text: &str) -> Result<Interface, String> {
    if let Ok(addr) = text.parse::<Ipv4Addr>() {
        return Ok(Interface::V4(addr));
    }
    text.parse::<u32>().map(Interface::V6).map_err(|_| {
        format!("{text:?} is neither an IPv4 interface address nor an interface index")
    })
}

/// Parses `GROUP[@INTERFACE]`: an IPv4 group with an IPv4 interface address, or an IPv6
/// group with an interface index.
pub(crate) fn parse_group(text: &str) -> Result<Group, String> {
    let (group, interface) = match text.split_once('@') {
        Some((g, i)) => (g, Some(i)),
        None => (text, None),
    };
    let group: IpAddr = group
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .map_err(|_| format!("{group:?} is not an IP address"))?;
    if !group.is_multicast() {
        return Err(format!("{group} is not a multicast address"));
    }
    let interface = interface.map(parse_interface).transpose()?;
    match (group, interface) {
        (IpAddr::V4(g), None) => Ok(Group::V4(g, Ipv4Addr::UNSPECIFIED)),
        (IpAddr::V4(g), Some(Interface::V4(i))) => Ok(Group::V4(g, i)),
        (IpAddr::V6(g), None) => Ok(Group::V6(g, 0)),
        (IpAddr::V6(g), Some(Interface::V6(i))) => Ok(Group::V6(g, i)),
        (IpAddr::V4(_), Some(Interface::V6(_))) => {
            Err("an IPv4 group takes the interface's IPv4 address".into())
        }
        (IpAddr::V6(_), Some(Interface::V4(_))) => {
            Err("an IPv6 group takes the interface's index".into())
        }
    }
}

fn describe(group: Group) -> String {
    match group {
        Group::V4(g, i) if i.is_unspecified() => g.to_string(),
        Group::V4(g, i) => format!("{g} on {i}"),
        Group::V6(g, 0) => g.to_string(),
        Group::V6(g, i) => format!("{g} on interface {i}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_parse() {
        assert_eq!(
            parse_group("224.0.1.187"),
            Ok(Group::V4(
                Ipv4Addr::new(224, 0, 1, 187),
                Ipv4Addr::UNSPECIFIED
            ))
        );
        assert_eq!(
            parse_group("224.0.1.187@127.0.0.1"),
            Ok(Group::V4(
                Ipv4Addr::new(224, 0, 1, 187),
                Ipv4Addr::LOCALHOST
            ))
        );
        assert_eq!(
            parse_group("[ff02::fd]@2"),
            Ok(Group::V6("ff02::fd".parse().unwrap(), 2))
        );
        assert!(parse_group("127.0.0.1").is_err(), "not a group");
        assert!(parse_group("224.0.1.187@2").is_err());
        assert!(parse_group("ff02::fd@127.0.0.1").is_err());
        assert!(parse_group("ff02::fd@eth0").is_err());
    }
}
