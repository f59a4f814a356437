//! `PgStore` over TLS, against a server with a certificate of the tests' own:
//! each `sslmode` connects when it should and is refused when it should, with
//! an error that says why.
//!
//! `bash .ci/postgres.sh` sets the server up: its certificate, for the
//! address 127.0.0.1 only, is issued by a CA whose certificate is at
//! `JOBSAFE_PG_TLS_CA`; the user `JOBSAFE_PG_TLS_USER` (with the password of
//! `JOBSAFE_PG_URL`'s) may log in only over TLS, so every store that logs in
//! as that user proves its connections encrypted. The tests also ask the
//! server (`pg_stat_ssl`) about the sessions of each store they open, through
//! a connection of `JOBSAFE_PG_URL`'s user, a member of the TLS user's role.
//! Another CA, which signed nothing the server has, is made here.
#![cfg(feature = "postgres-tls")]
#![allow(clippy::unwrap_used, clippy::panic)]

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::error_chain;
use common::pg::{self, Schemas};
use jobsafe::{Error, Expect, Key, PgStore, Store};

const CA_VAR: &str = "JOBSAFE_PG_TLS_CA";
const USER_VAR: &str = "JOBSAFE_PG_TLS_USER";

/// The server, as the TLS tests reach it.
struct Server {
    port: u16,
    database: String,
    password: String,
    /// The user the server admits only over TLS.
    tls_user: String,
    /// The user of `JOBSAFE_PG_URL`, admitted with or without TLS.
    user: String,
    /// The CA that issued the server's certificate.
    ca: PathBuf,
}

fn server() -> Server {
    let var = |name: &str| {
        std::env::var(name).unwrap_or_else(|_| {
            panic!(
                "the feature `postgres-tls` is on but {name} is not set: run these tests \
                 under `bash .ci/postgres.sh`, which sets up a server with TLS and names \
                 its CA ({CA_VAR}) and its TLS-only user ({USER_VAR})"
            )
        })
    };
    let (ca, tls_user) = (var(CA_VAR), var(USER_VAR));
    let config: tokio_postgres::Config = pg::url().parse().unwrap();
    Server {
        port: config.get_ports().first().copied().unwrap_or(5432),
        database: config.get_dbname().unwrap().to_owned(),
        password: String::from_utf8(config.get_password().unwrap().to_vec()).unwrap(),
        tls_user,
        user: config.get_user().unwrap().to_owned(),
        ca: ca.into(),
    }
}

impl Server {
    /// A key=value connection string for `user`, reaching the server at
    /// 127.0.0.1 by the name `host`, with `options` after it.
    fn conn(&self, user: &str, host: &str, options: &str) -> String {
        format!(
            "host={host} hostaddr=127.0.0.1 port={} user={user} password='{}' dbname={} {options}",
            self.port, self.password, self.database
        )
    }

    /// As [`conn`](Self::conn), as the TLS-only user at 127.0.0.1.
    fn tls(&self, options: &str) -> String {
        self.conn(&self.tls_user, "127.0.0.1", options)
    }
}

