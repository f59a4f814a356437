//! Each mode's settings in a whole handshake, in memory, against a server
//! with certificates made here: what each mode accepts and refuses, and why.

use std::path::Path;
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::{ClientConnection, ServerConfig, ServerConnection};

use super::*;

/// A CA, and a server certificate it issued.
struct Pki {
    ca_pem: String,
    server: Arc<ServerConfig>,
}

fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

/// A server known as `names` (DNS names or IP addresses), under a CA of its own.
fn pki(names: &[&str]) -> Pki {
    let ca = ca("jobsafe test CA");
    let key = KeyPair::generate().unwrap();
    let params =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    let cert = params.signed_by(&key, &ca).unwrap();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let server = ServerConfig::builder_with_provider(Arc::new(provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.der().clone()], key)
        .unwrap();
    Pki {
        ca_pem: ca.pem(),
        server: Arc::new(server),
    }
}

fn write(dir: &Path, name: &str, text: &str) -> RootCert {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    RootCert::File(path)
}

fn options(mode: SslMode, root_cert: Option<RootCert>) -> SslOptions {
    SslOptions {
        mode,
        root_cert,
        sni: true,
    }
}

/// A handshake between `client` and `server` as `host`, moved in memory:
/// the client's error if it refuses one.
fn handshake(
    client: ClientConfig,
    server: &Arc<ServerConfig>,
    host: &str,
) -> Result<(), rustls::Error> {
    let name = ServerName::try_from(host.to_owned()).unwrap();
    let mut client = ClientConnection::new(Arc::new(client), name)?;
    let mut server = ServerConnection::new(server.clone()).unwrap();
    while client.is_handshaking() || server.is_handshaking() {
        let mut moved = false;
        let mut bytes = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut bytes).unwrap();
        }
        if !bytes.is_empty() {
            moved = true;
            server.read_tls(&mut bytes.as_slice()).unwrap();
            if server.process_new_packets().is_err() {
                // The server's alert goes back to the client, which says why.
                let mut alert = Vec::new();
                while server.wants_write() {
                    server.write_tls(&mut alert).unwrap();
                }
                client.read_tls(&mut alert.as_slice()).unwrap();
                client.process_new_packets()?;
                panic!("the server refused the handshake and the client did not notice");
            }
        }
        let mut bytes = Vec::new();
        while server.wants_write() {
            server.write_tls(&mut bytes).unwrap();
        }
        if !bytes.is_empty() {
            moved = true;
            client.read_tls(&mut bytes.as_slice()).unwrap();
            client.process_new_packets()?;
        }
        assert!(moved, "the handshake stalled");
    }
    Ok(())
}

fn is_unknown_issuer(e: &rustls::Error) -> bool {
    matches!(
        e,
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)
    )
}

fn is_wrong_name(e: &rustls::Error) -> bool {
    matches!(
        e,
        rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. }
        )
    )
}

#[test]
fn verify_full_checks_the_chain_and_the_name_an_ip_address_included() {
    let dir = tempfile::tempdir().unwrap();
    let server = pki(&["127.0.0.1", "db.test"]);
    let other = ca("another CA");
    let right = write(dir.path(), "ca.pem", &server.ca_pem);
    let wrong = write(dir.path(), "other.pem", &other.pem());
    let full = |root: &RootCert| {
        client_config(
            SslMode::VerifyFull,
            &options(SslMode::VerifyFull, Some(root.clone())),
        )
        .unwrap()
    };

    handshake(full(&right), &server.server, "127.0.0.1").unwrap();
    handshake(full(&right), &server.server, "db.test").unwrap();
    let e = handshake(full(&right), &server.server, "localhost").unwrap_err();
    assert!(is_wrong_name(&e), "{e:?}");
    let e = handshake(full(&right), &server.server, "127.0.0.2").unwrap_err();
    assert!(is_wrong_name(&e), "{e:?}");
    let e = handshake(full(&wrong), &server.server, "127.0.0.1").unwrap_err();
    assert!(is_unknown_issuer(&e), "{e:?}");
}

