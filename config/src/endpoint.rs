//! `host:port` listen addresses.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A listen address: an IP address (or `localhost`) and a port. Port 0 picks a
/// free port at bind time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoint(SocketAddr);

impl Endpoint {
    /// `127.0.0.1:port`.
    pub const fn localhost(port: u16) -> Self {
        Endpoint(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port))
    }

    /// The socket address to bind.
    pub fn socket_addr(&self) -> SocketAddr {
        self.0
    }

    /// The configured port (0 = any free port).
    pub fn port(&self) -> u16 {
        self.0.port()
    }

    /// Whether the address only accepts local connections.
    pub fn is_loopback(&self) -> bool {
        self.0.ip().is_loopback()
    }
}

impl FromStr for Endpoint {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        if let Ok(addr) = text.parse::<SocketAddr>() {
            return Ok(Endpoint(addr));
        }
        let (host, port) = text.rsplit_once(':').ok_or_else(|| {
            format!("invalid address {text:?}: expected host:port, e.g. 127.0.0.1:4317")
        })?;
        let port: u16 = port
            .parse()
            .map_err(|_| format!("invalid address {text:?}: port {port:?} is not 0-65535"))?;
        let ip = match host {
            "localhost" => IpAddr::V4(Ipv4Addr::LOCALHOST),
            "" | "*" => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            "[::]" => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            other => other.parse().map_err(|_| {
                format!(
                    "invalid address {text:?}: host {other:?} is not an IP address or localhost"
                )
            })?,
        };
        Ok(Endpoint(SocketAddr::new(ip, port)))
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl<'de> Deserialize<'de> for Endpoint {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl Serialize for Endpoint {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}
