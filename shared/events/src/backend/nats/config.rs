//! Connection settings shared by the core NATS and JetStream transports.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use crate::error::{Error, Result};

/// How the client proves who it is.
///
/// Secrets are never printed: `Debug` and `Display` show only the method
/// (and the user name, which is not a secret).
#[derive(Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Auth {
    /// No credentials (or credentials in the URL, `nats://user:pass@host`).
    #[default]
    None,
    /// A shared token (`--auth` on the server).
    Token(String),
    /// User name and password.
    UserPassword {
        /// The user name.
        user: String,
        /// The password.
        password: String,
    },
    /// An NKey seed (`SU...`); the server holds the public key.
    NKey(String),
    /// A `.creds` file with a user JWT and NKey seed (decentralised auth).
    CredsFile(PathBuf),
}

impl Auth {
    pub(crate) fn method(&self) -> &'static str {
        match self {
            Auth::None => "none",
            Auth::Token(_) => "token",
            Auth::UserPassword { .. } => "user/password",
            Auth::NKey(_) => "nkey",
            Auth::CredsFile(_) => "creds file",
        }
    }
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Auth::None => f.write_str("None"),
            Auth::Token(_) => f.write_str("Token(<redacted>)"),
            Auth::UserPassword { user, .. } => f
                .debug_struct("UserPassword")
                .field("user", user)
                .field("password", &"<redacted>")
                .finish(),
            Auth::NKey(_) => f.write_str("NKey(<redacted>)"),
            // The house rule treats the creds path as a secret too.
            Auth::CredsFile(_) => f.write_str("CredsFile(<redacted>)"),
        }
    }
}

/// When and how often to reconnect after the connection is lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReconnectPolicy {
    max_reconnects: Option<usize>,
    min_delay: Duration,
    max_delay: Duration,
}

impl ReconnectPolicy {
    /// Reconnect forever, the first retry at once, then waits doubling from
    /// 100 ms up to 4 s.
    pub const fn new() -> Self {
        ReconnectPolicy {
            max_reconnects: None,
            min_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(4),
        }
    }

    /// Give up (and close the connection) after this many failed attempts in
    /// a row. `None` (the default) retries forever.
    ///
    /// ```
    /// use events::backend::nats::ReconnectPolicy;
    /// let policy = ReconnectPolicy::new().max_reconnects(Some(10));
    /// assert_eq!(policy.get_max_reconnects(), Some(10));
    /// ```
    pub fn max_reconnects(mut self, max: Option<usize>) -> Self {
        self.max_reconnects = max.filter(|m| *m > 0);
        self
    }

    /// The wait before the second attempt; it doubles each time after.
    pub fn min_delay(mut self, delay: Duration) -> Self {
        self.min_delay = delay;
        self
    }

    /// The longest wait between two attempts.
    pub fn max_delay(mut self, delay: Duration) -> Self {
        self.max_delay = delay;
        self
    }

    /// The attempt limit (`None`: unlimited, the default).
    pub fn get_max_reconnects(&self) -> Option<usize> {
        self.max_reconnects
    }
    /// The first wait (default 100 ms).
    pub fn get_min_delay(&self) -> Duration {
        self.min_delay
    }
    /// The longest wait (default 4 s).
    pub fn get_max_delay(&self) -> Duration {
        self.max_delay
    }

    /// The wait before attempt `attempts` (counted from 1).
    pub(crate) fn delay(&self, attempts: usize) -> Duration {
        if attempts <= 1 {
            return Duration::ZERO;
        }
        let doublings = u32::try_from(attempts - 2).unwrap_or(u32::MAX).min(30);
        self.min_delay
            .saturating_mul(1 << doublings)
            .min(self.max_delay)
    }
}

impl Default for ReconnectPolicy {
    fn default() -> Self {
        Self::new()
    }
}

