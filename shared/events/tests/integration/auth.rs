//! Authentication and TLS against private `nats-server` processes: NKeys,
//! server and client certificates, decentralised JWT auth with a creds
//! file, and the same settings read from the environment.
//!
//! Every key, certificate and JWT is made at test time, so nothing secret is
//! checked in and nothing expires. Each case proves a real round trip (a
//! typed event published and received through the [`Bus`]) and that the
//! server refuses the wrong identity with a typed error.

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use events::backend::nats::{NatsConfig, NatsTransport, ReconnectPolicy};
use events::testing::NatsServer;
use events::transport::{Message, Subject, Transport as _};
use events::{Bus, ErrorKind};
use nkeys::KeyPair;

use crate::conformance::unique_prefix;
use crate::support::Ping;

const WAIT: Duration = Duration::from_secs(10);

/// Test settings for `server`: quick reconnects, short bounded waits.
fn config(server: &NatsServer) -> NatsConfig {
    NatsConfig::new(server.url())
        .name("events-auth-tests")
        .connect_timeout(Duration::from_secs(3))
        .reconnect(
            ReconnectPolicy::new()
                .min_delay(Duration::from_millis(50))
                .max_delay(Duration::from_millis(200)),
        )
        .publish_timeout(Duration::from_secs(1))
}

/// Connects with `config`, then publishes a typed event and receives it on
/// the same connection: proof that the authenticated (or encrypted)
/// connection really carries traffic, not only that the handshake passed.
async fn round_trip(config: NatsConfig) {
    let transport = NatsTransport::connect(config)
        .await
        .unwrap_or_else(|e| panic!("connect: {e} ({:?})", std::error::Error::source(&e)));
    let bus = Bus::builder(transport)
        .source("auth-tests")
        .prefix(unique_prefix())
        .build()
        .unwrap();
    let mut sub = bus.subscribe::<Ping>().await.unwrap();
    let sent = Ping {
        seq: 7,
        note: "authenticated".to_owned(),
    };
    bus.publish(&bus.event(sent.clone())).await.unwrap();
    let got = tokio::time::timeout(WAIT, sub.next())
        .await
        .expect("the event comes back within the wait")
        .expect("the subscription is open")
        .expect("the event decodes");
    assert_eq!(got.payload(), &sent);
    bus.close().await.unwrap();
}

/// Connects with `config`, which must fail; returns the error.
async fn refused(config: NatsConfig) -> events::Error {
    match NatsTransport::connect(config).await {
        Ok(_) => panic!("the server accepted a connection it should refuse"),
        Err(e) => e,
    }
}

/// The error and its whole source chain, as a log line would show them.
fn report(err: &events::Error) -> String {
    let mut text = format!("{err} / {err:?}");
    let mut source = std::error::Error::source(err);
    while let Some(s) = source {
        text.push_str(&format!(" / {s}"));
        source = s.source();
    }
    text
}

/// Asserts that none of `secrets` shows in the error, its Debug form or its
/// sources.
fn assert_no_secret(err: &events::Error, secrets: &[&str]) {
    let text = report(err);
    for secret in secrets {
        assert!(!text.contains(secret), "a secret leaked into {text}");
    }
}

/// A directory of test files, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(label: &str) -> TempDir {
        use std::sync::atomic::{AtomicU32, Ordering};
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "events-auth-{label}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create a temporary directory");
        TempDir(dir)
    }

    fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, contents).expect("write a test file");
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A path as a quoted string for a nats-server config file.
fn quoted(path: &Path) -> String {
    format!("{:?}", path.display().to_string())
}

// ---------------------------------------------------------------- NKeys

#[tokio::test]
async fn nkey_auth_round_trips_with_the_seed_and_refuses_another_seed() {
    let user = KeyPair::new_user();
    let seed = user.seed().unwrap();
    let server = NatsServer::builder()
        .config(format!(
            "authorization {{\n  users = [ {{ nkey: {} }} ]\n}}\n",
            user.public_key()
        ))
        .start();

    round_trip(config(&server).nkey(seed.clone())).await;

    let stranger = KeyPair::new_user().seed().unwrap();
    let err = refused(config(&server).nkey(stranger.clone())).await;
    assert_eq!(err.kind(), ErrorKind::Unauthorized, "{}", report(&err));
    assert!(!err.is_retryable());
    assert!(err.to_string().contains("(nkey)"), "{err}");
    assert_no_secret(&err, &[&seed, &stranger]);

    // No credentials at all is refused the same way.
    let err = refused(config(&server)).await;
    assert_eq!(err.kind(), ErrorKind::Unauthorized, "{}", report(&err));
}