#[test]
fn verify_ca_checks_the_chain_whatever_the_name() {
    let dir = tempfile::tempdir().unwrap();
    let server = pki(&["127.0.0.1"]);
    let right = write(dir.path(), "ca.pem", &server.ca_pem);
    let wrong = write(dir.path(), "other.pem", &ca("another CA").pem());
    let chain = |root: &RootCert| {
        client_config(
            SslMode::VerifyCa,
            &options(SslMode::VerifyCa, Some(root.clone())),
        )
        .unwrap()
    };

    handshake(chain(&right), &server.server, "127.0.0.1").unwrap();
    handshake(chain(&right), &server.server, "elsewhere.test").unwrap();
    // The chain is checked before the name: a wrong CA is reported as such,
    // and a wrong name does not hide it.
    let e = handshake(chain(&wrong), &server.server, "elsewhere.test").unwrap_err();
    assert!(is_unknown_issuer(&e), "{e:?}");
}

#[test]
fn require_takes_any_certificate_unless_given_roots() {
    let dir = tempfile::tempdir().unwrap();
    let server = pki(&["127.0.0.1"]);
    let wrong = write(dir.path(), "other.pem", &ca("another CA").pem());
    for mode in [SslMode::Require, SslMode::Prefer] {
        let any = client_config(mode, &options(mode, None)).unwrap();
        handshake(any, &server.server, "elsewhere.test").unwrap();
        // With roots, libpq's rule: the chain is checked, as verify-ca.
        let rooted = client_config(mode, &options(mode, Some(wrong.clone()))).unwrap();
        let e = handshake(rooted, &server.server, "127.0.0.1").unwrap_err();
        assert!(is_unknown_issuer(&e), "{e:?}");
    }
}

/// Presents a certificate and signs with another key than its own.
#[derive(Debug)]
struct Impostor(Arc<rustls::sign::CertifiedKey>);

impl rustls::server::ResolvesServerCert for Impostor {
    fn resolve(
        &self,
        _hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }
}

#[test]
fn a_certificate_taken_unchecked_must_still_sign_the_handshake() {
    // Someone who copied a server's certificate but lacks its key.
    let cert = CertificateParams::new(vec!["db.test".to_owned()])
        .unwrap()
        .self_signed(&KeyPair::generate().unwrap())
        .unwrap();
    let other_key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
        KeyPair::generate().unwrap().serialize_der(),
    ));
    let signer = rustls::crypto::ring::sign::any_supported_type(&other_key).unwrap();
    let impostor = rustls::sign::CertifiedKey::new(vec![cert.der().clone()], signer);
    let server = ServerConfig::builder_with_provider(Arc::new(provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(Impostor(Arc::new(impostor))));
    let server = Arc::new(server);

    let any = client_config(SslMode::Require, &options(SslMode::Require, None)).unwrap();
    let e = handshake(any, &server, "db.test").unwrap_err();
    assert!(matches!(e, rustls::Error::InvalidCertificate(_)), "{e:?}");
}

#[test]
fn the_verifying_modes_need_roots_and_a_bad_root_file_is_named() {
    for mode in [SslMode::VerifyCa, SslMode::VerifyFull] {
        let err = client_config(mode, &options(mode, None)).unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
        assert!(err.to_string().contains("sslrootcert"), "{err}");
    }
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing-ca.pem");
    let err = client_config(
        SslMode::VerifyFull,
        &options(SslMode::VerifyFull, Some(RootCert::File(missing.clone()))),
    )
    .unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err:?}");
    assert!(err.to_string().contains("missing-ca.pem"), "{err}");

    for (name, text) in [
        ("empty.pem", ""),
        ("text.pem", "not a certificate\n"),
        (
            "broken.pem",
            "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
        ),
        (
            "garbage.pem",
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        ),
    ] {
        let root = write(dir.path(), name, text);
        let err = client_config(
            SslMode::VerifyFull,
            &options(SslMode::VerifyFull, Some(root)),
        )
        .unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(_)), "{name}: {err:?}");
        assert!(err.to_string().contains(name), "{err}");
    }
}

#[test]
fn refusals_are_explained() {
    assert!(
        explain(&rustls::Error::InvalidCertificate(
            CertificateError::UnknownIssuer
        ))
        .contains("unknown issuer")
    );
    assert!(
        explain(&rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName
        ))
        .contains("host name mismatch")
    );
    assert!(
        explain(&rustls::Error::InvalidCertificate(
            CertificateError::Expired
        ))
        .contains("validity")
    );
    assert!(explain(&rustls::Error::HandshakeNotComplete).contains("handshake failed"));
}