/// Settings of a NATS connection, for [`NatsTransport`](super::NatsTransport)
/// and the JetStream transport.
///
/// The subject prefix is not here: the [`Bus`](crate::Bus) owns it.
///
/// Built in code with owned-`self` setters, or from the environment with
/// [`from_env`](Self::from_env):
///
/// ```
/// use std::time::Duration;
/// use events::backend::nats::NatsConfig;
///
/// let config = NatsConfig::new("nats://10.0.0.1:4222,nats://10.0.0.2:4222")
///     .name("orders")
///     .user_password("orders", "s3cret")
///     .publish_timeout(Duration::from_secs(2));
/// assert_eq!(config.get_servers().len(), 2);
/// assert!(!format!("{config:?}").contains("s3cret"));
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct NatsConfig {
    servers: Vec<String>,
    name: Option<String>,
    auth: Auth,
    root_certificates: Vec<PathBuf>,
    client_certificate: Option<(PathBuf, PathBuf)>,
    require_tls: bool,
    reconnect: ReconnectPolicy,
    retry_initial_connect: bool,
    connect_timeout: Duration,
    request_timeout: Duration,
    publish_timeout: Duration,
    ping_interval: Duration,
    client_capacity: usize,
    subscription_capacity: usize,
}

/// The default server, a local one.
pub const DEFAULT_URL: &str = "nats://127.0.0.1:4222";

impl NatsConfig {
    /// Settings for the servers in `urls` (comma-separated, e.g.
    /// `nats://a:4222,nats://b:4222`), with every other setting at its
    /// default.
    pub fn new(urls: impl AsRef<str>) -> Self {
        NatsConfig {
            servers: split_list(urls.as_ref()),
            name: None,
            auth: Auth::None,
            root_certificates: Vec::new(),
            client_certificate: None,
            require_tls: false,
            reconnect: ReconnectPolicy::new(),
            retry_initial_connect: false,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
            publish_timeout: Duration::from_secs(5),
            ping_interval: Duration::from_secs(60),
            client_capacity: 2048,
            subscription_capacity: 65_536,
        }
    }

