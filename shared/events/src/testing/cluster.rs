//! A guard around a private cluster of `nats-server` processes.
//!
//! Every node listens on `127.0.0.1` only, with its own client, cluster
//! (route) and monitoring port, its own `server_name` and JetStream store
//! directory, all from a configuration file per node. Nodes are killed by
//! pid and the directory removed when the guard drops, even when the test
//! panics.

use std::fmt;
use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::nats_server::binary;

/// How long [`NatsCluster::start`] waits for the nodes to listen and elect
/// a JetStream meta leader.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Attempts at starting a cluster: ports are probed before the servers
/// bind them, so another process may take one in between.
const START_ATTEMPTS: u32 = 3;

struct Node {
    name: String,
    client_port: u16,
    cluster_port: u16,
    http_port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl Node {
    fn config_path(&self) -> PathBuf {
        self.dir.join("server.conf")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("server.log")
    }

    fn spawn(&mut self) -> std::io::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())?;
        let log_err = log.try_clone()?;
        let child = Command::new(binary())
            .arg("-c")
            .arg(self.config_path())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .inspect_err(|e| {
                assert!(
                    e.kind() != std::io::ErrorKind::NotFound,
                    "`{}` was not found on PATH: install it (Debian/Ubuntu: `apt-get install nats-server`) or set NATS_SERVER_BIN",
                    binary()
                );
            })?;
        self.child = Some(child);
        Ok(())
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// The body of `GET path` on the monitoring port, if it answers.
    fn monitor(&self, path: &str) -> Option<String> {
        let mut stream = TcpStream::connect_timeout(
            &([127, 0, 0, 1], self.http_port).into(),
            Duration::from_millis(200),
        )
        .ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        write!(
            stream,
            "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        )
        .ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).ok()?;
        let (head, body) = response.split_once("\r\n\r\n")?;
        let ok = head.starts_with("HTTP/1.") && head.contains(" 200 ");
        ok.then(|| body.to_owned())
    }

    /// The JetStream meta leader this node knows of, if any.
    fn meta_leader(&self) -> Option<String> {
        let body = self.monitor("/jsz")?;
        // {"meta_cluster":{"name":"…","leader":"n1","peer":"…","cluster_size":3}, …}
        let meta = &body[body.find("\"meta_cluster\"")?..];
        let start = meta.find("\"leader\"")? + "\"leader\"".len();
        let rest = meta[start..].trim_start().strip_prefix(':')?.trim_start();
        let name: String = rest
            .strip_prefix('"')?
            .chars()
            .take_while(|c| *c != '"')
            .collect();
        (!name.is_empty()).then_some(name)
    }

    /// How many meta group peers this node, as the meta leader, reports
    /// current (`"current": true` in `/jsz`'s `meta_cluster.replicas`).
    fn current_peers(&self) -> usize {
        let Some(body) = self.monitor("/jsz") else {
            return 0;
        };
        let Some(at) = body.find("\"meta_cluster\"") else {
            return 0;
        };
        body[at..]
            .split("\"current\"")
            .skip(1)
            .filter(|rest| {
                rest.trim_start()
                    .strip_prefix(':')
                    .is_some_and(|v| v.trim_start().starts_with("true"))
            })
            .count()
    }
}

/// A running private cluster of `nats-server` nodes with JetStream, routed
/// on loopback; every node is killed and its files removed on drop.
///
/// ```no_run
/// use events::testing::NatsCluster;
/// let mut cluster = NatsCluster::start(3);
/// println!("connect to {}", cluster.urls().join(","));
/// cluster.kill(0);
/// ```
pub struct NatsCluster {
    name: String,
    dir: PathBuf,
    nodes: Vec<Node>,
}

/// A free loopback port, released for the server to bind.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on 127.0.0.1")
}