#[tokio::test]
async fn a_malformed_nkey_seed_is_invalid_input_not_a_refusal() {
    let user = KeyPair::new_user();
    let server = NatsServer::builder()
        .config(format!(
            "authorization {{\n  users = [ {{ nkey: {} }} ]\n}}\n",
            user.public_key()
        ))
        .start();
    let err = refused(config(&server).nkey("SUNOTAVALIDSEED")).await;
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{}", report(&err));
    assert_no_secret(&err, &["SUNOTAVALIDSEED"]);
}

// ---------------------------------------------------------------- TLS

/// A CA with a server certificate (for 127.0.0.1 and localhost) and a client
/// certificate it signed, written as PEM files; plus a second, unrelated CA
/// with its own client certificate.
struct Pki {
    /// Holds the files; removed when the `Pki` drops.
    _dir: TempDir,
    ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
    stranger_cert: PathBuf,
    stranger_key: PathBuf,
}

impl Pki {
    fn new() -> Pki {
        use rcgen::{
            BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
            IsCa, KeyPair as TlsKey, KeyUsagePurpose,
        };
        let dir = TempDir::new("pki");
        let ca = |name: &str| {
            let mut params = CertificateParams::new(Vec::new()).unwrap();
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.distinguished_name.push(DnType::CommonName, name);
            params.key_usages = vec![
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::CrlSign,
                KeyUsagePurpose::DigitalSignature,
            ];
            CertifiedIssuer::self_signed(params, TlsKey::generate().unwrap()).unwrap()
        };
        let leaf = |issuer: &CertifiedIssuer<'_, TlsKey>,
                    names: Vec<String>,
                    usage: ExtendedKeyUsagePurpose,
                    common_name: &str| {
            let mut params = CertificateParams::new(names).unwrap();
            params
                .distinguished_name
                .push(DnType::CommonName, common_name);
            params.extended_key_usages = vec![usage];
            params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            let key = TlsKey::generate().unwrap();
            let cert = params.signed_by(&key, issuer).unwrap();
            (cert.pem(), key.serialize_pem())
        };

        let authority = ca("events test CA");
        let (server_cert, server_key) = leaf(
            &authority,
            vec!["127.0.0.1".to_owned(), "localhost".to_owned()],
            ExtendedKeyUsagePurpose::ServerAuth,
            "nats-server",
        );
        let (client_cert, client_key) = leaf(
            &authority,
            vec!["events-client".to_owned()],
            ExtendedKeyUsagePurpose::ClientAuth,
            "events-client",
        );
        let other = ca("unrelated CA");
        let (stranger_cert, stranger_key) = leaf(
            &other,
            vec!["stranger".to_owned()],
            ExtendedKeyUsagePurpose::ClientAuth,
            "stranger",
        );
        Pki {
            ca: dir.write("ca.pem", &authority.pem()),
            server_cert: dir.write("server.pem", &server_cert),
            server_key: dir.write("server-key.pem", &server_key),
            client_cert: dir.write("client.pem", &client_cert),
            client_key: dir.write("client-key.pem", &client_key),
            stranger_cert: dir.write("stranger.pem", &stranger_cert),
            stranger_key: dir.write("stranger-key.pem", &stranger_key),
            _dir: dir,
        }
    }

    /// A server requiring TLS; with `verify`, also a client certificate
    /// signed by the CA.
    fn server(&self, verify: bool) -> NatsServer {
        let mut tls = format!(
            "tls {{\n  cert_file: {}\n  key_file: {}\n",
            quoted(&self.server_cert),
            quoted(&self.server_key)
        );
        if verify {
            tls.push_str(&format!(
                "  ca_file: {}\n  verify: true\n",
                quoted(&self.ca)
            ));
        }
        tls.push_str("  timeout: 2\n}\n");
        NatsServer::builder().config(tls).start()
    }
}

#[tokio::test]
async fn tls_round_trips_with_the_custom_root_and_fails_typed_without_it() {
    let pki = Pki::new();
    let server = pki.server(false);

    round_trip(config(&server).root_certificate(&pki.ca)).await;

    // The server's certificate is signed by a CA the client does not know:
    // the client refuses the server. Not `Unauthorized` (the server refused
    // nothing) and not `Unavailable` (waiting does not fix it): `Backend`,
    // with the reason and the setting to look at in the message.
    let err = refused(config(&server)).await;
    assert_eq!(err.kind(), ErrorKind::Backend, "{}", report(&err));
    assert!(!err.is_retryable());
    assert!(
        err.to_string().contains("not trusted (UnknownIssuer)"),
        "{err}"
    );

    // A client that trusts another CA fails the same way.
    let other = Pki::new();
    let err = refused(config(&server).root_certificate(&other.ca)).await;
    assert_eq!(err.kind(), ErrorKind::Backend, "{}", report(&err));
    assert!(err.to_string().contains("not trusted"), "{err}");
}

