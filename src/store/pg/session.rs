//! The bounds on a store's waits, and how each connection is told them: server
//! settings sent at login (so that they hold before any statement runs, at no
//! round trip of their own), and options on the client's socket.
//!
//! Each bound covers a wait the others do not:
//!
//! | wait | bound |
//! |---|---|
//! | a whole call, whatever it waits for (a connection, a reply, a lock) | the call deadline, here: the query is cancelled and the connection closed |
//! | a statement running on the server | `statement_timeout` |
//! | a lock held by another session | `lock_timeout` |
//! | a transaction whose client went silent between statements, holding its locks | `idle_in_transaction_session_timeout` |
//! | a connection that died without a word, seen from either end | TCP keepalives and `TCP_USER_TIMEOUT`, set on the client's socket and, through the same login settings, on the server's |
//!
//! Every bound is a duration of at least one unit of its setting (a zero would
//! turn the setting off, and with it the bound).

use std::time::Duration;

use tokio_postgres::{Client, Config};

use super::failure::db_error;
use crate::durability::Durability;
use crate::error::{Error, Result};

/// Every bound of one store; defaults in [`Limits::DEFAULT`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Limits {
    /// A whole call, from its start to its answer.
    pub(crate) call: Duration,
    /// Making a connection (and so the wait for one to free, too).
    pub(crate) connect: Duration,
    pub(crate) statement: Duration,
    pub(crate) lock: Duration,
    pub(crate) idle_in_transaction: Duration,
    /// The wait for another process migrating the store's table.
    pub(crate) migration_lock: Duration,
    pub(crate) keepalive_idle: Duration,
    pub(crate) keepalive_interval: Duration,
    pub(crate) keepalive_retries: u32,
    pub(crate) tcp_user_timeout: Duration,
}

impl Limits {
    /// The defaults. A statement ends on the server before the caller's
    /// deadline, so that a slow call usually fails with the server's reason; a
    /// lock wait ends before a statement's; a silent connection is given up by
    /// the sockets within about 30 s, whether or not a call is waiting on it.
    pub(crate) const DEFAULT: Limits = Limits {
        call: Duration::from_secs(30),
        connect: Duration::from_secs(10),
        statement: Duration::from_secs(20),
        lock: Duration::from_secs(10),
        idle_in_transaction: Duration::from_secs(10),
        migration_lock: Duration::from_secs(30),
        keepalive_idle: Duration::from_secs(10),
        keepalive_interval: Duration::from_secs(5),
        keepalive_retries: 3,
        tcp_user_timeout: Duration::from_secs(30),
    };

    /// Sets the socket options and login settings on `config`. Login settings
    /// already in the URL's `options` stay, but these come after them and win.
    pub(crate) fn apply(&self, config: &mut Config, durability: Durability) {
        config
            .keepalives(true)
            .keepalives_idle(self.keepalive_idle)
            .keepalives_interval(self.keepalive_interval)
            .keepalives_retries(self.keepalive_retries)
            .tcp_user_timeout(self.tcp_user_timeout);
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(self.connect);
        }
        let settings = self.settings(durability);
        let options = match config.get_options() {
            Some(given) if !given.trim().is_empty() => format!("{given} {settings}"),
            _ => settings,
        };
        config.options(options);
    }

    /// The server settings every session of the store runs with, as the
    /// `-c name=value` words of the startup `options`.
    fn settings(&self, durability: Durability) -> String {
        let synchronous_commit = match durability {
            Durability::Full => "on",
            Durability::AtomicOnly => "off",
        };
        [
            ("statement_timeout", ms(self.statement)),
            ("lock_timeout", ms(self.lock)),
            (
                "idle_in_transaction_session_timeout",
                ms(self.idle_in_transaction),
            ),
            // The server's end of the socket: a session whose client vanished is
            // ended too, instead of holding a connection slot for hours.
            ("tcp_keepalives_idle", secs(self.keepalive_idle)),
            ("tcp_keepalives_interval", secs(self.keepalive_interval)),
            (
                "tcp_keepalives_count",
                self.keepalive_retries.max(1).to_string(),
            ),
            ("tcp_user_timeout", ms(self.tcp_user_timeout)),
            ("synchronous_commit", synchronous_commit.to_owned()),
            // A space in a value is escaped with a backslash in `options`.
            (
                "default_transaction_isolation",
                "read\\ committed".to_owned(),
            ),
        ]
        .iter()
        .map(|(name, value)| format!("-c {name}={value}"))
        .collect::<Vec<_>>()
        .join(" ")
    }

    /// Checks that the session runs with the bounds asked for at login: a
    /// connection pooler between the store and the server may drop login
    /// settings, and the store must not then run without its bounds.
    ///
    /// # Errors
    /// A non-transient [`Error::Database`] naming the setting that differs.
    pub(crate) async fn check(&self, client: &Client, server: &str) -> Result<()> {
        let step = "check the session's settings";
        let row = client
            .query_one(
                "SELECT current_setting('statement_timeout'), current_setting('lock_timeout'),
                        current_setting('idle_in_transaction_session_timeout')",
                &[],
            )
            .await
            .map_err(|e| db_error(step, server, e))?;
        let asked = [
            ("statement_timeout", self.statement),
            ("lock_timeout", self.lock),
            (
                "idle_in_transaction_session_timeout",
                self.idle_in_transaction,
            ),
        ];
        for (i, (name, bound)) in asked.into_iter().enumerate() {
            let runs: String = row.try_get(i).map_err(|e| db_error(step, server, e))?;
            if runs != shown_ms(bound) {
                return Err(Error::Database {
                    step,
                    server: server.to_owned(),
                    transient: false,
                    source: format!(
                        "the session runs with {name} = {runs}, not the {} asked for at login \
                         (does a connection pooler between drop the startup `options`?)",
                        shown_ms(bound)
                    )
                    .into(),
                });
            }
        }
        Ok(())
    }
}

