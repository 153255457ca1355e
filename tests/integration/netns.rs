//! Test hosts reached over OpenSSH, on this machine: a fleet of network namespaces, each a
//! host with an address of its own in 198.18.0.0/15 (the range set aside for benchmarking
//! networks, RFC 2544) and a real sshd from Debian's openssh-server, reached from the root
//! namespace over a veth pair, with a client configuration that checks host keys. Faults
//! are injected the way they happen: a cut link, a killed sshd, a host whose processes
//! stop running.
//!
//! What it promises:
//! - Tests running at once never share a name or an address: a fleet holds blocks of the
//!   range, one /24 each, by a lock on a marker file per block (below [`MARKERS`]), and
//!   derives every name from its block.
//! - Nothing addressed to a held block leaves the machine: an `unreachable` route covers
//!   the block, so what is not for a live host's veth (a host being torn down, an address
//!   with no host) fails here instead of following the default route.
//! - Dropping the fleet, also while a test panics, leaves no namespace, veth, route,
//!   process (sshd, sessions, tasks, ssh clients) or marker behind. A test killed before
//!   its Drop runs leaves them to the next fleet that takes its block, which removes them
//!   before using it.
//!
//! All hosts share this machine's file system, users and processes table; only the network
//! is theirs. Each host's sshd runs with its network namespace joined (setns) and nothing
//! else changed.

#![allow(dead_code)]

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::common::{self, proc_status, require_root, run_all, stderr, wait_until};

/// Where the markers of held blocks are: one file per block index, locked (flock) by the
/// process holding the block and naming it. The kernel drops the lock when its holder
/// dies, however it dies, so a block is never lost to a dead holder nor taken from a live
/// one (a pid in the file could be reused; the lock cannot).
pub const MARKERS: &str = "/run/formic-test-nets";

/// 198.18.0.0/15 is 512 blocks of 256 addresses.
pub const BLOCKS: u16 = 512;

/// A host takes a /30 of its block: network, root side, host side, broadcast.
pub const HOSTS_PER_BLOCK: usize = 64;

/// The clients' ConnectTimeout: an unreachable host costs this long.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// How often and how many times a client probes a quiet connection before dropping it.
pub const SERVER_ALIVE_INTERVAL_S: u32 = 1;
pub const SERVER_ALIVE_COUNT_MAX: u32 = 3;

pub const SSHD: &str = "/usr/sbin/sshd";

/// How long an sshd may take to listen (two cores, other tests starting theirs).
const START_LIMIT: Duration = Duration::from_secs(20);

/// How long killed processes may take to be gone, and a link to come up.
const SETTLE_LIMIT: Duration = Duration::from_secs(10);

/// One test host: a network namespace with a veth to the root namespace and an sshd.
pub struct Host {
    /// The host's name, which is also its network namespace's (`formic-BLOCK-SLOT`).
    pub name: String,
    /// The host's address (its side of the veth), where its sshd listens on port 22.
    pub address: Ipv4Addr,
    /// The root namespace's address on the host's veth: where the host's connections
    /// come from.
    pub peer: Ipv4Addr,
    /// The root namespace's end of the veth (the host's end is `eth0` in its namespace).
    pub veth: String,
    /// The host's task-directory root: an empty directory of its own (mode 0711, so tasks
    /// of other users can pass through to their sandboxes).
    pub root: PathBuf,
    /// The sshd's config, host key, authorized_keys, pid file and log.
    dir: PathBuf,
    /// The namespace's inode in nsfs: what /proc/PID/ns/net of its processes names.
    netns_inode: u64,
    sshd: Option<Child>,
}

/// A fleet of [`Host`]s and the client side that reaches them: one client key, a
/// known_hosts file with every host's key, and an ssh_config.
pub struct Fleet {
    pub hosts: Vec<Host>,
    dir: tempfile::TempDir,
    blocks: Vec<Block>,
}

