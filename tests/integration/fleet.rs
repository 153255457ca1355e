//! The test fleet itself (netns.rs): its hosts answer ssh with checked keys from their own
//! namespaces, its faults look to a client as they would on a real network, and nothing of
//! it outlives the test, also when the test panics or is killed.

use std::io::BufRead;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{self, code, run, stderr, stdout, wait_until};
use crate::netns::{self, Block, Fleet, CONNECT_TIMEOUT};

/// Slack for a loaded two-core machine on top of a timeout that a client should keep.
const MARGIN: Duration = Duration::from_secs(3);

/// Runs `ssh HOST COMMAND` with the fleet's config; its output and how long it took.
fn ssh(fleet: &Fleet, host: usize, command: &str) -> (std::process::Output, Duration) {
    let start = Instant::now();
    let out = run(&mut fleet.ssh(&fleet.hosts[host], command), b"");
    (out, start.elapsed())
}

fn assert_answers(fleet: &Fleet, host: usize) {
    let h = &fleet.hosts[host];
    let (out, _) = ssh(fleet, host, "true");
    assert_eq!(
        code(&out),
        0,
        "ssh {} true: {}\nsshd log: {}",
        h.ssh_target(),
        stderr(&out),
        h.log()
    );
}

/// `ssh HOST true` fails (255) after the client's ConnectTimeout: silence, not a refusal.
fn assert_times_out(fleet: &Fleet, host: usize) {
    let (out, took) = ssh(fleet, host, "true");
    assert_eq!(code(&out), 255, "{}", stderr(&out));
    assert!(took < CONNECT_TIMEOUT + MARGIN, "took {took:?}");
    assert!(
        took >= CONNECT_TIMEOUT - Duration::from_millis(100),
        "took {took:?}"
    );
    assert!(stderr(&out).contains("timed out"), "{}", stderr(&out));
}

/// Starts `ssh HOST COMMAND` in the background, COMMAND a shell line that runs `sleep`;
/// returns once the session is open, that is, once `sleep` runs in the host's namespace.
fn open_session(fleet: &Fleet, host: usize, command: &str, output: Stdio) -> Child {
    let child = fleet
        .ssh(&fleet.hosts[host], command)
        .stdin(Stdio::null())
        .stdout(output)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until("the session's sleep", Duration::from_secs(20), || {
        sleeping(fleet, host).then_some(())
    });
    child
}

/// Whether a `sleep` runs on the host.
fn sleeping(fleet: &Fleet, host: usize) -> bool {
    fleet.hosts[host]
        .processes()
        .into_iter()
        .any(|p| common::proc_status(p, "Name:") == "sleep")
}

fn root_addresses() -> String {
    let out = run(Command::new("ip").args(["-4", "-o", "addr"]), b"");
    stdout(&out)
}

#[test]
fn four_hosts_answer_ssh_from_namespaces_of_their_own() {
    let fleet = Fleet::new(4);
    let ours = netns::netns_of(std::process::id()).unwrap();
    let mut keys = Vec::new();
    for (i, h) in fleet.hosts.iter().enumerate() {
        // The client really runs with the fleet's settings: no question, keys checked
        // against the fleet's known_hosts and nothing else.
        let out = run(
            Command::new("ssh")
                .args(["-G", "-F"])
                .arg(fleet.ssh_config())
                .arg(h.ssh_target()),
            b"",
        );
        let effective = stdout(&out);
        for line in [
            "batchmode yes".to_string(),
            "stricthostkeychecking true".to_string(),
            format!("userknownhostsfile {}", fleet.known_hosts().display()),
            format!("connecttimeout {}", CONNECT_TIMEOUT.as_secs()),
        ] {
            assert!(
                effective.lines().any(|l| l == line),
                "ssh -G lacks {line:?}: {effective}"
            );
        }
        // The session's shell runs in the host's namespace, which has the host's address.
        let (out, _) = ssh(
            &fleet,
            i,
            "readlink /proc/self/ns/net; ip -4 -o addr show dev eth0",
        );
        assert_eq!(code(&out), 0, "{}: {}\n{}", h.name, stderr(&out), h.log());
        assert!(
            !stderr(&out).contains("Permanently added"),
            "a host key was learnt, not checked: {}",
            stderr(&out)
        );
        let said = stdout(&out);
        let inode = std::fs::metadata(format!("/run/netns/{}", h.name))
            .unwrap()
            .ino();
        assert_eq!(said.lines().next(), Some(format!("net:[{inode}]").as_str()));
        assert_ne!(inode, ours, "{} shares the test's namespace", h.name);
        assert!(said.contains(&format!("inet {}/30", h.address)), "{said}");
        assert_eq!(netns::netns_of(h.sshd_pid().unwrap()), Some(inode));
        // Seen from outside: the address is the namespace's, not the root namespace's,
        // whose side of the veth has the peer address.
        let inner = run(
            Command::new("ip").args(["-n", &h.name, "-4", "-o", "addr"]),
            b"",
        );
        assert!(stdout(&inner).contains(&format!("{}/30", h.address)));
        let outer = root_addresses();
        assert!(!outer.contains(&format!("{}/", h.address)), "{outer}");
        assert!(outer.contains(&format!("{}/30", h.peer)), "{outer}");
        assert!(h.address.octets()[..2] == [198, 18] || h.address.octets()[..2] == [198, 19]);
        assert!(h.root.is_dir() && std::fs::read_dir(&h.root).unwrap().next().is_none());
        keys.push(h.public_key());
    }
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), 4, "hosts share a host key");
    assert!(fleet.ssh_command().starts_with("ssh -F /"));
}