/// Whole milliseconds, at least 1: a setting of 0 would mean no bound.
fn ms(d: Duration) -> String {
    d.as_millis().clamp(1, i32::MAX as u128).to_string()
}

/// Whole seconds, rounded up, at least 1.
fn secs(d: Duration) -> String {
    d.as_millis()
        .div_ceil(1000)
        .clamp(1, i32::MAX as u128)
        .to_string()
}

/// How the server shows a duration set in milliseconds: in the largest unit
/// that divides it (`SHOW statement_timeout` gives `20s`, `1500ms`, `2min`).
fn shown_ms(d: Duration) -> String {
    let ms = d.as_millis().clamp(1, i32::MAX as u128);
    for (unit, size) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("min", 60_000),
        ("s", 1000),
    ] {
        if ms.is_multiple_of(size) {
            return format!("{}{unit}", ms / size);
        }
    }
    format!("{ms}ms")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_login_options_that_never_turn_a_bound_off() {
        let limits = Limits {
            statement: Duration::ZERO,
            lock: Duration::from_micros(10),
            idle_in_transaction: Duration::from_millis(1500),
            keepalive_idle: Duration::from_millis(10),
            ..Limits::DEFAULT
        };
        let s = limits.settings(Durability::Full);
        assert!(s.contains("-c statement_timeout=1 "), "{s}");
        assert!(s.contains("-c lock_timeout=1 "), "{s}");
        assert!(
            s.contains("-c idle_in_transaction_session_timeout=1500 "),
            "{s}"
        );
        assert!(s.contains("-c tcp_keepalives_idle=1 "), "{s}");
        assert!(s.contains("-c tcp_user_timeout=30000 "), "{s}");
        assert!(s.contains("-c synchronous_commit=on "), "{s}");
        assert!(
            s.ends_with("-c default_transaction_isolation=read\\ committed"),
            "{s}"
        );
        assert!(
            Limits::DEFAULT
                .settings(Durability::AtomicOnly)
                .contains("synchronous_commit=off")
        );
    }

    #[test]
    fn the_url_options_are_kept_before_the_stores_own() {
        let mut config: Config = "host=db user=app options='-c search_path=app'"
            .parse()
            .unwrap_or_else(|_| Config::new());
        Limits::DEFAULT.apply(&mut config, Durability::Full);
        let options = config.get_options().unwrap_or_default();
        assert!(
            options.starts_with("-c search_path=app -c statement_timeout=20000"),
            "{options}"
        );
        assert_eq!(config.get_keepalives_idle(), Duration::from_secs(10));
        assert_eq!(
            config.get_tcp_user_timeout(),
            Some(&Duration::from_secs(30))
        );
    }

    #[test]
    fn durations_are_shown_as_the_server_shows_them() {
        assert_eq!(shown_ms(Duration::from_secs(20)), "20s");
        assert_eq!(shown_ms(Duration::from_millis(1500)), "1500ms");
        assert_eq!(shown_ms(Duration::from_secs(120)), "2min");
        assert_eq!(shown_ms(Duration::ZERO), "1ms");
    }
}