impl Fleet {
    /// `n` hosts, each with its sshd listening, before this returns. Fails (panics) the
    /// calling test unless it runs as root with /usr/sbin/sshd (scripts/test installs it).
    pub fn new(n: usize) -> Fleet {
        require_root("network namespaces and sshd servers");
        assert!(
            Path::new(SSHD).exists(),
            "{SSHD} is missing: the fleet tests need Debian's openssh-server \
             (apt-get install --no-install-recommends openssh-server; scripts/test installs it)"
        );
        // sshd's privilege separation directory; the package's service would make it.
        fs::create_dir_all("/run/sshd").unwrap();
        let dir = tempfile::Builder::new()
            .prefix("formic-fleet-")
            .tempdir()
            .unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o711)).unwrap();
        // Built at once, so that a failure below drops it and its Drop removes what was
        // made: every step after this one leaves things only under its blocks' names.
        let mut fleet = Fleet {
            hosts: Vec::with_capacity(n),
            dir,
            blocks: Vec::new(),
        };
        for _ in 0..n.div_ceil(HOSTS_PER_BLOCK) {
            let block = Block::hold_any();
            block.record_owner(fleet.dir.path());
            fleet.blocks.push(block);
        }
        for sub in ["hosts", "roots", "ctl"] {
            fs::create_dir(fleet.dir.path().join(sub)).unwrap();
        }
        fs::set_permissions(
            fleet.dir.path().join("roots"),
            fs::Permissions::from_mode(0o711),
        )
        .unwrap();
        fs::set_permissions(
            fleet.dir.path().join("ctl"),
            fs::Permissions::from_mode(0o700),
        )
        .unwrap();
        for i in 0..n {
            let block = fleet.blocks[i / HOSTS_PER_BLOCK].index;
            fleet
                .hosts
                .push(Host::plan(fleet.dir.path(), block, i % HOSTS_PER_BLOCK));
        }
        fleet.make_keys();
        fleet.make_network();
        fleet.write_configs();
        fleet.start_servers();
        fleet
    }

    /// What to put in FORMIC_SSH: `ssh -F CONFIG`.
    pub fn ssh_command(&self) -> String {
        format!("ssh -F {}", self.ssh_config().display())
    }

    /// The client's ssh_config (`-F`).
    pub fn ssh_config(&self) -> PathBuf {
        self.dir.path().join("ssh_config")
    }

    /// The client's known_hosts, with every host's key.
    pub fn known_hosts(&self) -> PathBuf {
        self.dir.path().join("known_hosts")
    }

    /// The client's private key.
    pub fn identity(&self) -> PathBuf {
        self.dir.path().join("id_ed25519")
    }

    /// The fleet's directory: client files, control sockets (`ctl/`), the hosts' sshd
    /// files (`hosts/NAME/`) and task-directory roots (`roots/NAME/`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The blocks of 198.18.0.0/15 that the fleet holds, by index.
    pub fn blocks(&self) -> Vec<u16> {
        self.blocks.iter().map(|b| b.index).collect()
    }

    /// `ssh -F CONFIG root@ADDRESS COMMAND`, to run with [`common::run`].
    pub fn ssh(&self, host: &Host, command: &str) -> Command {
        self.ssh_with(host, &[], command)
    }

    /// `ssh -F CONFIG OPTIONS root@ADDRESS COMMAND` (`-o ControlMaster=yes`, ...).
    pub fn ssh_with(&self, host: &Host, options: &[&str], command: &str) -> Command {
        let mut c = Command::new("ssh");
        c.arg("-F")
            .arg(self.ssh_config())
            .args(options)
            .arg(host.ssh_target())
            .arg(command);
        c
    }

    /// Opens a control master to `host` that outlives this call (ControlPersist), so that
    /// later `ssh` to it, with this config, go through its connection; it lives until the
    /// connection dies or the fleet is dropped.
    pub fn warm(&self, host: &Host) {
        let options = ["-o", "ControlMaster=yes", "-o", "ControlPersist=600"];
        let out = common::run(&mut self.ssh_with(host, &options, "true"), b"");
        assert!(
            out.status.success(),
            "opening a control master to {}: {}",
            host.name,
            stderr(&out)
        );
    }

    /// One client key and one host key per host, made by ssh-keygen side by side.
    fn make_keys(&self) {
        let mut keys = vec![(self.identity(), "formic-fleet-client".to_string())];
        keys.extend(self.hosts.iter().map(|h| (h.host_key(), h.name.clone())));
        let runs = keys
            .iter()
            .map(|(path, comment)| {
                let mut c = Command::new("ssh-keygen");
                c.args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
                    .arg(path);
                (c, Vec::new())
            })
            .collect();
        for out in run_all(runs) {
            assert!(out.status.success(), "ssh-keygen: {}", stderr(&out));
        }
    }

    /// Namespaces, veths and addresses: one `ip -batch` in the root namespace, then one in
    /// each host's namespace (side by side).
    fn make_network(&mut self) {
        let mut batch = String::new();
        for h in &self.hosts {
            batch += &format!(
                "netns add {name}\n\
                 link add {veth} type veth peer name eth0 netns {name}\n\
                 addr add {peer}/30 dev {veth}\n\
                 link set {veth} up\n",
                name = h.name,
                veth = h.veth,
                peer = h.peer,
            );
        }
        ip_batch(&[], &batch, false);
        let runs = self
            .hosts
            .iter()
            .map(|h| {
                let mut c = Command::new("ip");
                c.args(["-n", &h.name, "-batch", "-"]);
                let lines = format!(
                    "link set lo up\naddr add {}/30 dev eth0\nlink set eth0 up\n",
                    h.address
                );
                (c, lines.into_bytes())
            })
            .collect();
        for (out, h) in run_all(runs).iter().zip(&self.hosts) {
            assert!(out.status.success(), "ip -n {}: {}", h.name, stderr(out));
        }
        for h in &mut self.hosts {
            h.netns_inode = fs::metadata(format!("/run/netns/{}", h.name))
                .unwrap_or_else(|e| panic!("namespace {}: {e}", h.name))
                .ino();
        }
    }

    fn write_configs(&self) {
        let client_key = fs::read_to_string(self.dir.path().join("id_ed25519.pub")).unwrap();
        let mut known = String::new();
        for h in &self.hosts {
            fs::write(h.dir.join("authorized_keys"), &client_key).unwrap();
            fs::write(h.dir.join("sshd_config"), h.sshd_config()).unwrap();
            known += &format!("{} {}", h.address, h.public_key());
        }
        fs::write(self.known_hosts(), known).unwrap();
        let config = format!(
            "# The client side of a formic test fleet (tests/integration/netns.rs): keys are\n\
             # checked against the fleet's own known_hosts; nothing asks anything.\n\
             Host *\n\
             \x20   User root\n\
             \x20   BatchMode yes\n\
             \x20   IdentityFile {identity}\n\
             \x20   IdentitiesOnly yes\n\
             \x20   UserKnownHostsFile {known}\n\
             \x20   GlobalKnownHostsFile /dev/null\n\
             \x20   StrictHostKeyChecking yes\n\
             \x20   UpdateHostKeys no\n\
             \x20   CheckHostIP no\n\
             \x20   AddressFamily inet\n\
             \x20   ConnectTimeout {timeout}\n\
             \x20   ConnectionAttempts 1\n\
             \x20   ServerAliveInterval {alive}\n\
             \x20   ServerAliveCountMax {count}\n\
             \x20   ControlPath {ctl}/%C\n",
            identity = self.identity().display(),
            known = self.known_hosts().display(),
            timeout = CONNECT_TIMEOUT.as_secs(),
            alive = SERVER_ALIVE_INTERVAL_S,
            count = SERVER_ALIVE_COUNT_MAX,
            ctl = self.dir.path().join("ctl").display(),
        );
        fs::write(self.ssh_config(), config).unwrap();
    }

    fn start_servers(&mut self) {
        for h in &mut self.hosts {
            h.spawn_sshd();
        }
        wait_links_up(&self.hosts);
        for h in &mut self.hosts {
            h.wait_listening();
        }
    }

    /// Kills every process of the fleet and removes its namespaces and veths; the blocks
    /// (route and marker) go when they are dropped after this.
    fn teardown(&mut self) {
        for h in &mut self.hosts {
            if let Some(mut child) = h.sshd.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        // Everything in the fleet's namespaces (sessions, tasks), and every client whose
        // command line names the fleet's directory (ssh with -F, control masters).
        let inodes: HashSet<u64> = self.hosts.iter().map(|h| h.netns_inode).collect();
        let dir = self.dir.path().as_os_str().as_encoded_bytes().to_vec();
        kill_all("the fleet's processes", |pid| {
            netns_of(pid).is_some_and(|i| inodes.contains(&i)) || cmdline_names(pid, &dir)
        });
        for b in &self.blocks {
            b.sweep();
        }
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.teardown();
    }
}