    /// Settings from environment variables; unset ones keep their defaults.
    ///
    /// | variable | meaning |
    /// |---|---|
    /// | `NATS_URL` | server URLs, comma-separated (default `nats://127.0.0.1:4222`) |
    /// | `NATS_NAME` | client name shown by the server (`connz`) |
    /// | `NATS_TOKEN` | token auth |
    /// | `NATS_USER`, `NATS_PASSWORD` | user/password auth (both or neither) |
    /// | `NATS_NKEY_SEED` | NKey seed auth |
    /// | `NATS_CREDS` | path of a `.creds` file (JWT auth) |
    /// | `NATS_CA` | root certificate PEM file(s), comma-separated; enables TLS; replaces the system roots |
    /// | `NATS_CLIENT_CERT`, `NATS_CLIENT_KEY` | client certificate and key PEM files (both or neither); enables TLS |
    ///
    /// At most one auth method may be set. Empty variables count as unset.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidInput`](crate::ErrorKind::InvalidInput) when
    /// variables contradict each other (two auth methods, a user without a
    /// password, a certificate without a key).
    pub fn from_env() -> Result<Self> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// [`from_env`](Self::from_env) reading from `lookup` instead of the
    /// process environment (for tests and other configuration sources).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let get = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
        let mut config = NatsConfig::new(get("NATS_URL").as_deref().unwrap_or(DEFAULT_URL));
        if let Some(name) = get("NATS_NAME") {
            config = config.name(name);
        }
        let mut methods = Vec::new();
        if let Some(token) = get("NATS_TOKEN") {
            methods.push("NATS_TOKEN");
            config = config.token(token);
        }
        match (get("NATS_USER"), get("NATS_PASSWORD")) {
            (Some(user), Some(password)) => {
                methods.push("NATS_USER/NATS_PASSWORD");
                config = config.user_password(user, password);
            }
            (None, None) => {}
            _ => {
                return Err(Error::invalid(
                    "NATS_USER and NATS_PASSWORD must be set together",
                ))
            }
        }
        if let Some(seed) = get("NATS_NKEY_SEED") {
            methods.push("NATS_NKEY_SEED");
            config = config.nkey(seed);
        }
        if let Some(path) = get("NATS_CREDS") {
            methods.push("NATS_CREDS");
            config = config.creds_file(path);
        }
        if methods.len() > 1 {
            return Err(Error::invalid(format!(
                "only one NATS auth method may be set, found {}",
                methods.join(", ")
            )));
        }
        if let Some(cas) = get("NATS_CA") {
            for ca in split_list(&cas) {
                config = config.root_certificate(ca);
            }
        }
        match (get("NATS_CLIENT_CERT"), get("NATS_CLIENT_KEY")) {
            (Some(cert), Some(key)) => config = config.client_certificate(cert, key),
            (None, None) => {}
            _ => {
                return Err(Error::invalid(
                    "NATS_CLIENT_CERT and NATS_CLIENT_KEY must be set together",
                ))
            }
        }
        Ok(config)
    }

    /// Replaces the server list (comma-separated URLs).
    pub fn servers(mut self, urls: impl AsRef<str>) -> Self {
        self.servers = split_list(urls.as_ref());
        self
    }

    /// The client name the server shows in its monitoring (`connz`).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Authenticate with a token.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.auth = Auth::Token(token.into());
        self
    }

    /// Authenticate with a user name and password.
    pub fn user_password(mut self, user: impl Into<String>, password: impl Into<String>) -> Self {
        self.auth = Auth::UserPassword {
            user: user.into(),
            password: password.into(),
        };
        self
    }

    /// Authenticate with an NKey seed.
    pub fn nkey(mut self, seed: impl Into<String>) -> Self {
        self.auth = Auth::NKey(seed.into());
        self
    }

    /// Authenticate with a `.creds` file (read at connect).
    pub fn creds_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.auth = Auth::CredsFile(path.into());
        self
    }

    /// Sets the auth method directly.
    pub fn auth(mut self, auth: Auth) -> Self {
        self.auth = auth;
        self
    }

    /// Trust this root certificate (PEM file) for the server's TLS
    /// certificate; requires TLS. Once any root is given, only the given
    /// roots are trusted: the system's are not loaded.
    pub fn root_certificate(mut self, path: impl Into<PathBuf>) -> Self {
        self.root_certificates.push(path.into());
        self.require_tls = true;
        self
    }

    /// Present this client certificate and key (PEM files) for mutual TLS;
    /// requires TLS.
    pub fn client_certificate(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        self.client_certificate = Some((cert.into(), key.into()));
        self.require_tls = true;
        self
    }

    /// Refuse to talk to the server without TLS (default: only when a
    /// certificate is configured or the URL is `tls://`).
    pub fn require_tls(mut self, required: bool) -> Self {
        self.require_tls = required;
        self
    }

    /// The reconnect policy.
    pub fn reconnect(mut self, policy: ReconnectPolicy) -> Self {
        self.reconnect = policy;
        self
    }

    /// Keep trying when the first connection attempt fails, instead of
    /// failing at once (default: fail at once, so a misconfigured service
    /// stops at start-up).
    pub fn retry_initial_connect(mut self, retry: bool) -> Self {
        self.retry_initial_connect = retry;
        self
    }

    /// How long one connection attempt may take (default 5 s; any
    /// duration, `Duration::MAX` waiting without bound).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long a request (JetStream API calls, publish acks) waits for its
    /// reply (default 10 s; any duration, `Duration::MAX` waiting without
    /// bound).
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// How long a publish may wait while the connection is down or the
    /// client's buffer is full, before it fails with
    /// [`ErrorKind::Unavailable`](crate::ErrorKind::Unavailable) (default
    /// 5 s). Without this bound a core NATS publish blocks forever while
    /// the server is unreachable.
    pub fn publish_timeout(mut self, timeout: Duration) -> Self {
        self.publish_timeout = timeout;
        self
    }

    /// How often the client pings the server; two missed pongs count as a
    /// lost connection (default 60 s). Zero is refused at connect with
    /// [`ErrorKind::InvalidInput`](crate::ErrorKind::InvalidInput); long
    /// intervals are capped at about 30 years by the timer.
    pub fn ping_interval(mut self, interval: Duration) -> Self {
        self.ping_interval = interval;
        self
    }

    /// Outgoing commands the client buffers before publishes wait (default
    /// 2,048; at least 1, at most
    /// [`MAX_CAPACITY`](crate::transport::MAX_CAPACITY)).
    pub fn client_capacity(mut self, capacity: usize) -> Self {
        self.client_capacity = capacity.clamp(1, crate::transport::MAX_CAPACITY);
        self
    }

    /// Messages each subscription buffers; beyond it the client drops
    /// messages and reports a slow consumer (default 65,536; at least 1, at
    /// most [`MAX_CAPACITY`](crate::transport::MAX_CAPACITY)).
    pub fn subscription_capacity(mut self, capacity: usize) -> Self {
        self.subscription_capacity = capacity.clamp(1, crate::transport::MAX_CAPACITY);
        self
    }

    /// The server URLs.
    pub fn get_servers(&self) -> &[String] {
        &self.servers
    }
    /// The client name, if set.
    pub fn get_name(&self) -> Option<&str> {
        self.name.as_deref()
    }
    /// The auth method.
    pub fn get_auth(&self) -> &Auth {
        &self.auth
    }
    /// Extra root certificates.
    pub fn get_root_certificates(&self) -> &[PathBuf] {
        &self.root_certificates
    }
    /// Client certificate and key, if set.
    pub fn get_client_certificate(&self) -> Option<(&PathBuf, &PathBuf)> {
        self.client_certificate.as_ref().map(|(c, k)| (c, k))
    }
    /// Whether TLS is required.
    pub fn get_require_tls(&self) -> bool {
        self.require_tls
    }
    /// The reconnect policy.
    pub fn get_reconnect(&self) -> &ReconnectPolicy {
        &self.reconnect
    }
    /// Whether the first connection is retried.
    pub fn get_retry_initial_connect(&self) -> bool {
        self.retry_initial_connect
    }
    /// Connect timeout (default 5 s).
    pub fn get_connect_timeout(&self) -> Duration {
        self.connect_timeout
    }
    /// Request timeout (default 10 s).
    pub fn get_request_timeout(&self) -> Duration {
        self.request_timeout
    }
    /// Publish timeout (default 5 s).
    pub fn get_publish_timeout(&self) -> Duration {
        self.publish_timeout
    }
    /// Ping interval (default 60 s).
    pub fn get_ping_interval(&self) -> Duration {
        self.ping_interval
    }
    /// Client command buffer (default 2,048).
    pub fn get_client_capacity(&self) -> usize {
        self.client_capacity
    }
    /// Per-subscription buffer (default 65,536).
    pub fn get_subscription_capacity(&self) -> usize {
        self.subscription_capacity
    }

    /// The server list with any password in a URL replaced, for logs.
    pub(crate) fn redacted_servers(&self) -> Vec<String> {
        self.servers.iter().map(|s| redact_url(s)).collect()
    }

    /// The async-nats options for these settings.
    pub(crate) async fn connect_options(&self) -> Result<async_nats::ConnectOptions> {
        if self.ping_interval.is_zero() {
            // The client's ping timer panics on a zero period, in the
            // connection task, where it would leave a dead connection.
            return Err(Error::invalid("the NATS ping interval must be positive"));
        }
        let mut options = async_nats::ConnectOptions::new()
            .connection_timeout(self.connect_timeout)
            .request_timeout(Some(self.request_timeout))
            .ping_interval(self.ping_interval)
            .client_capacity(self.client_capacity)
            .subscription_capacity(self.subscription_capacity)
            .max_reconnects(self.reconnect.max_reconnects);
        let policy = self.reconnect;
        options = options.reconnect_delay_callback(move |attempts| policy.delay(attempts));
        if let Some(name) = &self.name {
            options = options.name(name);
        }
        if self.retry_initial_connect {
            options = options.retry_on_initial_connect();
        }
        options = match &self.auth {
            Auth::None => options,
            Auth::Token(token) => options.token(token.clone()),
            Auth::UserPassword { user, password } => {
                options.user_and_password(user.clone(), password.clone())
            }
            Auth::NKey(seed) => options.nkey(seed.clone()),
            Auth::CredsFile(path) => options.credentials_file(path).await.map_err(|e| {
                Error::invalid("cannot read the NATS creds file (path redacted)").with_source(e)
            })?,
        };
        for root in &self.root_certificates {
            options = options.add_root_certificates(root.clone());
        }
        if let Some((cert, key)) = &self.client_certificate {
            options = options.add_client_certificate(cert.clone(), key.clone());
        }
        if self.require_tls {
            options = options.require_tls(true);
        }
        Ok(options)
    }
}