impl NatsCluster {
    /// Starts `size` nodes (at least 1; use 3 for replicated streams) and
    /// waits until every node accepts clients and knows the JetStream meta
    /// leader.
    ///
    /// # Panics
    /// If `nats-server` is not installed or the cluster is not ready within
    /// 30 s (after three attempts with fresh ports), with the nodes' logs.
    pub fn start(size: usize) -> NatsCluster {
        assert!(size >= 1, "a cluster needs a node");
        let mut last_error = String::new();
        for _ in 0..START_ATTEMPTS {
            match Self::try_start(size) {
                Ok(cluster) => return cluster,
                Err(error) => last_error = error,
            }
        }
        panic!("the nats-server cluster did not start: {last_error}");
    }

    fn try_start(size: usize) -> Result<NatsCluster, String> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let id = format!(
            "{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let dir = std::env::temp_dir().join(format!("events-nats-cluster-{id}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        // Probe all ports first, holding none, so the nodes' routes can
        // name each other before any starts.
        let mut ports = Vec::with_capacity(3 * size);
        while ports.len() < 3 * size {
            let port = free_port();
            if !ports.contains(&port) {
                ports.push(port);
            }
        }
        let mut cluster = NatsCluster {
            name: format!("events-test-{id}"),
            dir,
            nodes: Vec::with_capacity(size),
        };
        for i in 0..size {
            let node_dir = cluster.dir.join(format!("n{}", i + 1));
            std::fs::create_dir_all(node_dir.join("store")).map_err(|e| e.to_string())?;
            cluster.nodes.push(Node {
                name: format!("n{}", i + 1),
                client_port: ports[3 * i],
                cluster_port: ports[3 * i + 1],
                http_port: ports[3 * i + 2],
                dir: node_dir,
                child: None,
            });
        }
        for i in 0..size {
            let node = &cluster.nodes[i];
            let routes: Vec<String> = cluster
                .nodes
                .iter()
                .filter(|other| other.name != node.name)
                .map(|other| format!("\"nats-route://127.0.0.1:{}\"", other.cluster_port))
                .collect();
            let config = format!(
                "server_name: {name}\n\
                 listen: \"127.0.0.1:{client}\"\n\
                 http: \"127.0.0.1:{http}\"\n\
                 jetstream {{\n  store_dir: {store:?}\n}}\n\
                 cluster {{\n  name: {cluster}\n  listen: \"127.0.0.1:{route}\"\n  routes: [{routes}]\n}}\n",
                name = node.name,
                client = node.client_port,
                http = node.http_port,
                store = node.dir.join("store").display().to_string(),
                cluster = cluster.name,
                route = node.cluster_port,
                routes = routes.join(", "),
            );
            std::fs::write(node.config_path(), config).map_err(|e| e.to_string())?;
        }
        for node in &mut cluster.nodes {
            node.spawn()
                .map_err(|e| format!("spawning {}: {e}", node.name))?;
        }
        // Dropping `cluster` on an error kills what was started.
        cluster.wait_ready()?;
        Ok(cluster)
    }

    /// Waits until every running node listens and names a meta leader.
    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let mut ready = true;
            for node in &mut self.nodes {
                if node.child.is_none() {
                    continue;
                }
                if !node.is_running() {
                    return Err(format!(
                        "{} exited; its log:\n{}",
                        node.name,
                        std::fs::read_to_string(node.log_path()).unwrap_or_default()
                    ));
                }
                let listening = TcpStream::connect_timeout(
                    &([127, 0, 0, 1], node.client_port).into(),
                    Duration::from_millis(100),
                )
                .is_ok();
                ready &= listening && node.meta_leader().is_some();
            }
            // A meta leader that does not see every other running node as
            // current cannot place a replicated stream ("no suitable peers
            // for placement"); a cluster that stays so is started again.
            if ready {
                let running: Vec<&Node> = self.nodes.iter().filter(|n| n.child.is_some()).collect();
                if let Some(first) = running.first() {
                    let leader = first.meta_leader();
                    ready = running
                        .iter()
                        .find(|n| Some(&n.name) == leader.as_ref())
                        .is_some_and(|n| n.current_peers() + 1 >= running.len());
                }
            }
            if ready {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "not ready within {READY_TIMEOUT:?}; logs:\n{}",
                    self.logs()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// How many nodes the cluster has (running or not).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether the cluster has no nodes (never: [`start`](Self::start)
    /// needs one).
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The client URL of node `i`, `nats://127.0.0.1:<port>`.
    pub fn url(&self, i: usize) -> String {
        format!("nats://127.0.0.1:{}", self.nodes[i].client_port)
    }

    /// Every node's client URL, in node order.
    pub fn urls(&self) -> Vec<String> {
        (0..self.nodes.len()).map(|i| self.url(i)).collect()
    }

    /// The client port of node `i`.
    pub fn port(&self, i: usize) -> u16 {
        self.nodes[i].client_port
    }

    /// The `server_name` of node `i` (`n1`, `n2`, …), as clients see it in
    /// the server's INFO.
    pub fn server_name(&self, i: usize) -> &str {
        &self.nodes[i].name
    }

    /// The index of the node named `name`, if there is one.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == name)
    }