impl Host {
    /// Names, addresses and directories of slot `slot` of block `block`; nothing made yet
    /// but the directories.
    fn plan(fleet_dir: &Path, block: u16, slot: usize) -> Host {
        let name = format!("formic-{block}-{slot}");
        let [a, b, c] = block_prefix(block);
        let dir = fleet_dir.join("hosts").join(&name);
        fs::create_dir(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
        fs::create_dir(dir.join("home")).unwrap();
        let root = fleet_dir.join("roots").join(&name);
        fs::create_dir(&root).unwrap();
        fs::set_permissions(&root, fs::Permissions::from_mode(0o711)).unwrap();
        Host {
            veth: veth_name(block, slot),
            address: Ipv4Addr::new(a, b, c, 4 * slot as u8 + 2),
            peer: Ipv4Addr::new(a, b, c, 4 * slot as u8 + 1),
            name,
            root,
            dir,
            netns_inode: 0,
            sshd: None,
        }
    }

    /// `root@ADDRESS`.
    pub fn ssh_target(&self) -> String {
        format!("root@{}", self.address)
    }

    /// The host's public key line (`ssh-ed25519 AAAA… NAME`).
    pub fn public_key(&self) -> String {
        fs::read_to_string(self.host_key().with_extension("pub")).unwrap()
    }

    /// The pid of the listening sshd, when it runs.
    pub fn sshd_pid(&self) -> Option<u32> {
        self.sshd.as_ref().map(|c| c.id())
    }

    /// What the host's sshd wrote (all its runs), for failure messages.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("sshd.log")).unwrap_or_default()
    }