#[tokio::test]
async fn mutual_tls_round_trips_with_the_client_certificate_and_refuses_without_it() {
    let pki = Pki::new();
    let server = pki.server(true);

    round_trip(
        config(&server)
            .root_certificate(&pki.ca)
            .client_certificate(&pki.client_cert, &pki.client_key),
    )
    .await;

    // No client certificate: the server ends the handshake.
    let err = refused(config(&server).root_certificate(&pki.ca)).await;
    assert_eq!(err.kind(), ErrorKind::Unauthorized, "{}", report(&err));
    assert!(!err.is_retryable());
    assert!(
        err.to_string().contains("refused the tls client identity"),
        "{err}"
    );

    let err = refused(
        config(&server)
            .root_certificate(&pki.ca)
            .client_certificate(&pki.stranger_cert, &pki.stranger_key),
    )
    .await;
    // A certificate from a CA the server does not trust.
    assert_eq!(err.kind(), ErrorKind::Unauthorized, "{}", report(&err));
}

// ---------------------------------------------------------------- JWT

/// Signs `claims` as a NATS JWT (`ed25519-nkey`) with `issuer`.
fn sign_jwt(issuer: &KeyPair, claims: serde_json::Value) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"typ":"JWT","alg":"ed25519-nkey"}"#);
    let body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).unwrap());
    let signing_input = format!("{header}.{body}");
    let signature = issuer.sign(signing_input.as_bytes()).unwrap();
    format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(signature))
}

/// Claims common to every JWT kind, with the kind-specific `nats` section.
fn claims(
    issuer: &KeyPair,
    subject: &str,
    name: &str,
    nats: serde_json::Value,
) -> serde_json::Value {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    serde_json::json!({
        // Any unique id: the server does not recompute it.
        "jti": format!("events-test-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed)),
        "iat": now,
        "iss": issuer.public_key(),
        "sub": subject,
        "name": name,
        "nats": nats,
    })
}

/// An operator, one account it signed, and the server config trusting them
/// (memory resolver with the account preloaded).
struct Operator {
    account: KeyPair,
    config: String,
}

impl Operator {
    fn new() -> Operator {
        let operator = KeyPair::new_operator();
        let account = KeyPair::new_account();
        let operator_jwt = sign_jwt(
            &operator,
            claims(
                &operator,
                &operator.public_key(),
                "events-test-operator",
                serde_json::json!({ "type": "operator", "version": 2 }),
            ),
        );
        let account_jwt = sign_jwt(
            &operator,
            claims(
                &operator,
                &account.public_key(),
                "events-test-account",
                serde_json::json!({
                    // Zero would mean "none allowed"; -1 is unlimited.
                    "limits": {
                        "subs": -1, "data": -1, "payload": -1, "imports": -1,
                        "exports": -1, "wildcards": true, "conn": -1, "leaf": -1
                    },
                    "type": "account",
                    "version": 2
                }),
            ),
        );
        let config = format!(
            "operator: {operator_jwt}\nresolver: MEMORY\nresolver_preload: {{\n  {}: {account_jwt}\n}}\n",
            account.public_key()
        );
        Operator { account, config }
    }
}

/// A `.creds` file's contents for a new user signed by `account`.
fn user_creds(account: &KeyPair) -> (String, String) {
    let user = KeyPair::new_user();
    let jwt = sign_jwt(
        account,
        claims(
            account,
            &user.public_key(),
            "events-test-user",
            serde_json::json!({
                "pub": {}, "sub": {},
                "subs": -1, "data": -1, "payload": -1,
                "type": "user",
                "version": 2
            }),
        ),
    );
    let seed = user.seed().unwrap();
    let creds = format!(
        "-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n\n\
         ************************* IMPORTANT *************************\n\
         NKEY Seed printed below can be used to sign and prove identity.\n\n\
         -----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n\n\
         *************************************************************\n"
    );
    (creds, seed)
}

#[tokio::test]
async fn creds_file_auth_round_trips_and_a_user_of_an_unknown_account_is_refused() {
    let operator = Operator::new();
    let server = NatsServer::builder()
        .config(operator.config.clone())
        .start();

    let (creds, seed) = user_creds(&operator.account);
    let path = server.dir().join("user.creds");
    std::fs::write(&path, creds).unwrap();
    round_trip(config(&server).creds_file(&path)).await;

    // Signed by an account key the operator never signed.
    let (creds, stranger_seed) = user_creds(&KeyPair::new_account());
    let stranger = server.dir().join("stranger.creds");
    std::fs::write(&stranger, creds).unwrap();
    let err = refused(config(&server).creds_file(&stranger)).await;
    assert_eq!(err.kind(), ErrorKind::Unauthorized, "{}", report(&err));
    assert!(err.to_string().contains("(creds file)"), "{err}");
    assert_no_secret(&err, &[&seed, &stranger_seed, "stranger.creds"]);
    // The server's reason, so a change of behaviour shows here first.
    assert!(server.log().contains("account missing"), "{}", server.log());

    // In operator mode there is no anonymous access.
    let err = refused(config(&server)).await;
    assert_eq!(err.kind(), ErrorKind::Unauthorized, "{}", report(&err));
}

/// A refusal after the connection was up (the server's config changed and
/// it dropped the client with `-ERR 'Authorization Violation'`) is not a
/// connect error: the client keeps reconnecting and being refused. It shows
/// in `status().last_error`, and a publish waiting for the connection gives
/// up after the publish timeout as `Unauthorized` (retrying cannot help).
#[tokio::test]
async fn credentials_revoked_while_connected_show_in_the_status_and_publishes_fail_unauthorized() {
    let server = NatsServer::builder()
        .config("authorization {\n  users = [ { user: alice, password: first } ]\n}\n")
        .start();
    let transport = NatsTransport::connect(config(&server).user_password("alice", "first"))
        .await
        .unwrap();
    transport.flush().await.unwrap();

    // Change the password and make the server reload its config.
    std::fs::write(
        server.dir().join("server.conf"),
        "authorization {\n  users = [ { user: alice, password: second } ]\n}\n",
    )
    .unwrap();
    let pid = server.pid().expect("the server runs").to_string();
    let status = std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap();
    assert!(status.success());

    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let status = transport.status();
        if status
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("authorization violation"))
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no authorization error within {WAIT:?}: {status:?}\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let err = transport
        .publish(Message::new(
            Subject::parse("auth.revoked").unwrap(),
            &b"x"[..],
        ))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unauthorized, "{}", report(&err));
    assert!(!err.is_retryable());
    assert_no_secret(&err, &["first", "second"]);
    transport.close().await.ok();
}