    /// The process id of node `i`, while running.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.nodes[i].child.as_ref().map(Child::id)
    }

    /// Whether node `i` is running.
    pub fn is_running(&mut self, i: usize) -> bool {
        self.nodes[i].is_running()
    }

    /// The JetStream meta leader as node `i` sees it (from its monitoring
    /// endpoint), if it knows one.
    pub fn meta_leader(&self, i: usize) -> Option<String> {
        self.nodes[i].meta_leader()
    }

    /// The cluster's directory (a subdirectory per node with its config,
    /// log and store).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Everything node `i` has logged so far.
    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.nodes[i].log_path()).unwrap_or_default()
    }

    /// Every node's log, headed by its name.
    pub fn logs(&self) -> String {
        (0..self.nodes.len())
            .map(|i| format!("--- {} ---\n{}", self.nodes[i].name, self.log(i)))
            .collect()
    }

    /// Kills node `i` with SIGKILL, as a crash would, and waits for it to
    /// exit.
    pub fn kill(&mut self, i: usize) {
        self.nodes[i].kill();
    }

    /// Starts node `i` again with the same ports, store and configuration
    /// (killing it first if it runs) and waits until it is part of the
    /// cluster again (listens and knows the meta leader).
    ///
    /// # Panics
    /// If it does not rejoin within 30 s.
    pub fn restart(&mut self, i: usize) {
        self.nodes[i].kill();
        if let Err(e) = self.nodes[i].spawn() {
            panic!("restarting {}: {e}", self.nodes[i].name);
        }
        if let Err(e) = self.wait_ready() {
            panic!("{} did not rejoin: {e}", self.nodes[i].name);
        }
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            node.kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl fmt::Debug for NatsCluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsCluster")
            .field("name", &self.name)
            .field("urls", &self.urls())
            .field(
                "pids",
                &(0..self.nodes.len())
                    .map(|i| self.pid(i))
                    .collect::<Vec<_>>(),
            )
            .field("dir", &self.dir)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_three_node_cluster_elects_a_meta_leader_survives_a_kill_and_is_cleaned_up_on_drop() {
        let mut cluster = NatsCluster::start(3);
        let dir = cluster.dir().to_owned();
        let ports: Vec<u16> = (0..3).map(|i| cluster.port(i)).collect();
        assert!(!ports.contains(&4222));
        let leader = cluster.meta_leader(0).expect("a meta leader");
        assert!(cluster.index_of(&leader).is_some(), "{leader}");
        assert_eq!(cluster.meta_leader(2).as_deref(), Some(leader.as_str()));
        cluster.kill(0);
        assert!(!cluster.is_running(0));
        assert!(TcpStream::connect(("127.0.0.1", ports[0])).is_err());
        // Two of three keep (or elect) a meta leader.
        let deadline = Instant::now() + READY_TIMEOUT;
        while cluster.meta_leader(1).is_none_or(|l| l == "n1") {
            assert!(Instant::now() < deadline, "{}", cluster.logs());
            std::thread::sleep(Duration::from_millis(50));
        }
        cluster.restart(0);
        assert!(cluster.is_running(0));
        drop(cluster);
        assert!(!dir.exists());
        for port in ports {
            assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
        }
    }
}