    /// The sshd's config file.
    pub fn sshd_config_path(&self) -> PathBuf {
        self.dir.join("sshd_config")
    }

    /// Live processes in the host's namespace: its sshd, sessions and what they started.
    pub fn processes(&self) -> Vec<u32> {
        pids()
            .filter(|&p| netns_of(p) == Some(self.netns_inode) && !zombie(p))
            .collect()
    }

    /// Cuts the host off the network: its end of the veth goes down, so what is sent to it
    /// is dropped without an answer (a partition, not a refusal: a client waits for its
    /// ConnectTimeout, an open connection for its ServerAlive probes). The root end stays
    /// up so that its route stays and nothing for the host takes the default route.
    pub fn cut(&self) {
        ip_batch(&["-n", &self.name], "link set eth0 down\n", false);
    }

    /// Undoes [`Host::cut`]; returns when the link carries traffic again. The root end's
    /// neighbour entry for the host went FAILED while no ARP answer came, and the kernel
    /// answers "No route to host" from it for a while after the link is up: it is
    /// flushed, as the link coming back would on a real network (a full test run hit it).
    pub fn heal(&self) {
        ip_batch(&["-n", &self.name], "link set eth0 up\n", false);
        ip_batch(&[], &format!("neigh flush dev {}\n", self.veth), true);
        wait_links_up(std::slice::from_ref(self));
    }