#[test]
fn a_cut_host_times_out_and_answers_when_healed() {
    let fleet = Fleet::new(2);
    assert_answers(&fleet, 1);
    // An open session notices the cut through its ServerAlive probes.
    let session = open_session(&fleet, 1, "sleep 600", Stdio::null());
    let cut_at = Instant::now();
    fleet.hosts[1].cut();

    assert_times_out(&fleet, 1);
    assert_answers(&fleet, 0);

    let out = common::wait_output(session, Duration::from_secs(30));
    let noticed = cut_at.elapsed();
    assert_eq!(code(&out), 255, "{}", stderr(&out));
    let alive = Duration::from_secs(
        (netns::SERVER_ALIVE_INTERVAL_S * (netns::SERVER_ALIVE_COUNT_MAX + 1)).into(),
    );
    assert!(
        noticed < alive + MARGIN,
        "the session noticed after {noticed:?}"
    );

    fleet.hosts[1].heal();
    assert_answers(&fleet, 1);
}

#[test]
fn a_killed_sshd_refuses_and_answers_when_restarted() {
    let mut fleet = Fleet::new(2);
    // A session opened before the crash outlives it, as on a real host.
    let before = open_session(&fleet, 0, "sleep 2; echo still here", Stdio::piped());
    let pid = fleet.hosts[0].sshd_pid().unwrap();
    fleet.hosts[0].kill_sshd();
    assert!(!PathBuf::from(format!("/proc/{pid}")).exists());

    let (out, took) = ssh(&fleet, 0, "true");
    assert_eq!(code(&out), 255, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("Connection refused"),
        "{}",
        stderr(&out)
    );
    assert!(took < CONNECT_TIMEOUT, "a refusal took {took:?}");
    assert_answers(&fleet, 1);
    let out = common::wait_output(before, Duration::from_secs(30));
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(stdout(&out), "still here\n");

    fleet.hosts[0].restart_sshd();
    assert_answers(&fleet, 0);
}

#[test]
fn a_frozen_host_times_out_and_answers_when_thawed() {
    let fleet = Fleet::new(1);
    fleet.hosts[0].freeze();
    assert_times_out(&fleet, 0);
    fleet.hosts[0].thaw();
    assert_answers(&fleet, 0);
}

