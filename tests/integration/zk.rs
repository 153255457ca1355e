//! A real ZooKeeper for the tests: a standalone server from Debian's `zookeeper` package,
//! on 127.0.0.1 with a port and a data directory of its own, started per test. It can be
//! stopped (the JVM killed) and started again on the same port and data, as an outage
//! would. Dropping it kills the server. Without the package the test fails and says so.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use zookeeper_client::Client;

pub const JAR: &str = "/usr/share/java/zookeeper.jar";
pub const CONF: &str = "/etc/zookeeper/conf";
pub const CLI: &str = "/usr/share/zookeeper/bin/zkCli.sh";

/// How long a server may take to answer `ruok` after its JVM starts (two cores, several
/// tests starting JVMs at once).
const START_LIMIT: Duration = Duration::from_secs(60);

pub struct Zk {
    dir: tempfile::TempDir,
    port: u16,
    server: Option<Child>,
}

impl Zk {
    /// A new server on a free port, answering before this returns.
    pub fn start() -> Zk {
        for path in [JAR, CLI] {
            assert!(
                Path::new(path).exists(),
                "{path} is missing: these tests need Debian's zookeeper package \
                 (apt-get install --no-install-recommends zookeeper; scripts/test installs it)"
            );
        }
        let dir = tempfile::Builder::new()
            .prefix("formic-zk-")
            .tempdir()
            .unwrap();
        let port = free_port();
        std::fs::create_dir(dir.path().join("data")).unwrap();
        let cfg = format!(
            "tickTime=200\n\
             initLimit=10\n\
             syncLimit=5\n\
             dataDir={data}\n\
             clientPort={port}\n\
             clientPortAddress=127.0.0.1\n\
             minSessionTimeout=400\n\
             maxSessionTimeout=60000\n\
             maxClientCnxns=0\n\
             admin.enableServer=false\n\
             4lw.commands.whitelist=*\n",
            data = dir.path().join("data").display()
        );
        std::fs::write(dir.path().join("zoo.cfg"), cfg).unwrap();
        let mut zk = Zk {
            dir,
            port,
            server: None,
        };
        zk.restart();
        zk
    }

    /// `127.0.0.1:PORT`, for --zk.
    pub fn connect(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Kills the server (SIGKILL: an outage, not a shutdown) and waits until the port no
    /// longer answers.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.server.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while ruok(self.port) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(
            !ruok(self.port),
            "ZooKeeper still answers after being killed"
        );
    }

    /// Starts the server (again) on the same port and data directory; returns when it
    /// answers `ruok`.
    pub fn restart(&mut self) {
        assert!(self.server.is_none(), "the server is running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("server.log"))
            .unwrap();
        let mut cmd = Command::new("java");
        cmd.arg("-cp")
            .arg(format!("{CONF}:{JAR}"))
            .arg("-Xmx256m")
            .arg("-Dzookeeper.root.logger=WARN,CONSOLE")
            .arg("-Dzookeeper.log.dir=".to_string() + &self.dir.path().display().to_string())
            .arg("org.apache.zookeeper.server.quorum.QuorumPeerMain")
            .arg(self.dir.path().join("zoo.cfg"))
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting ZooKeeper (java): {e}"));
        let start = Instant::now();
        loop {
            if ruok(self.port) && serving(self.port) {
                break;
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "ZooKeeper exited with {status} before answering on port {}: {}",
                    self.port,
                    self.log()
                );
            }
            if start.elapsed() > START_LIMIT {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "ZooKeeper did not answer ruok on port {} within {START_LIMIT:?}: {}",
                    self.port,
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.server = Some(child);
    }

    pub fn running(&self) -> bool {
        self.server.is_some()
    }

    /// The server's output so far, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    pub fn dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    /// A four-letter-word command's answer (`ruok`, `dump`, `cons`...).
    pub fn four(&self, word: &str) -> String {
        four_letter(self.port, word).unwrap_or_default()
    }

    /// ZooKeeper's own command line client, one command: `zkCli.sh -server HOST:PORT ARGS`.
    /// zkCli runs its command without waiting for its session, so a command that lost the
    /// race with the connection (ConnectionLoss) is run again, a few times at most.
    pub fn cli(&self, args: &[&str]) -> Output {
        let mut tries = 0;
        loop {
            let mut cmd = Command::new(CLI);
            cmd.arg("-server").arg(self.connect()).args(args);
            // zkCli's logging goes to the console or nowhere; keep its files out of /var/log.
            cmd.env("ZOO_LOG_DIR", self.dir.path())
                .env("CLIENT_JVMFLAGS", "-Xmx128m");
            let out = crate::common::run(&mut cmd, b"");
            tries += 1;
            let said = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
            if tries == 5 || !said.contains("ConnectionLoss") {
                return out;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// A client of our own for checking what the server holds (a session per call).
    pub fn client(&self) -> Client {
        futures::executor::block_on(
            Client::connector()
                .with_session_timeout(Duration::from_secs(5))
                .connect(&self.connect()),
        )
        .unwrap_or_else(|e| panic!("connecting to ZooKeeper at {}: {e}", self.connect()))
    }

    /// The `member_` children of `path` with their data, sorted by name; empty when the
    /// path does not exist.
    pub fn members(&self, path: &str) -> Vec<(String, Vec<u8>)> {
        let client = self.client();
        let children = match futures::executor::block_on(client.list_children(path)) {
            Ok(c) => c,
            Err(zookeeper_client::Error::NoNode) => return Vec::new(),
            Err(e) => panic!("listing {path}: {e}"),
        };
        let mut out = Vec::new();
        for name in children.into_iter().filter(|c| c.starts_with("member_")) {
            match futures::executor::block_on(client.get_data(&format!("{path}/{name}"))) {
                Ok((data, _)) => out.push((name, data)),
                Err(zookeeper_client::Error::NoNode) => {}
                Err(e) => panic!("reading {path}/{name}: {e}"),
            }
        }
        out.sort();
        out
    }
}

impl Drop for Zk {
    fn drop(&mut self) {
        if let Some(mut child) = self.server.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A port nobody listens on now, from the kernel's ephemeral range, outside the ranges
/// the tests give their hosts (46000-46999).
fn free_port() -> u16 {
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if !(46000..47000).contains(&port) {
            return port;
        }
    }
}

fn four_letter(port: u16, word: &str) -> Option<String> {
    let addr = std::net::SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, port));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(word.as_bytes()).ok()?;
    let mut answer = String::new();
    s.read_to_string(&mut answer).ok()?;
    Some(answer)
}

fn ruok(port: u16) -> bool {
    four_letter(port, "ruok").as_deref() == Some("imok")
}

/// Whether the server serves clients: `ruok` answers as soon as the port is open, while
/// sessions are refused until the database is loaded; `srvr` tells the two apart.
fn serving(port: u16) -> bool {
    four_letter(port, "srvr").is_some_and(|a| a.contains("Mode: standalone"))
}

#[test]
fn a_server_starts_answers_stops_and_restarts_with_its_data() {
    let mut zk = Zk::start();
    let out = zk.cli(&["create", "/kept", "hello"]);
    assert_eq!(
        crate::common::code(&out),
        0,
        "{}{}",
        crate::common::stdout(&out),
        crate::common::stderr(&out)
    );
    zk.stop();
    zk.restart();
    let out = zk.cli(&["get", "/kept"]);
    assert!(
        crate::common::stdout(&out).lines().any(|l| l == "hello"),
        "{}",
        crate::common::stdout(&out)
    );
}
