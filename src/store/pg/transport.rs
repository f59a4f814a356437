//! How a store's connections are secured: the `ssl*` options read from the
//! URL, turned into the client's `sslmode` and a TLS connector, the same for
//! every connection of the store and for its cancel requests.
//!
//! Built without the feature `postgres-tls`, there is no TLS: `disable` and
//! `prefer` connect in clear (`prefer` finds no TLS to try), and every option
//! that needs TLS (`require`, `verify-ca`, `verify-full`, `sslrootcert`) is
//! refused at open, rather than connecting less safely than asked.

use tokio_postgres::Config;
use tokio_postgres::config::SslMode as ClientMode;

use super::ssl_options::{SslMode, SslOptions};
use crate::error::Result;

/// The client's TLS connector.
#[cfg(feature = "postgres-tls")]
pub(crate) type Tls = tokio_postgres_rustls::MakeRustlsConnect;
/// The client's TLS connector: none in this build.
#[cfg(not(feature = "postgres-tls"))]
pub(crate) type Tls = tokio_postgres::NoTls;

/// What every connection of a store is made with.
pub(crate) struct Transport {
    tls: Tls,
    /// For `prefer`: the settings of the attempt in clear that follows a
    /// refused handshake, as libpq makes one.
    pub(crate) clear_retry: Option<Config>,
    /// The settings in words, for errors: `sslmode=verify-full, sslrootcert
    /// /etc/ca.pem`.
    pub(crate) shown: String,
}

impl Transport {
    /// The connector, for one connection or cancel request: an `Arc`'s
    /// clone with TLS, a copy of nothing without.
    pub(crate) fn tls(&self) -> Tls {
        Tls::clone(&self.tls)
    }
}

/// Sets `config`'s `sslmode` for `ssl`, and makes the connector.
///
/// On Unix sockets only, TLS is not used whatever the mode, as in libpq (the
/// server offers none there).
///
/// # Errors
/// [`Error::InvalidArgument`](crate::Error::InvalidArgument) for options
/// that need TLS in a build without it, or roots that cannot be used (see
/// the `tls` module); [`Error::Io`](crate::Error::Io) naming a root file
/// that cannot be read.
pub(crate) fn choose(ssl: &SslOptions, config: &mut Config) -> Result<Transport> {
    let mode = if only_unix_sockets(config) {
        SslMode::Disable
    } else {
        ssl.mode
    };
    config.ssl_mode(match mode {
        SslMode::Disable => ClientMode::Disable,
        SslMode::Prefer => ClientMode::Prefer,
        SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => ClientMode::Require,
    });
    let tls = connector(mode, ssl)?;
    let clear_retry = (cfg!(feature = "postgres-tls") && mode == SslMode::Prefer).then(|| {
        let mut clear = config.clone();
        clear.ssl_mode(ClientMode::Disable);
        clear
    });
    let shown = match (&ssl.root_cert, mode) {
        (
            Some(root),
            SslMode::Prefer | SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull,
        ) => {
            format!("sslmode={}, {root}", mode.name())
        }
        _ => format!("sslmode={}", mode.name()),
    };
    Ok(Transport {
        tls,
        clear_retry,
        shown,
    })
}

#[cfg(feature = "postgres-tls")]
fn connector(mode: SslMode, ssl: &SslOptions) -> Result<Tls> {
    super::tls::connector(mode, ssl)
}

#[cfg(not(feature = "postgres-tls"))]
fn connector(mode: SslMode, ssl: &SslOptions) -> Result<Tls> {
    let needs_tls = match mode {
        SslMode::Disable => None,
        SslMode::Prefer => ssl.root_cert.as_ref().map(|_| "sslrootcert"),
        SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => Some(mode.name()),
    };
    if let Some(option) = needs_tls {
        let option = if option == "sslrootcert" {
            option.to_owned()
        } else {
            format!("sslmode={option}")
        };
        return Err(crate::error::Error::InvalidArgument(format!(
            "the database URL asks for TLS ({option}), which this build of jobsafe lacks: \
             turn on its cargo feature `postgres-tls`"
        )));
    }
    Ok(tokio_postgres::NoTls)
}

/// Whether `config` names only Unix sockets, where the server offers no TLS.
fn only_unix_sockets(config: &Config) -> bool {
    config.get_hostaddrs().is_empty()
        && !config.get_hosts().is_empty()
        && config
            .get_hosts()
            .iter()
            .all(|host| !matches!(host, tokio_postgres::config::Host::Tcp(_)))
}

/// Whether the client's error is a TLS handshake refused on its merits,
/// after which libpq's `prefer` tries again in clear.
pub(crate) fn handshake_refused(e: &tokio_postgres::Error) -> bool {
    #[cfg(feature = "postgres-tls")]
    return super::tls::refusal(e).is_some();
    #[cfg(not(feature = "postgres-tls"))]
    {
        let _ = e;
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::pg::ssl_options::split;

    fn chosen(url: &str) -> Result<(Transport, Config)> {
        let conn = split(url)?;
        let mut config: Config = conn.rest.parse().unwrap();
        let transport = choose(&conn.ssl, &mut config)?;
        Ok((transport, config))
    }

    #[test]
    fn disable_and_prefer_connect_in_every_build() {
        let (t, config) = chosen("postgres://db/jobs?sslmode=disable").unwrap();
        assert_eq!(config.get_ssl_mode(), ClientMode::Disable);
        assert!(t.clear_retry.is_none());
        let (t, config) = chosen("postgres://db/jobs").unwrap();
        assert_eq!(t.shown, "sslmode=prefer");
        assert_eq!(config.get_ssl_mode(), ClientMode::Prefer);
        assert_eq!(t.clear_retry.is_some(), cfg!(feature = "postgres-tls"));
    }

    #[test]
    fn unix_sockets_never_use_tls() {
        let (t, config) = chosen("host=/run/postgresql sslmode=require").unwrap();
        assert_eq!(t.shown, "sslmode=disable");
        assert_eq!(config.get_ssl_mode(), ClientMode::Disable);
    }

    #[cfg(not(feature = "postgres-tls"))]
    #[test]
    fn without_the_feature_every_option_that_needs_tls_is_refused_naming_it() {
        for (url, option) in [
            ("postgres://db/jobs?sslmode=require", "sslmode=require"),
            ("postgres://db/jobs?sslmode=verify-ca", "sslmode=verify-ca"),
            (
                "host=db sslmode=verify-full sslrootcert=/ca.pem",
                "sslmode=verify-full",
            ),
            ("postgres://db/jobs?sslrootcert=/ca.pem", "sslrootcert"),
        ] {
            let err = chosen(url).err().unwrap();
            assert!(
                matches!(err, crate::error::Error::InvalidArgument(_)),
                "{err:?}"
            );
            let text = err.to_string();
            assert!(text.contains("postgres-tls"), "{text}");
            assert!(text.contains(option), "{text}");
        }
    }

    #[cfg(feature = "postgres-tls")]
    #[test]
    fn with_the_feature_the_verifying_modes_require_tls_of_the_client() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["db".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        std::fs::write(&ca, cert.pem()).unwrap();
        for mode in ["require", "verify-ca", "verify-full"] {
            let url = format!("host=db sslmode={mode} sslrootcert={}", ca.display());
            let (t, config) = chosen(&url).unwrap();
            assert_eq!(config.get_ssl_mode(), ClientMode::Require, "{mode}");
            assert!(t.clear_retry.is_none(), "{mode}");
        }
    }
}