impl Default for NatsConfig {
    /// [`NatsConfig::new`] with [`DEFAULT_URL`].
    fn default() -> Self {
        Self::new(DEFAULT_URL)
    }
}

impl fmt::Debug for NatsConfig {
    // Hand-written so no secret (token, password, seed, password in a URL)
    // can reach a log line through `{:?}`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsConfig")
            .field("servers", &self.redacted_servers())
            .field("name", &self.name)
            .field("auth", &self.auth)
            .field("root_certificates", &self.root_certificates)
            // The private key's path is treated like the creds path: shown
            // as present, not where it is.
            .field(
                "client_certificate",
                &self
                    .client_certificate
                    .as_ref()
                    .map(|(cert, _key)| (cert, "<key path redacted>")),
            )
            .field("require_tls", &self.require_tls)
            .field("reconnect", &self.reconnect)
            .field("retry_initial_connect", &self.retry_initial_connect)
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("publish_timeout", &self.publish_timeout)
            .field("ping_interval", &self.ping_interval)
            .field("client_capacity", &self.client_capacity)
            .field("subscription_capacity", &self.subscription_capacity)
            .finish()
    }
}

impl fmt::Display for NatsConfig {
    /// One line for start-up logs: `nats://a:4222,nats://b:4222 (auth: token, tls)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (auth: {}",
            self.redacted_servers().join(","),
            self.auth.method()
        )?;
        if self.require_tls {
            f.write_str(", tls")?;
        }
        if let Some(name) = &self.name {
            write!(f, ", name: {name}")?;
        }
        f.write_str(")")
    }
}