#[test]
fn host_keys_are_checked() {
    let fleet = Fleet::new(3);
    let known = std::fs::read_to_string(fleet.known_hosts()).unwrap();
    // Host 0 presents a key other than the one known for it; host 2 is not known at all.
    let stranger = fleet.dir().join("stranger");
    let out = run(
        Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(&stranger),
        b"",
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let stranger_key = std::fs::read_to_string(stranger.with_extension("pub")).unwrap();
    let h0 = &fleet.hosts[0];
    let h2 = &fleet.hosts[2];
    let rewritten: String = known
        .lines()
        .filter(|l| !l.starts_with(&format!("{} ", h2.address)))
        .map(|l| {
            if l.starts_with(&format!("{} ", h0.address)) {
                format!("{} {}", h0.address, stranger_key)
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    std::fs::write(fleet.known_hosts(), rewritten).unwrap();

    for (host, why) in [
        (0, "REMOTE HOST IDENTIFICATION HAS CHANGED"),
        (2, "Host key verification failed"),
    ] {
        let (out, _) = ssh(&fleet, host, "true");
        assert_eq!(code(&out), 255, "host {host}'s key was let through");
        assert!(stderr(&out).contains(why), "{}", stderr(&out));
    }
    assert_answers(&fleet, 1);
}

/// What a fleet made, to look for after it is gone.
struct Made {
    names: Vec<String>,
    veths: Vec<String>,
    pids: Vec<u32>,
    dir: PathBuf,
    blocks: Vec<u16>,
}

impl Made {
    /// Taken when nothing more starts on the fleet: every process in its namespaces then
    /// is every process they will have.
    fn of(fleet: &Fleet) -> Made {
        let mut pids: Vec<u32> = fleet.hosts.iter().flat_map(|h| h.processes()).collect();
        pids.extend(fleet.hosts.iter().filter_map(|h| h.sshd_pid()));
        Made {
            names: fleet.hosts.iter().map(|h| h.name.clone()).collect(),
            veths: fleet.hosts.iter().map(|h| h.veth.clone()).collect(),
            pids,
            dir: fleet.dir().to_path_buf(),
            blocks: fleet.blocks(),
        }
    }

    fn assert_gone(&self) {
        let namespaces = stdout(&run(Command::new("ip").args(["netns", "list"]), b""));
        let links = stdout(&run(Command::new("ip").args(["-o", "link"]), b""));
        let routes = stdout(&run(Command::new("ip").args(["route", "show"]), b""));
        for name in &self.names {
            assert!(
                !namespaces
                    .lines()
                    .any(|l| l.split_whitespace().next() == Some(name)),
                "namespace {name} remains: {namespaces}"
            );
        }
        for veth in &self.veths {
            assert!(
                !links.contains(&format!(" {veth}@")),
                "{veth} remains: {links}"
            );
        }
        for pid in &self.pids {
            let state = common::proc_status(*pid, "State:");
            assert!(
                state.is_empty() || state.starts_with('Z'),
                "pid {pid} remains: {state}"
            );
        }
        let dir = self.dir.as_os_str().as_encoded_bytes();
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            if common::proc_status(pid, "State:").starts_with('Z') {
                continue;
            }
            // (Which namespace a process is in says nothing once the fleet's are gone: the
            // kernel gives their numbers to new ones, another test's perhaps. `pids` holds
            // every process they had.)
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            assert!(
                !cmdline.windows(dir.len()).any(|w| w == dir),
                "pid {pid} remains: {}",
                String::from_utf8_lossy(&cmdline)
            );
        }
        for &b in &self.blocks {
            let marker = PathBuf::from(format!("{}/{b}", netns::MARKERS));
            // Another test may hold the block by now; then its marker names another pid.
            let holder = std::fs::read_to_string(&marker).unwrap_or_default();
            assert!(
                !holder.contains(&self.dir.display().to_string()),
                "marker {} remains: {holder}",
                marker.display()
            );
            let network = format!("{}.{}.{}.0/24", 198, 18 + (b >> 8), b & 0xff);
            if holder.is_empty() {
                assert!(
                    !routes.contains(&format!("unreachable {network}")),
                    "route to {network} remains: {routes}"
                );
                assert_eq!(
                    netns::live_connections(b),
                    0,
                    "connections to {network} remain"
                );
            }
        }
        assert!(!self.dir.exists(), "{} remains", self.dir.display());
    }
}

/// A fleet with everything a test might leave running: a control master, a session to a
/// cut host, a task in the background of a frozen host.
fn busy_fleet() -> Fleet {
    let fleet = Fleet::new(3);
    fleet.warm(&fleet.hosts[0]);
    let task = run(
        &mut fleet.ssh(
            &fleet.hosts[2],
            "setsid sleep 600 </dev/null >/dev/null 2>&1 &",
        ),
        b"",
    );
    assert_eq!(code(&task), 0, "{}", stderr(&task));
    let mut session = open_session(&fleet, 1, "sleep 600", Stdio::null());
    std::thread::spawn(move || session.wait());
    wait_until("the task's sleep", Duration::from_secs(20), || {
        sleeping(&fleet, 2).then_some(())
    });
    fleet.hosts[1].cut();
    fleet.hosts[2].freeze();
    fleet
}

#[test]
fn a_dropped_fleet_leaves_nothing() {
    let fleet = busy_fleet();
    let made = Made::of(&fleet);
    assert!(made.pids.len() >= 6, "{:?}", made.pids);
    let masters = std::fs::read_dir(fleet.dir().join("ctl")).unwrap().count();
    assert_eq!(masters, 1, "no control master");
    drop(fleet);
    made.assert_gone();
}

#[test]
fn a_panicking_test_leaves_nothing() {
    let (tx, rx) = std::sync::mpsc::channel();
    let died = std::thread::spawn(move || {
        let fleet = busy_fleet();
        tx.send(Made::of(&fleet)).unwrap();
        panic!("a test fails with its fleet up");
    })
    .join();
    assert!(died.is_err());
    rx.recv().unwrap().assert_gone();
}

/// A child role: makes a one-host fleet, says what it holds, and waits to be killed.
pub fn holder_child() {
    let fleet = Fleet::new(1);
    let h = &fleet.hosts[0];
    println!(
        "holding {} {} {} {}",
        fleet.blocks()[0],
        h.name,
        h.sshd_pid().unwrap(),
        fleet.dir().display()
    );
    loop {
        std::thread::sleep(Duration::from_secs(60));
    }
}

#[test]
fn a_killed_holders_block_is_taken_back_clean() {
    common::require_root("network namespaces and sshd servers");
    let mut child = common::child("fleet-holder")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    // The test harness in the child prints lines of its own.
    std::thread::spawn(move || {
        let said = std::io::BufReader::new(out)
            .lines()
            .map_while(Result::ok)
            .find_map(|l| l.strip_prefix("holding ").map(str::to_string));
        let _ = tx.send(said.unwrap_or_default());
    });
    let line = rx.recv_timeout(Duration::from_secs(60)).unwrap_or_default();
    let _ = child.kill();
    let _ = child.wait();
    let fields: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(fields.len(), 4, "the holder said {line:?}");
    let (block, name, sshd, dir): (u16, &str, u32, PathBuf) = (
        fields[0].parse().unwrap(),
        fields[1],
        fields[2].parse().unwrap(),
        PathBuf::from(fields[3]),
    );
    // A killed process runs no Drop: its sshd and namespace outlive it.
    assert!(PathBuf::from(format!("/run/netns/{name}")).exists());
    let outlived = common::proc_status(sshd, "State:");
    // Another test may have taken the block back already; else we do.
    if let Some(taken) = Block::take(block) {
        assert!(
            !outlived.is_empty(),
            "sshd {sshd} did not outlive its holder"
        );
        drop(taken);
    }
    wait_until(
        "the dead holder's leftovers gone",
        Duration::from_secs(30),
        || {
            let gone = !PathBuf::from(format!("/run/netns/{name}")).exists()
                && !PathBuf::from(format!("/sys/class/net/fveth{block}-0")).exists()
                && !dir.exists()
                && {
                    let s = common::proc_status(sshd, "State:");
                    s.is_empty() || s.starts_with('Z')
                };
            gone.then_some(())
        },
    );
}

#[test]
fn a_held_block_is_nobody_elses() {
    common::require_root("the blocks' markers under /run");
    let a = Block::hold_any();
    let b = Block::hold_any();
    assert_ne!(a.index, b.index);
    assert!(
        Block::take(a.index).is_none(),
        "block {} taken twice",
        a.index
    );
    let marker = a.marker().to_path_buf();
    let holder = std::fs::read_to_string(&marker).unwrap();
    assert_eq!(
        holder.split_whitespace().next(),
        Some(std::process::id().to_string().as_str())
    );
    // Nothing for the block leaves the machine: its addresses with no host are unreachable.
    let route = run(
        Command::new("ip").args(["route", "get", &a.network().replace(".0/24", ".7")]),
        b"",
    );
    assert!(
        stderr(&route).contains("No route to host"),
        "{}{}",
        stdout(&route),
        stderr(&route)
    );
    drop(a);
    assert!(!marker.exists());
    assert!(Block::take(b.index).is_none());
}

/// Set-up and teardown times of 4- and 50-host fleets, and of `ssh HOST true` cold and
/// through a warm control master. Run with
/// `cargo nextest run --test integration fleet_timings --run-ignored only --no-capture`.
#[test]
#[ignore = "a measurement, not a test"]
fn fleet_timings() {
    for n in [4, 50] {
        let start = Instant::now();
        let fleet = Fleet::new(n);
        let up = start.elapsed();
        let start = Instant::now();
        drop(fleet);
        println!(
            "fleet of {n}: set up {up:?}, torn down {:?}",
            start.elapsed()
        );
    }
    let fleet = Fleet::new(50);
    let rounds = 10;
    let start = Instant::now();
    for _ in 0..rounds {
        assert_answers(&fleet, 0);
    }
    println!("ssh HOST true, cold: {:?} each", start.elapsed() / rounds);
    fleet.warm(&fleet.hosts[0]);
    let start = Instant::now();
    for _ in 0..rounds {
        assert_answers(&fleet, 0);
    }
    println!("ssh HOST true, warm: {:?} each", start.elapsed() / rounds);
    // The benchmark's shape: every host at once, cold, then through warm masters.
    let all = |extra: &[&str]| {
        let start = Instant::now();
        let runs = fleet
            .hosts
            .iter()
            .map(|h| (fleet.ssh_with(h, extra, "true"), Vec::new()))
            .collect();
        for out in common::run_all(runs) {
            assert_eq!(code(&out), 0, "{}", stderr(&out));
        }
        start.elapsed()
    };
    let cold = all(&["-o", "ControlPath=none"]);
    let opened = all(&["-o", "ControlMaster=auto", "-o", "ControlPersist=600"]);
    let warm = all(&[]);
    println!(
        "ssh true on 50 hosts at once: cold {cold:?}, opening masters {opened:?}, warm {warm:?}"
    );
}