// ---------------------------------------------------------------- env

#[tokio::test]
async fn settings_from_the_environment_variables_connect_with_nkey_and_mutual_tls() {
    let pki = Pki::new();
    let user = KeyPair::new_user();
    let seed = user.seed().unwrap();
    let mut tls = format!(
        "tls {{\n  cert_file: {}\n  key_file: {}\n  ca_file: {}\n  verify: true\n  timeout: 2\n}}\n",
        quoted(&pki.server_cert),
        quoted(&pki.server_key),
        quoted(&pki.ca)
    );
    tls.push_str(&format!(
        "authorization {{\n  users = [ {{ nkey: {} }} ]\n}}\n",
        user.public_key()
    ));
    let server = NatsServer::builder().config(tls).start();

    let url = server.url();
    let ca = pki.ca.display().to_string();
    let cert = pki.client_cert.display().to_string();
    let key = pki.client_key.display().to_string();
    let vars = [
        ("NATS_URL", url.as_str()),
        ("NATS_NAME", "events-env-test"),
        ("NATS_NKEY_SEED", seed.as_str()),
        ("NATS_CA", ca.as_str()),
        ("NATS_CLIENT_CERT", cert.as_str()),
        ("NATS_CLIENT_KEY", key.as_str()),
    ];
    let lookup = |vars: Vec<(&'static str, String)>| {
        move |name: &str| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.clone())
        }
    };
    let owned: Vec<(&'static str, String)> =
        vars.iter().map(|(k, v)| (*k, (*v).to_owned())).collect();
    let from_env = NatsConfig::from_lookup(lookup(owned.clone())).unwrap();
    assert!(from_env.get_require_tls());
    assert!(!format!("{from_env:?}{from_env}").contains(&seed));
    round_trip(from_env).await;

    // The same variables with another user's seed are refused.
    let stranger = KeyPair::new_user().seed().unwrap();
    let mut wrong = owned.clone();
    wrong.retain(|(k, _)| *k != "NATS_NKEY_SEED");
    wrong.push(("NATS_NKEY_SEED", stranger.clone()));
    let err = refused(NatsConfig::from_lookup(lookup(wrong)).unwrap()).await;
    assert_eq!(err.kind(), ErrorKind::Unauthorized, "{}", report(&err));
    assert_no_secret(&err, &[&seed, &stranger]);

    // Without the client certificate the TLS identity is refused.
    let mut no_cert = owned;
    no_cert.retain(|(k, _)| !k.starts_with("NATS_CLIENT_"));
    let err = refused(NatsConfig::from_lookup(lookup(no_cert)).unwrap()).await;
    assert_eq!(err.kind(), ErrorKind::Unauthorized, "{}", report(&err));
}