    /// Kills (SIGKILL) the listening sshd, as a crash would: new connections are refused.
    /// Sessions already open (each served by an sshd process of its own) go on, as they
    /// do when a real sshd dies.
    pub fn kill_sshd(&mut self) {
        if let Some(mut child) = self.sshd.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = fs::remove_file(self.dir.join("sshd.pid"));
    }

    /// Starts the sshd again, with the same config and host key; returns when it listens.
    pub fn restart_sshd(&mut self) {
        assert!(self.sshd.is_none(), "{}: sshd is running", self.name);
        self.spawn_sshd();
        self.wait_listening();
    }

    /// Stops (SIGSTOP) every process in the host's namespace: the listening sshd, the sshd
    /// of each open session and whatever the sessions started (tasks too). The network is
    /// untouched, so the kernel still accepts connections, but no process answers: a client
    /// waits for its ConnectTimeout (which covers the SSH handshake), an open connection
    /// for its ServerAlive probes. A hung host.
    pub fn freeze(&self) {
        wait_until(
            &format!("every process of {} stopped", self.name),
            SETTLE_LIMIT,
            || {
                let running: Vec<u32> = self
                    .processes()
                    .into_iter()
                    .filter(|&p| !proc_status(p, "State:").starts_with('T'))
                    .collect();
                for &p in &running {
                    let _ = kill(Pid::from_raw(p as i32), Signal::SIGSTOP);
                }
                running.is_empty().then_some(())
            },
        );
    }

    /// Undoes [`Host::freeze`]: SIGCONT to every process in the host's namespace.
    pub fn thaw(&self) {
        for p in self.processes() {
            let _ = kill(Pid::from_raw(p as i32), Signal::SIGCONT);
        }
    }

    fn host_key(&self) -> PathBuf {
        self.dir.join("ssh_host_ed25519_key")
    }

    fn sshd_config(&self) -> String {
        let dir = self.dir.display();
        format!(
            "# formic test host {name}: a real sshd in network namespace {name}\n\
             # (tests/integration/netns.rs).\n\
             ListenAddress {address}:22\n\
             HostKey {dir}/ssh_host_ed25519_key\n\
             PidFile {dir}/sshd.pid\n\
             AuthorizedKeysFile {dir}/authorized_keys\n\
             PermitRootLogin prohibit-password\n\
             PubkeyAuthentication yes\n\
             PasswordAuthentication no\n\
             KbdInteractiveAuthentication no\n\
             UsePAM no\n\
             # The fleet lives below /tmp (mode 1777), which StrictModes refuses.\n\
             StrictModes no\n\
             MaxSessions 10\n\
             # A scheduler opens connections to many hosts at once, and may come back often.\n\
             MaxStartups 100\n\
             # A home of the host's own: hosts share this machine's /root, and its .bashrc\n\
             # (read by bash for every command over ssh) is no part of a host.\n\
             SetEnv HOME={dir}/home\n\
             PrintMotd no\n\
             PrintLastLog no\n\
             X11Forwarding no\n\
             Subsystem sftp internal-sftp\n",
            name = self.name,
            address = self.address,
        )
    }

