//! A guard around a private `nats-server` process.
//!
//! Every test gets its own server on a free `127.0.0.1` port, with its own
//! store directory, so tests never share state (or the machine's server on
//! 4222) and can kill and restart their server at will. The process is
//! killed by pid and its directory removed when the guard drops, even when
//! the test panics.

use std::fmt;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// How long [`NatsServer::start`] waits for the port to accept connections.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// The binary, overridable for machines where it is not on `PATH`.
pub(crate) fn binary() -> String {
    std::env::var("NATS_SERVER_BIN").unwrap_or_else(|_| "nats-server".to_owned())
}

/// Settings for a [`NatsServer`], built with owned-`self` setters.
///
/// ```no_run
/// use events::testing::NatsServer;
/// let server = NatsServer::builder().jetstream().arg("--user").arg("alice").arg("--pass").arg("s3cret").start();
/// println!("{}", server.url());
/// ```
#[derive(Debug, Clone, Default)]
pub struct NatsServerBuilder {
    jetstream: bool,
    args: Vec<String>,
    config: Option<String>,
}

impl NatsServerBuilder {
    /// Enables JetStream with a store directory of the server's own.
    pub fn jetstream(mut self) -> Self {
        self.jetstream = true;
        self
    }

    /// Appends one command-line argument (e.g. `--auth`, then the token).
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// A configuration file's contents (accounts, users, TLS). It is written
    /// into the server's directory and passed with `-c`; the port, host and
    /// store directory given on the command line take precedence.
    pub fn config(mut self, contents: impl Into<String>) -> Self {
        self.config = Some(contents.into());
        self
    }

    /// Starts the server and waits until it accepts connections.
    ///
    /// # Panics
    /// If `nats-server` is not installed, cannot start, or does not accept
    /// connections within 10 s. A test harness should fail loudly.
    pub fn start(self) -> NatsServer {
        NatsServer::start_with(self)
    }
}

/// A running private `nats-server`; killed and cleaned up on drop.
pub struct NatsServer {
    settings: NatsServerBuilder,
    /// Chosen by the server on first start (`-p -1`), reused on restart.
    port: Option<u16>,
    dir: PathBuf,
    child: Option<Child>,
}

impl NatsServer {
    /// Settings for a new server.
    pub fn builder() -> NatsServerBuilder {
        NatsServerBuilder::default()
    }

    /// A core NATS server (no JetStream) on a free port.
    pub fn core() -> NatsServer {
        Self::builder().start()
    }

    /// A server with JetStream and its own store directory.
    pub fn with_jetstream() -> NatsServer {
        Self::builder().jetstream().start()
    }

    fn start_with(settings: NatsServerBuilder) -> NatsServer {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "events-nats-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        // A leftover from a crashed run with the same pid is stale.
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the server's directory");
        let mut server = NatsServer {
            settings,
            port: None,
            dir,
            child: None,
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let mut cmd = Command::new(binary());
        if let Some(config) = &self.settings.config {
            let path = self.dir.join("server.conf");
            std::fs::write(&path, config).expect("write the server's config file");
            cmd.arg("-c").arg(path);
        }
        // The first start lets the server pick a free port itself and
        // report it in a ports file: probing for a free port and passing it
        // on races with other tests doing the same, and a test could end up
        // talking to another test's server. A restart reuses the port.
        let ports_dir = self.dir.join("ports");
        let _ = std::fs::remove_dir_all(&ports_dir);
        std::fs::create_dir_all(&ports_dir).expect("create the ports directory");
        let port = self.port.map_or_else(|| "-1".to_owned(), |p| p.to_string());
        cmd.args(["-a", "127.0.0.1", "-p", &port]);
        cmd.arg("--ports_file_dir").arg(&ports_dir);
        if self.settings.jetstream {
            cmd.arg("-js").arg("-sd").arg(self.dir.join("store"));
        }
        cmd.args(&self.settings.args);
        // The log goes to a file in the server's directory, so a failing
        // test can show it without flooding every passing one.
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("open the server's log file");
        let log_err = log.try_clone().expect("clone the log file handle");
        cmd.stdin(Stdio::null()).stdout(log).stderr(log_err);
        let child = match cmd.spawn() {
            Ok(child) => child,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
                "`{}` was not found on PATH: install it (Debian/Ubuntu: `apt-get install nats-server`; \
                 or download from https://github.com/nats-io/nats-server/releases) or set NATS_SERVER_BIN",
                binary()
            ),
            Err(e) => panic!("could not start `{}`: {e}", binary()),
        };
        self.child = Some(child);
        self.wait_ready();
    }

    /// Waits for the server's ports file, which it writes once it listens.
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    panic!(
                        "nats-server exited with {status} before accepting connections; its log:\n{}",
                        self.log()
                    );
                }
            }
            if let Some(port) = self.reported_port() {
                assert!(
                    self.port.is_none_or(|p| p == port),
                    "nats-server restarted on port {port} instead of {:?}",
                    self.port
                );
                self.port = Some(port);
                let addr = SocketAddr::from(([127, 0, 0, 1], port));
                if TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
                    return;
                }
            }
            if Instant::now() >= deadline {
                self.kill();
                panic!(
                    "nats-server did not accept connections within {READY_TIMEOUT:?}; its log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The client port from the ports file of the running process.
    fn reported_port(&self) -> Option<u16> {
        let pid = self.child.as_ref()?.id();
        let entries = std::fs::read_dir(self.dir.join("ports")).ok()?;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.ends_with(&format!("_{pid}.ports")) {
                continue;
            }
            // {"nats":["nats://127.0.0.1:PORT"],...}
            let text = std::fs::read_to_string(entry.path()).ok()?;
            let start = text.find("127.0.0.1:")? + "127.0.0.1:".len();
            let digits: String = text[start..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            return digits.parse().ok();
        }
        None
    }

    /// The URL clients connect to, `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port())
    }

    /// The port the server listens on; it stays the same across restarts.
    pub fn port(&self) -> u16 {
        self.port
            .expect("the server reported its port when it started")
    }

    /// The server's own directory (config, log, JetStream store).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process is running.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Everything the server has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("server.log")
    }

    /// Kills the server with SIGKILL, as a crash would, and waits for it to
    /// exit. Nothing is flushed; the store keeps what reached the disk.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the server with SIGTERM (a clean shutdown) and waits up to
    /// 10 s for it to exit, then kills it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let terminated = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            let deadline = Instant::now() + Duration::from_secs(10);
            while terminated && Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port, with the same store and
    /// settings, after [`kill`](Self::kill) or [`stop`](Self::stop) (or
    /// kills it first if it is still running).
    ///
    /// # Panics
    /// As [`NatsServerBuilder::start`]; also if the port was taken by
    /// another process in the meantime.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl fmt::Debug for NatsServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsServer")
            .field("url", &self.url())
            .field("pid", &self.pid())
            .field("jetstream", &self.settings.jetstream)
            .field("dir", &self.dir)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_starts_restarts_on_the_same_port_and_is_cleaned_up_on_drop() {
        let mut server = NatsServer::with_jetstream();
        let port = server.port();
        let dir = server.dir().to_owned();
        assert_ne!(port, 4222);
        assert!(server.is_running());
        server.kill();
        assert!(!server.is_running());
        assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
        server.restart();
        assert!(server.is_running());
        assert_eq!(server.port(), port);
        assert!(TcpStream::connect(("127.0.0.1", port)).is_ok());
        server.stop();
        assert!(!server.is_running());
        server.restart();
        drop(server);
        assert!(!dir.exists());
        assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
    }
}
