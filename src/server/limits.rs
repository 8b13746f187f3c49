//! The limits and timeouts of both ports: the flags that set them, and the
//! values the servers run with. docs/security.md lists each with its default.

use std::time::Duration;

use clap::Args;

/// Connection flags of `serve` (the body size and client timeout flags sit
/// beside them in `ServeArgs`).
#[derive(Debug, Clone, Args)]
pub struct ConnectionArgs {
    /// Time a request body may take to arrive in full once its headers are in;
    /// a slower body gets 408 and the connection is closed.
    #[arg(long, env = "SESAME_BODY_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub body_timeout: Duration,
    /// How long a kept-alive connection (HTTP/1.1 or HTTP/2, either port) may
    /// stay open with no request in flight once it has served one.
    #[arg(long, env = "SESAME_IDLE_TIMEOUT", default_value = "120s", value_parser = humantime::parse_duration)]
    pub idle_timeout: Duration,
    /// Open connections on the webhook port at most. When full, the
    /// connection idle for longest is closed to make room; a new connection
    /// is refused only while every open one has a request in flight.
    #[arg(long, env = "SESAME_MAX_CONNECTIONS", default_value_t = 1024, value_parser = at_least_one)]
    pub max_connections: usize,
    /// Open connections on the admin port at most (same rule).
    #[arg(long, env = "SESAME_ADMIN_MAX_CONNECTIONS", default_value_t = 64, value_parser = at_least_one)]
    pub admin_max_connections: usize,
    /// Reviews with a larger body run on a blocking thread, a few at a time,
    /// so that their CPU work does not hold up other connections; smaller
    /// ones are answered on the spot. 0 sends every review there.
    #[arg(long, env = "SESAME_OFFLOAD_ABOVE_BYTES", default_value_t = DEFAULT_OFFLOAD_ABOVE_BYTES)]
    pub offload_above_bytes: usize,
}

const DEFAULT_OFFLOAD_ABOVE_BYTES: usize = 64 * 1024;

fn at_least_one(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

impl Default for ConnectionArgs {
    fn default() -> Self {
        Self {
            body_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(120),
            max_connections: 1024,
            admin_max_connections: 64,
            offload_above_bytes: DEFAULT_OFFLOAD_ABOVE_BYTES,
        }
    }
}

/// Connection limits that keep slow, idle or numerous clients from holding the server.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Largest accepted request body; larger gets 413.
    pub(crate) max_body_bytes: usize,
    /// Time for a client to finish the TLS handshake.
    pub(crate) handshake_timeout: Duration,
    /// Time for a client to send its first request's headers once connected.
    pub(crate) header_read_timeout: Duration,
    /// Time for a request body to arrive in full.
    pub(crate) body_timeout: Duration,
    /// Time a connection may stay open with no request in flight after its first.
    pub(crate) idle_timeout: Duration,
    /// How long in-flight requests may run after shutdown starts.
    pub(crate) drain_timeout: Duration,
    /// Open connections on the webhook port at most.
    pub(crate) max_connections: usize,
    /// Open connections on the admin port at most.
    pub(crate) admin_max_connections: usize,
    /// Reviews with a larger body run on the blocking pool.
    pub(crate) offload_above_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self::new(
            3 * 1024 * 1024,
            Duration::from_secs(10),
            Duration::from_secs(25),
            &ConnectionArgs::default(),
        )
    }
}

/// File descriptors kept for everything but client connections: store and
/// API clients, configuration and certificate reads, the runtime itself.
pub(crate) const FD_RESERVE: u64 = 64;

impl Limits {
    /// The limits from `serve`'s flags. `client_timeout` bounds both the TLS
    /// handshake and the wait for the first request.
    pub(crate) fn new(
        max_body_bytes: usize,
        client_timeout: Duration,
        drain_timeout: Duration,
        connections: &ConnectionArgs,
    ) -> Self {
        Self {
            max_body_bytes,
            handshake_timeout: client_timeout,
            header_read_timeout: client_timeout,
            body_timeout: connections.body_timeout,
            idle_timeout: connections.idle_timeout,
            drain_timeout,
            max_connections: connections.max_connections.max(1),
            admin_max_connections: connections.admin_max_connections.max(1),
            offload_above_bytes: connections.offload_above_bytes,
        }
    }

    /// Lowers the connection caps so that both ports together, plus a
    /// reserve, stay within `max_fds` (the process's open-file limit): at the
    /// caps, new connections displace idle ones instead of `accept` failing
    /// for lack of descriptors, and the admin port always has some.
    pub(crate) fn fit_to_fd_limit(self, max_fds: u64) -> Self {
        let available = usize::try_from(max_fds.saturating_sub(FD_RESERVE)).unwrap_or(usize::MAX);
        if self.max_connections.saturating_add(self.admin_max_connections) <= available {
            return self;
        }
        let admin = self.admin_max_connections.min((available / 4).max(1));
        let webhook = self.max_connections.min(available.saturating_sub(admin).max(1));
        Self {
            max_connections: webhook,
            admin_max_connections: admin,
            ..self
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_shrink_to_the_open_file_limit_and_keep_room_for_the_admin_port() {
        let limits = Limits::default();
        let same = limits.fit_to_fd_limit(1_048_576);
        assert_eq!((same.max_connections, same.admin_max_connections), (1024, 64));

        let at_1024 = limits.fit_to_fd_limit(1024);
        assert_eq!(
            (at_1024.max_connections, at_1024.admin_max_connections),
            (896, 64)
        );
        let at_256 = limits.fit_to_fd_limit(256);
        assert_eq!((at_256.max_connections, at_256.admin_max_connections), (144, 48));
        for max_fds in [0, 1, 64, 65, 100, 128, 256, 1000] {
            let l = limits.fit_to_fd_limit(max_fds);
            assert!(l.max_connections >= 1 && l.admin_max_connections >= 1);
            if max_fds > FD_RESERVE + 2 {
                let total = (l.max_connections + l.admin_max_connections) as u64 + FD_RESERVE;
                assert!(total <= max_fds, "{max_fds}: {l:?}");
            }
        }
    }

    #[test]
    fn zero_connections_is_refused_as_a_flag() {
        assert!(at_least_one("0").is_err());
        assert_eq!(at_least_one("7"), Ok(7));
        assert!(at_least_one("-1").is_err());
    }
}