    /// Starts `sshd -D -e -f CONFIG` in the host's namespace, its output appended to the
    /// host's log.
    fn spawn_sshd(&mut self) {
        let _ = fs::remove_file(self.dir.join("sshd.pid"));
        let netns = File::open(format!("/run/netns/{}", self.name))
            .unwrap_or_else(|e| panic!("namespace {}: {e}", self.name));
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("sshd.log"))
            .unwrap();
        let mut cmd = Command::new(SSHD);
        cmd.args(["-D", "-e", "-f"])
            .arg(self.sshd_config_path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        let fd = netns.as_raw_fd();
        // SAFETY: setns is a plain system call, async-signal-safe, on a descriptor that
        // `netns` keeps open until spawn has returned; it changes only the child.
        unsafe {
            cmd.pre_exec(move || {
                if nix::libc::setns(fd, nix::libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting sshd for {}: {e}", self.name));
        drop(netns);
        self.sshd = Some(child);
    }

    /// Waits until the sshd listens: it writes its pid file once its socket is bound.
    fn wait_listening(&mut self) {
        let pidfile = self.dir.join("sshd.pid");
        let start = Instant::now();
        while !pidfile.exists() {
            let child = self.sshd.as_mut().expect("sshd started");
            if let Ok(Some(status)) = child.try_wait() {
                self.sshd = None;
                panic!(
                    "sshd of {} exited with {status} before listening: {}",
                    self.name,
                    self.log()
                );
            }
            assert!(
                start.elapsed() < START_LIMIT,
                "sshd of {} did not listen within {START_LIMIT:?}: {}",
                self.name,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// A held block of 198.18.0.0/15: a /24 whose names (`formic-INDEX-*` namespaces,
/// `fvethINDEX-*` veths) and addresses belong to the holder, covered by an `unreachable`
/// route while held. Dropping it removes the route and the marker.
pub struct Block {
    pub index: u16,
    marker: PathBuf,
    /// Holds the lock that makes the block ours; closed (unlocked) after the marker is
    /// removed.
    file: File,
}

impl Block {
    /// The first block that no live process holds. Leftovers of a dead holder are removed
    /// first.
    pub fn hold_any() -> Block {
        (0..BLOCKS)
            .find_map(Block::take)
            .expect("every block of 198.18.0.0/15 is held by a live process")
    }

    /// Block `index`, unless a live process holds it. What a dead holder left under the
    /// block's names (processes, namespaces, veths, its fleet directory) is removed first.
    pub fn take(index: u16) -> Option<Block> {
        assert!(index < BLOCKS);
        fs::create_dir_all(MARKERS).unwrap();
        let marker = PathBuf::from(format!("{MARKERS}/{index}"));
        let file = loop {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&marker)
                .unwrap_or_else(|e| panic!("{}: {e}", marker.display()));
            match file.try_lock() {
                Ok(()) => {}
                Err(fs::TryLockError::WouldBlock) => return None,
                Err(fs::TryLockError::Error(e)) => panic!("locking {}: {e}", marker.display()),
            }
            // A holder removes its marker before unlocking it: we may have locked a file
            // that nobody else sees any more. Only the file at the path counts.
            let same =
                fs::metadata(&marker).is_ok_and(|m| m.ino() == file.metadata().unwrap().ino());
            if same {
                break file;
            }
        };
        let block = Block {
            index,
            marker,
            file,
        };
        let previous = fs::read_to_string(&block.marker).unwrap_or_default();
        if let Some(dir) = previous.split_whitespace().nth(1) {
            block.remove_dead_fleet(Path::new(dir));
        }
        block.sweep();
        block.write_marker("");
        ip_batch(
            &[],
            &format!("route replace unreachable {}\n", block.network()),
            false,
        );
        Some(block)
    }

    /// `198.18.X.0/24`.
    pub fn network(&self) -> String {
        let [a, b, c] = block_prefix(self.index);
        format!("{a}.{b}.{c}.0/24")
    }

    pub fn marker(&self) -> &Path {
        &self.marker
    }

    /// Names the fleet directory in the marker, so that a later holder can remove it when
    /// this process dies without doing so.
    fn record_owner(&self, dir: &Path) {
        self.write_marker(&dir.display().to_string());
    }

    fn write_marker(&self, dir: &str) {
        let mut f = &self.file;
        f.set_len(0).unwrap();
        use std::io::Seek;
        f.seek(std::io::SeekFrom::Start(0)).unwrap();
        writeln!(f, "{} {dir}", std::process::id()).unwrap();
    }

    /// Kills a dead holder's clients (they name its directory) and removes the directory.
    fn remove_dead_fleet(&self, dir: &Path) {
        let tmp = std::env::temp_dir();
        let ours = dir.starts_with(&tmp)
            && dir
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("formic-fleet-"));
        if !ours {
            return;
        }
        let bytes = dir.as_os_str().as_encoded_bytes().to_vec();
        kill_all("a dead fleet's clients", |pid| cmdline_names(pid, &bytes));
        let _ = fs::remove_dir_all(dir);
    }

    /// Removes everything under the block's names: kills the processes in its namespaces,
    /// aborts the root namespace's connections to it, and deletes its veths and
    /// namespaces. Spawns nothing when there is nothing to remove.
    fn sweep(&self) {
        let ns_prefix = format!("formic-{}-", self.index);
        let veth_prefix = format!("fveth{}-", self.index);
        let namespaces = names_in("/run/netns", &ns_prefix);
        let inodes: HashSet<u64> = namespaces
            .iter()
            .filter_map(|n| fs::metadata(format!("/run/netns/{n}")).ok())
            .map(|m| m.ino())
            .collect();
        if !inodes.is_empty() {
            kill_all("processes in the fleet's namespaces", |pid| {
                netns_of(pid).is_some_and(|i| inodes.contains(&i))
            });
        }
        self.abort_connections();
        // A namespace with no process left is destroyed with its end of each veth, and
        // so the pair, once its name is gone: in the background, many at once, where
        // `link del` waits for each (50 hosts: 30 ms against 900 ms).
        if !namespaces.is_empty() {
            let batch: String = namespaces
                .iter()
                .map(|n| format!("netns del {n}\n"))
                .collect();
            ip_batch(&["-force"], &batch, true);
        }
        let start = Instant::now();
        while !names_in("/sys/class/net", &veth_prefix).is_empty()
            && start.elapsed() < Duration::from_secs(2)
        {
            std::thread::sleep(Duration::from_millis(5));
        }
        // What a namespace that lives on still holds (a process that would not die).
        let veths = names_in("/sys/class/net", &veth_prefix);
        if !veths.is_empty() {
            let batch: String = veths.iter().map(|v| format!("link del {v}\n")).collect();
            ip_batch(&["-force"], &batch, true);
        }
    }

    /// Sockets of the root namespace to the block that may still send (a connection to a
    /// host that was cut, closed by a killed client, retransmits its FIN): aborted with
    /// `ss -K` while the veth and the route still hold them on this machine. TIME_WAIT
    /// sockets send nothing of their own and are left to expire.
    fn abort_connections(&self) {
        if self.live_connections() == 0 {
            return;
        }
        let _ = Command::new("ss")
            .args(["-K", "-t", "dst", &self.network()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }

    /// Connections of the root namespace to the block, but those in TIME_WAIT or CLOSE.
    pub fn live_connections(&self) -> usize {
        live_connections(self.index)
    }
}

/// Connections of the root namespace to block `index`, but those in TIME_WAIT or CLOSE
/// (which send nothing of their own).
pub fn live_connections(index: u16) -> usize {
    let [a, b, c] = block_prefix(index);
    let tcp = fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    tcp.lines()
        .skip(1)
        .filter(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(remote), Some(state)) = (fields.get(2), fields.get(3)) else {
                return false;
            };
            let addr = remote
                .split(':')
                .next()
                .and_then(|h| u32::from_str_radix(h, 16).ok())
                // /proc/net/tcp prints the address as the number its network-order
                // bytes make in this machine's order.
                .map(|v| v.to_ne_bytes());
            matches!(addr, Some([x, y, z, _]) if [x, y, z] == [a, b, c])
                && !matches!(*state, "06" | "07")
        })
        .count()
}

impl Drop for Block {
    fn drop(&mut self) {
        // Without the route, a socket that still sends would follow the default route.
        if self.live_connections() == 0 {
            ip_batch(
                &[],
                &format!("route del unreachable {}\n", self.network()),
                true,
            );
        } else {
            eprintln!(
                "netns: connections to {} remain; its unreachable route stays until the \
                 block is taken again",
                self.network()
            );
        }
        let _ = fs::remove_file(&self.marker);
        // `file` closes after this, dropping the lock: only once the marker is gone.
    }
}

/// Waits until both ends of every host's veth are up. The kernel turns a carrier on in the
/// background; until then packets are dropped, and a client right after a heal would lose
/// its first SYN.
fn wait_links_up(hosts: &[Host]) {
    let mut unconfirmed: Vec<&Host> = hosts.iter().collect();
    wait_until("the hosts' links up on both ends", SETTLE_LIMIT, || {
        let root_ends_up = unconfirmed.iter().all(|h| {
            let operstate = format!("/sys/class/net/{}/operstate", h.veth);
            fs::read_to_string(operstate).is_ok_and(|s| s.trim() == "up")
        });
        if !root_ends_up {
            return None;
        }
        let runs = unconfirmed
            .iter()
            .map(|h| {
                let mut c = Command::new("ip");
                c.args(["-n", &h.name, "-o", "link", "show", "eth0"]);
                (c, Vec::new())
            })
            .collect();
        let outs = run_all(runs);
        let mut still = Vec::new();
        for (out, h) in outs.iter().zip(&unconfirmed) {
            if !String::from_utf8_lossy(&out.stdout).contains("state UP") {
                still.push(*h);
            }
        }
        unconfirmed = still;
        unconfirmed.is_empty().then_some(())
    });
}

/// The first three bytes of block `index`'s addresses.
fn block_prefix(index: u16) -> [u8; 3] {
    [198, 18 + (index >> 8) as u8, (index & 0xff) as u8]
}

/// The root namespace's end of slot `slot`'s veth: at most 11 bytes (IFNAMSIZ is 16).
fn veth_name(block: u16, slot: usize) -> String {
    format!("fveth{block}-{slot}")
}

/// Runs `ip OPTIONS -batch -` with `lines` on its input; fails the test when it fails,
/// unless `tolerant` (teardown: report and go on).
fn ip_batch(options: &[&str], lines: &str, tolerant: bool) {
    let mut cmd = Command::new("ip");
    cmd.args(options).args(["-batch", "-"]);
    let out = common::run(&mut cmd, lines.as_bytes());
    if !out.status.success() {
        let msg = format!("ip {options:?} -batch:\n{lines}{}", stderr(&out));
        if tolerant {
            eprintln!("netns: {msg}");
        } else {
            panic!("{msg}");
        }
    }
}

/// Entries of `dir` whose names start with `prefix`.
fn names_in(dir: &str, prefix: &str) -> Vec<String> {
    fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with(prefix))
        .collect()
}

/// Every pid in /proc but ours.
fn pids() -> impl Iterator<Item = u32> {
    let me = std::process::id();
    fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(move |&p| p != me)
}

fn zombie(pid: u32) -> bool {
    proc_status(pid, "State:").starts_with('Z')
}

/// The inode of a process's network namespace (`net:[INODE]`), unless it is gone.
pub fn netns_of(pid: u32) -> Option<u64> {
    let link = fs::read_link(format!("/proc/{pid}/ns/net")).ok()?;
    link.to_str()?
        .strip_prefix("net:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// Whether a process's command line contains `needle`.
fn cmdline_names(pid: u32, needle: &[u8]) -> bool {
    fs::read(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|c| c.windows(needle.len()).any(|w| w == needle))
}

/// SIGKILLs every live process that `matches`, again until none is left (one may fork
/// while we look); reports, but does not fail, when some outlive [`SETTLE_LIMIT`].
fn kill_all(what: &str, mut matches: impl FnMut(u32) -> bool) {
    let start = Instant::now();
    loop {
        let live: Vec<u32> = pids().filter(|&p| matches(p) && !zombie(p)).collect();
        if live.is_empty() {
            return;
        }
        if start.elapsed() > SETTLE_LIMIT {
            eprintln!("netns: {what} still alive after {SETTLE_LIMIT:?}: {live:?}");
            return;
        }
        for p in live {
            let _ = kill(Pid::from_raw(p as i32), Signal::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}