/// A name for the sessions of one store, to find them on the server.
fn app_name() -> String {
    format!(
        "jobsafe_tls_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

/// The sessions of `app`, each with whether it is encrypted and its
/// protocol version.
fn sessions(app: &str) -> Vec<(bool, Option<String>)> {
    pg::client()
        .query(
            "SELECT s.ssl, s.version FROM pg_stat_ssl s \
             JOIN pg_stat_activity a USING (pid) WHERE a.application_name = $1",
            &[&app],
        )
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect()
}

/// Opens a store at `url` in a new schema, and writes and reads a record.
/// Its connection stays open while the store lives.
fn open_and_use(schemas: &mut Schemas, url: &str) -> PgStore {
    let store = PgStore::builder(url)
        .schema(&schemas.fresh())
        .connect_timeout(Duration::from_secs(10))
        .open()
        .unwrap_or_else(|e| panic!("open: {}", error_chain(&e)));
    let key = Key::new(["tls", "1"]).unwrap();
    store.put(&key, b"over tls", Expect::Absent).unwrap();
    assert_eq!(store.get(&key).unwrap().unwrap().value, b"over tls");
    store
}

/// Asserts that every session of `app` (at least one) is encrypted or that
/// none is.
fn assert_sessions(app: &str, encrypted: bool) {
    let sessions = sessions(app);
    assert!(!sessions.is_empty(), "no session of {app} on the server");
    for (ssl, version) in &sessions {
        assert_eq!(*ssl, encrypted, "{app}: {sessions:?}");
        assert_eq!(version.is_some(), encrypted, "{app}: {sessions:?}");
    }
    println!("pg_tls: {app}: {sessions:?}");
}

/// A CA that issued nothing the server has, in a file.
fn other_ca(dir: &tempfile::TempDir) -> PathBuf {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "some other CA");
    let cert = params
        .self_signed(&rcgen::KeyPair::generate().unwrap())
        .unwrap();
    let path = dir.path().join("other-ca.pem");
    std::fs::write(&path, cert.pem()).unwrap();
    path
}

/// The refusal of opening a store at `url`: a permanent database error.
fn refused(url: &str) -> (Error, String) {
    // The schema is never made: the connection is refused first.
    let err = PgStore::builder(url)
        .schema("jobsafe_tls_refused")
        .connect_timeout(Duration::from_secs(10))
        .open()
        .unwrap_err();
    let chain = error_chain(&err);
    assert!(matches!(err, Error::Database { .. }), "{err:?}");
    assert!(!err.is_transient(), "{chain}");
    let password = server().password;
    assert!(!chain.contains(&password), "{chain}");
    assert!(!format!("{err:?}").contains(&password), "{err:?}");
    (err, chain)
}

#[test]
fn verify_full_with_the_servers_ca_connects_encrypted() {
    let server = server();
    let mut schemas = Schemas::default();
    let app = app_name();
    // The URL form, the CA's path percent-encoded in it. The login is bound
    // to the certificate (SCRAM-SHA-256-PLUS), or refused.
    let ca: String = server
        .ca
        .display()
        .to_string()
        .bytes()
        .map(|b| format!("%{b:02X}"))
        .collect();
    let url = format!(
        "postgres://{}:{}@127.0.0.1:{}/{}?sslmode=verify-full&sslrootcert={ca}\
         &channel_binding=require&application_name={app}",
        server.tls_user, server.password, server.port, server.database
    );
    let store = open_and_use(&mut schemas, &url);
    assert_sessions(&app, true);
    // The store names its server as ever, and never the password.
    assert!(store.server().starts_with("127.0.0.1:"), "{store:?}");
    assert!(!format!("{store:?}").contains(&server.password));
}

#[test]
fn verify_full_refuses_a_certificate_from_another_ca() {
    let server = server();
    let dir = tempfile::tempdir().unwrap();
    let other = other_ca(&dir);
    let (_, chain) = refused(&server.tls(&format!(
        "sslmode=verify-full sslrootcert='{}'",
        other.display()
    )));
    assert!(chain.contains("certificate"), "{chain}");
    assert!(chain.contains("unknown issuer"), "{chain}");
    assert!(chain.contains("UnknownIssuer"), "{chain}");
    assert!(chain.contains("other-ca.pem"), "{chain}");
    println!("pg_tls: another CA: {chain}");
}

#[test]
fn verify_full_refuses_a_host_name_the_certificate_lacks() {
    // The certificate names 127.0.0.1 only; the server is reached at that
    // address by the name `localhost`.
    let server = server();
    let url = server.conn(
        &server.tls_user,
        "localhost",
        &format!("sslmode=verify-full sslrootcert='{}'", server.ca.display()),
    );
    let (_, chain) = refused(&url);
    assert!(chain.contains("host name mismatch"), "{chain}");
    assert!(chain.contains("localhost"), "{chain}");
    println!("pg_tls: wrong name: {chain}");
}

#[test]
fn verify_ca_accepts_the_servers_chain_under_any_name() {
    let server = server();
    let mut schemas = Schemas::default();
    let app = app_name();
    let url = server.conn(
        &server.tls_user,
        "localhost",
        &format!(
            "sslmode=verify-ca sslrootcert='{}' application_name={app}",
            server.ca.display()
        ),
    );
    let _store = open_and_use(&mut schemas, &url);
    assert_sessions(&app, true);

    // But not a chain to another CA.
    let dir = tempfile::tempdir().unwrap();
    let (_, chain) = refused(&server.conn(
        &server.tls_user,
        "localhost",
        &format!(
            "sslmode=verify-ca sslrootcert='{}'",
            other_ca(&dir).display()
        ),
    ));
    assert!(chain.contains("unknown issuer"), "{chain}");
}

#[test]
fn require_encrypts_without_checking_the_certificate() {
    let server = server();
    let mut schemas = Schemas::default();
    let app = app_name();
    let _store = open_and_use(
        &mut schemas,
        &server.tls(&format!("sslmode=require application_name={app}")),
    );
    assert_sessions(&app, true);

    // libpq's rule: with roots, `require` checks the chain as verify-ca.
    let dir = tempfile::tempdir().unwrap();
    let (_, chain) = refused(&server.tls(&format!(
        "sslmode=require sslrootcert='{}'",
        other_ca(&dir).display()
    )));
    assert!(chain.contains("unknown issuer"), "{chain}");
}

#[test]
fn prefer_encrypts_when_it_can_and_falls_back_to_clear_when_the_handshake_is_refused() {
    let server = server();
    let mut schemas = Schemas::default();
    // No sslmode: libpq's default, prefer. The server offers TLS.
    let app = app_name();
    let _store = open_and_use(
        &mut schemas,
        &server.tls(&format!("application_name={app}")),
    );
    assert_sessions(&app, true);

    // Roots that refuse the server's certificate: libpq tries again in clear,
    // which the user of JOBSAFE_PG_URL may use...
    let dir = tempfile::tempdir().unwrap();
    let other = other_ca(&dir);
    let app = app_name();
    let _store = open_and_use(
        &mut schemas,
        &server.conn(
            &server.user,
            "127.0.0.1",
            &format!(
                "sslmode=prefer sslrootcert='{}' application_name={app}",
                other.display()
            ),
        ),
    );
    assert_sessions(&app, false);
    // ...and the TLS-only user may not.
    let err =
        PgStore::builder(&server.tls(&format!("sslmode=prefer sslrootcert='{}'", other.display())))
            .schema(&schemas.fresh())
            .open()
            .unwrap_err();
    assert!(error_chain(&err).contains("no encryption"), "{err}");
}

#[test]
fn disable_connects_in_clear_and_the_tls_only_user_is_refused() {
    let server = server();
    let mut schemas = Schemas::default();
    let app = app_name();
    let _store = open_and_use(
        &mut schemas,
        &server.conn(
            &server.user,
            "127.0.0.1",
            &format!("sslmode=disable application_name={app}"),
        ),
    );
    assert_sessions(&app, false);

    // The server's rule that every other test relies on: no TLS, no login.
    let err = PgStore::builder(&server.tls("sslmode=disable"))
        .schema(&schemas.fresh())
        .open()
        .unwrap_err();
    let chain = error_chain(&err);
    assert!(chain.contains("pg_hba.conf rejects"), "{chain}");
    assert!(chain.contains("no encryption"), "{chain}");
}

#[test]
fn a_missing_root_file_is_an_error_at_open_that_names_it() {
    let server = server();
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-ca.pem");
    let started = Instant::now();
    let err = PgStore::open(&server.tls(&format!(
        "sslmode=verify-full sslrootcert='{}'",
        missing.display()
    )))
    .unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err:?}");
    assert!(err.to_string().contains("no-such-ca.pem"), "{err}");
    // Found before connecting.
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn a_call_past_its_deadline_is_cancelled_over_tls() {
    // A row locked by another session holds the store's put; the call
    // deadline passes long before the server's own bounds, so only the
    // cancel request, made with the store's TLS settings, ends the statement.
    let server = server();
    let mut schemas = Schemas::default();
    let schema = schemas.fresh();
    let app = app_name();
    let url = server.tls(&format!(
        "sslmode=verify-full sslrootcert='{}' application_name={app}",
        server.ca.display()
    ));
    let store = PgStore::builder(&url)
        .schema(&schema)
        .pool_size(1)
        .call_timeout(Duration::from_secs(2))
        .lock_timeout(Duration::from_secs(120))
        .statement_timeout(Duration::from_secs(120))
        .idle_in_transaction_timeout(Duration::from_secs(120))
        .open()
        .unwrap();
    let key = Key::new(["held"]).unwrap();
    store.put(&key, b"before", Expect::Absent).unwrap();

    let mut holder = pg::client();
    holder.batch_execute("BEGIN").unwrap();
    holder
        .execute(
            &format!("SELECT 1 FROM \"{schema}\".jobsafe_records FOR UPDATE"),
            &[],
        )
        .unwrap();
    let err = store.put(&key, b"during", Expect::Any).unwrap_err();
    assert!(err.is_transient(), "{err}");
    assert!(error_chain(&err).contains("call deadline"), "{err}");

    // The cancelled statement ends, and with it the session, whose client
    // has gone; the lock is still held.
    let waited = Instant::now();
    while !sessions(&app).is_empty() {
        assert!(
            waited.elapsed() < Duration::from_secs(30),
            "the store's statement is still running: the cancel request did not arrive"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    println!("pg_tls: cancelled over TLS within {:?}", waited.elapsed());
    holder.batch_execute("ROLLBACK").unwrap();
}

#[test]
fn require_refuses_a_server_that_offers_no_tls() {
    // A server of the test's own that answers "no" to the TLS request.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let refuser = std::thread::spawn(move || {
        let (mut socket, _) = listener.accept().unwrap();
        let mut request = [0; 8];
        socket.read_exact(&mut request).unwrap();
        // SSLRequest: length 8, code 80877103.
        assert_eq!(request, [0, 0, 0, 8, 4, 210, 22, 47]);
        socket.write_all(b"N").unwrap();
    });
    let err = PgStore::builder(&format!(
        "host=127.0.0.1 port={port} user=app password=Zq1secret dbname=jobs sslmode=require"
    ))
    .connect_timeout(Duration::from_secs(10))
    .open()
    .unwrap_err();
    refuser.join().unwrap();
    let chain = error_chain(&err);
    assert!(matches!(err, Error::Database { .. }), "{err:?}");
    assert!(!err.is_transient(), "{chain}");
    assert!(chain.contains("does not support TLS"), "{chain}");
    assert!(!chain.contains("Zq1"), "{chain}");
}
