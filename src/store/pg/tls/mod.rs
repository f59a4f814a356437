//! TLS for the store's connections (feature `postgres-tls`): rustls, with the
//! `ring` provider, set up from `sslmode` and `sslrootcert` as libpq reads
//! them.
//!
//! What each mode guarantees once a connection is made:
//!
//! | sslmode | encrypted | certificate checked |
//! |---|---|---|
//! | `disable` | no | no |
//! | `prefer` | if the server offers TLS and the handshake succeeds; else the connection is retried in clear, as libpq does | as `require` |
//! | `require` | yes, or no connection | no; with `sslrootcert`, its chain, as `verify-ca` (libpq's rule) |
//! | `verify-ca` | yes | its chain leads to a root of `sslrootcert`, and it is valid now and for a server; any host name |
//! | `verify-full` | yes | as `verify-ca`, and it names the host connected to (a DNS name, or an IP address for a host given as one) |
//!
//! `verify-ca` and `verify-full` need `sslrootcert`: a PEM file of trusted
//! roots, or `system` for the system's (libpq also reads
//! `~/.postgresql/root.crt`; PgStore reads no file it was not named). Every
//! mode that encrypts checks the handshake's signatures with the
//! certificate's key, and binds a SCRAM login to the certificate
//! (`SCRAM-SHA-256-PLUS`) when the server offers it.
//!
//! A handshake refused on its merits (a certificate that does not verify, no
//! protocol in common) fails the same way every time: it is a permanent
//! [`Error::Database`](crate::Error::Database), and its message says why.

mod verify;

use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use rustls::{CertificateError, ClientConfig, RootCertStore};
use tokio_postgres_rustls::MakeRustlsConnect;

use self::verify::{AnyCertificate, ChainOnly};
use super::ssl_options::{RootCert, SslMode, SslOptions};
use crate::error::{Error, Result, steps};
use crate::vfs::{StdVfs, Vfs};

/// The protocol name a PostgreSQL client offers in the handshake (ALPN), as
/// libpq does; servers that check it (PostgreSQL 17 on) want this one.
const ALPN: &[u8] = b"postgresql";

/// The connector for `mode` (the mode in force, which may differ from the
/// one given: see `transport`) and `ssl`'s roots.
///
/// # Errors
/// [`Error::InvalidArgument`] if `verify-ca` or `verify-full` has no
/// `sslrootcert`, or the roots hold no usable certificate; [`Error::Io`]
/// naming the file if it cannot be read.
pub(crate) fn connector(mode: SslMode, ssl: &SslOptions) -> Result<MakeRustlsConnect> {
    Ok(MakeRustlsConnect::new(client_config(mode, ssl)?))
}

/// The rustls settings of [`connector`].
fn client_config(mode: SslMode, ssl: &SslOptions) -> Result<ClientConfig> {
    let provider = Arc::new(provider());
    let verifier: Arc<dyn ServerCertVerifier> = match (mode, &ssl.root_cert) {
        (SslMode::VerifyCa | SslMode::VerifyFull, None) => {
            return Err(Error::InvalidArgument(format!(
                "the database URL: sslmode={} needs sslrootcert: the file of the CA \
                 certificates to trust, or `system` for the system's",
                mode.name()
            )));
        }
        (SslMode::VerifyFull, Some(root)) => full(root, &provider)?,
        (_, Some(root)) if mode != SslMode::Disable => Arc::new(ChainOnly(full(root, &provider)?)),
        _ => Arc::new(AnyCertificate(provider.signature_verification_algorithms)),
    };
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::InvalidArgument(format!("TLS settings: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = vec![ALPN.to_vec()];
    config.enable_sni = ssl.sni;
    Ok(config)
}

/// rustls's provider backed by *ring*, which builds with a C compiler alone.
/// rustls marks it deprecated because *ring* has no post-quantum key
/// exchange; PostgreSQL servers negotiate the classical groups it has.
#[allow(deprecated)]
fn provider() -> CryptoProvider {
    rustls::crypto::ring::default_provider()
}

/// rustls's own verifier, chain and name, over `root`'s certificates.
fn full(root: &RootCert, provider: &Arc<CryptoProvider>) -> Result<Arc<WebPkiServerVerifier>> {
    let roots = roots(root)?;
    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| Error::InvalidArgument(format!("{}: {e}", root)))
}

/// The trusted roots: a PEM file's certificates, or the system's.
fn roots(root: &RootCert) -> Result<RootCertStore> {
    let mut store = RootCertStore::empty();
    let certs = match root {
        RootCert::File(path) => {
            let pem = StdVfs.read(path).map_err(|source| Error::Io {
                step: steps::READ_SSL_ROOT_CERT,
                path: path.clone(),
                source,
            })?;
            CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| {
                    Error::InvalidArgument(format!(
                        "{}: not a PEM file of certificates ({e})",
                        root
                    ))
                })?
        }
        RootCert::System => rustls_native_certs::load_native_certs().certs,
    };
    let (added, _unusable) = store.add_parsable_certificates(certs);
    if added == 0 {
        return Err(Error::InvalidArgument(format!(
            "{}: holds no certificate usable as a trusted root",
            root
        )));
    }
    Ok(store)
}

/// Why the client's error is a TLS handshake refused on its merits, in
/// words, or `None` if it is not one (a connection lost midway is not: it
/// may succeed next time).
pub(crate) fn refusal(e: &tokio_postgres::Error) -> Option<&'static str> {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        // The adapter reports the handshake's errors as I/O errors that wrap
        // rustls's, or the host's name if it is none a certificate can hold.
        let inner = s
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .map_or(s, |inner| inner as &(dyn std::error::Error + 'static));
        if let Some(tls) = inner.downcast_ref::<rustls::Error>() {
            return Some(explain(tls));
        }
        if inner.is::<rustls::pki_types::InvalidDnsNameError>() {
            return Some("the host's name is neither a DNS name nor an IP address");
        }
        source = s.source();
    }
    None
}

fn explain(e: &rustls::Error) -> &'static str {
    let rustls::Error::InvalidCertificate(cert) = e else {
        return "the TLS handshake failed";
    };
    match cert {
        CertificateError::UnknownIssuer => {
            "the server's certificate is not issued by a trusted root (unknown issuer)"
        }
        CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
            "the server's certificate does not name the host connected to (host name \
             mismatch; sslmode=verify-full checks it, verify-ca does not)"
        }
        CertificateError::Expired
        | CertificateError::ExpiredContext { .. }
        | CertificateError::NotValidYet
        | CertificateError::NotValidYetContext { .. } => {
            "the server's certificate is outside its validity period"
        }
        _ => "the server's certificate was refused",
    }
}

#[cfg(test)]
mod tests;