fn split_list(list: &str) -> Vec<String> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// `nats://user:pass@host` -> `nats://user:<redacted>@host`; a bare token
/// in the user position (`nats://token@host`) is redacted whole.
fn redact_url(url: &str) -> String {
    let (scheme, rest) = match url.find("://") {
        Some(i) => (&url[..i + 3], &url[i + 3..]),
        None => ("", url),
    };
    // The userinfo ends at the last '@' of the authority; a password may
    // itself contain '/', '?' or '#', so look for the '@' first.
    let authority_end = match rest.rfind('@') {
        Some(at) => at + rest[at..].find(['/', '?', '#']).unwrap_or(rest.len() - at),
        None => rest.find('/').unwrap_or(rest.len()),
    };
    match rest[..authority_end].rfind('@') {
        None => url.to_owned(),
        Some(at) => {
            let userinfo = &rest[..at];
            let shown = match userinfo.split_once(':') {
                Some((user, _)) => format!("{user}:<redacted>"),
                None => "<redacted>".to_owned(),
            };
            format!("{scheme}{shown}{}", &rest[at..])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const SECRETS: [&str; 4] = [
        "tok-SECRET-1",
        "pw-SECRET-2",
        "SUSECRETSEED3",
        "urlpw-SECRET-4",
    ];

    fn lookup(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |name| map.get(name).cloned()
    }

    #[test]
    fn debug_and_display_never_show_a_secret() {
        let configs = [
            NatsConfig::new("nats://a:4222").token(SECRETS[0]),
            NatsConfig::new("nats://a:4222").user_password("alice", SECRETS[1]),
            NatsConfig::new("nats://a:4222").nkey(SECRETS[2]),
            NatsConfig::new(format!(
                "nats://bob:{}@a:4222,nats://{}@b:4222",
                SECRETS[3], SECRETS[0]
            )),
        ];
        for config in configs {
            for text in [
                format!("{config:?}"),
                format!("{config:#?}"),
                config.to_string(),
            ] {
                for secret in SECRETS {
                    assert!(!text.contains(secret), "{secret} leaked in {text}");
                }
            }
        }
        let shown = format!(
            "{:?}",
            NatsConfig::new("nats://a").user_password("alice", "x")
        );
        assert!(
            shown.contains("alice"),
            "user names are not secret: {shown}"
        );
    }

    #[test]
    fn urls_keep_host_and_user_but_lose_the_password() {
        assert_eq!(
            redact_url("nats://u:p@h:4222"),
            "nats://u:<redacted>@h:4222"
        );
        assert_eq!(redact_url("nats://tok@h:4222"), "nats://<redacted>@h:4222");
        assert_eq!(redact_url("nats://h:4222"), "nats://h:4222");
        // A password with '/' in it is still redacted.
        let shown = redact_url("nats://svc:ab/cd@h:4222");
        assert!(
            !shown.contains("ab/cd") && !shown.contains("cd@"),
            "{shown}"
        );
        assert_eq!(shown, "nats://svc:<redacted>@h:4222");
        assert_eq!(redact_url("h:4222"), "h:4222");
    }

    #[test]
    fn from_env_reads_every_documented_variable() {
        let config = NatsConfig::from_lookup(lookup(&[
            ("NATS_URL", "nats://a:1, nats://b:2"),
            ("NATS_NAME", "orders"),
            ("NATS_USER", "alice"),
            ("NATS_PASSWORD", "pw"),
            ("NATS_CA", "/ca1.pem,/ca2.pem"),
            ("NATS_CLIENT_CERT", "/c.pem"),
            ("NATS_CLIENT_KEY", "/k.pem"),
        ]))
        .unwrap();
        assert_eq!(config.get_servers(), ["nats://a:1", "nats://b:2"]);
        assert_eq!(config.get_name(), Some("orders"));
        assert_eq!(
            config.get_auth(),
            &Auth::UserPassword {
                user: "alice".into(),
                password: "pw".into()
            }
        );
        assert_eq!(config.get_root_certificates().len(), 2);
        assert!(config.get_client_certificate().is_some());
        assert!(config.get_require_tls());

        let token = NatsConfig::from_lookup(lookup(&[("NATS_TOKEN", "t")])).unwrap();
        assert_eq!(token.get_auth(), &Auth::Token("t".into()));
        assert_eq!(token.get_servers(), [DEFAULT_URL]);
        let seed = NatsConfig::from_lookup(lookup(&[("NATS_NKEY_SEED", "SU")])).unwrap();
        assert_eq!(seed.get_auth(), &Auth::NKey("SU".into()));
        let creds = NatsConfig::from_lookup(lookup(&[("NATS_CREDS", "/x.creds")])).unwrap();
        assert_eq!(creds.get_auth(), &Auth::CredsFile("/x.creds".into()));
        let empty = NatsConfig::from_lookup(lookup(&[("NATS_URL", " ")])).unwrap();
        assert_eq!(empty, NatsConfig::default());
    }

    #[test]
    fn from_env_rejects_contradictions() {
        let cases: [&[(&str, &str)]; 4] = [
            &[("NATS_USER", "alice")],
            &[("NATS_TOKEN", "t"), ("NATS_NKEY_SEED", "SUSECRET")],
            &[("NATS_CLIENT_CERT", "/c.pem")],
            &[("NATS_CLIENT_KEY", "/k.pem")],
        ];
        for vars in cases {
            let err = NatsConfig::from_lookup(lookup(vars)).unwrap_err();
            assert_eq!(err.kind(), crate::ErrorKind::InvalidInput, "{vars:?}");
            assert!(!err.to_string().contains("SUSECRET"), "{err}");
        }
    }

    #[tokio::test]
    async fn a_zero_ping_interval_is_invalid_input_and_capacities_are_capped() {
        let config = NatsConfig::default().ping_interval(Duration::ZERO);
        let err = config.connect_options().await.unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::InvalidInput, "{err}");
        let config = NatsConfig::default()
            .client_capacity(usize::MAX)
            .subscription_capacity(0);
        assert_eq!(
            (
                config.get_client_capacity(),
                config.get_subscription_capacity()
            ),
            (crate::transport::MAX_CAPACITY, 1)
        );
    }

    #[test]
    fn reconnect_delays_start_at_zero_double_and_are_capped() {
        let p = ReconnectPolicy::new()
            .min_delay(Duration::from_millis(100))
            .max_delay(Duration::from_millis(500));
        let delays: Vec<_> = (1..=6).map(|a| p.delay(a).as_millis()).collect();
        assert_eq!(delays, [0, 100, 200, 400, 500, 500]);
        assert_eq!(p.delay(usize::MAX), Duration::from_millis(500));
    }
}

#[cfg(test)]
mod redaction_tests {
    use super::*;

    /// Every auth method, alone and next to TLS settings and a URL with a
    /// password: the method is named, the secret never shown.
    #[test]
    fn no_auth_method_shows_its_secret_in_debug_or_display() {
        let cases: [(Auth, Option<&str>, &str); 5] = [
            (
                Auth::Token("tok-HIDDEN".into()),
                Some("tok-HIDDEN"),
                "token",
            ),
            (
                Auth::UserPassword {
                    user: "alice".into(),
                    password: "pw-HIDDEN".into(),
                },
                Some("pw-HIDDEN"),
                "user/password",
            ),
            (
                Auth::NKey("SUAHIDDENSEEDHIDDENSEED".into()),
                Some("HIDDENSEED"),
                "nkey",
            ),
            (
                Auth::CredsFile("/vault/HIDDEN-team/user.creds".into()),
                Some("HIDDEN-team"),
                "creds file",
            ),
            (Auth::None, None, "none"),
        ];
        for (auth, secret, method) in cases {
            let plain = NatsConfig::new("nats://h:4222").auth(auth.clone());
            let tls = NatsConfig::new("nats://svc:url-HIDDEN@h:4222,tls://h2:4222")
                .auth(auth.clone())
                .root_certificate("/etc/nats/ca.pem")
                .client_certificate("/etc/nats/client.pem", "/etc/nats/client-key.pem");
            for config in [plain, tls] {
                let display = config.to_string();
                assert!(display.contains(&format!("auth: {method}")), "{display}");
                for text in [
                    format!("{auth:?}"),
                    format!("{auth:#?}"),
                    format!("{config:?}"),
                    format!("{config:#?}"),
                    display,
                ] {
                    if let Some(secret) = secret {
                        assert!(!text.contains(secret), "{secret} leaked in {text}");
                    }
                    assert!(
                        !text.contains("url-HIDDEN"),
                        "url password leaked in {text}"
                    );
                }
            }
        }
    }

    #[test]
    fn tls_settings_are_shown_and_marked_in_display() {
        let config = NatsConfig::new("nats://h:4222")
            .root_certificate("/etc/nats/ca.pem")
            .client_certificate("/etc/nats/client.pem", "/etc/nats/client-key.pem");
        assert_eq!(config.to_string(), "nats://h:4222 (auth: none, tls)");
        // A CA path is public information; operators need it to debug a
        // handshake.
        let debug = format!("{config:?}");
        assert!(debug.contains("/etc/nats/ca.pem"), "{debug}");
    }
}

#[cfg(test)]
mod creds_path_tests {
    use super::*;

    #[test]
    fn the_client_key_path_is_not_shown() {
        let config = NatsConfig::new("nats://127.0.0.1:4222")
            .client_certificate("/etc/nats/client.pem", "/secret/team-a/client-key.pem");
        let debug = format!("{config:?} {config:#?} {config}");
        assert!(!debug.contains("team-a"), "{debug}");
        assert!(
            debug.contains("client.pem"),
            "the certificate path stays visible: {debug}"
        );
    }

    #[test]
    fn the_creds_file_path_is_not_shown() {
        let config =
            NatsConfig::new("nats://127.0.0.1:4222").creds_file("/secret/team-a/user.creds");
        for shown in [format!("{config:?}"), format!("{config}")] {
            assert!(!shown.contains("team-a"), "{shown}");
        }
    }
}
