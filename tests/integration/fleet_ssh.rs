//! The pipeline on a fleet of real hosts: network namespaces, each with its own sshd and
//! task-directory root, reached over OpenSSH through formic-host. Every case ends with the
//! namespaces, sshds and tasks gone (the fleet's Drop).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;

use crate::common::{self, code, run, stderr, stdout};
use crate::netns::Fleet;

/// --lost-after for these tests: longer than a pass that waits on a cut host (passes
/// further apart are a gap in the evidence, and the clock starts over).
const LOST_AFTER: &str = "20s";

/// A scheduler (this machine's root namespace) and its fleet.
struct Site {
    fleet: Fleet,
    dir: tempfile::TempDir,
}

impl Site {
    fn new(hosts: usize) -> Site {
        common::require_root("a fleet of network namespaces");
        let site = Site {
            fleet: Fleet::new(hosts),
            dir: common::tempdir(),
        };
        std::fs::create_dir(site.jobs()).unwrap();
        site.add_hosts();
        site
    }

    /// `offer add` of every host of the fleet (the operator's host file).
    fn add_hosts(&self) {
        let records: String = self
            .fleet
            .hosts
            .iter()
            .map(|h| {
                format!(
                    "{}\n",
                    serde_json::json!({
                        "type": "host", "name": h.name, "cpus": 2, "ram_mb": 2048,
                        "ports": [[31000, 31099]], "transport": "ssh",
                        "address": h.address.to_string(), "ssh": h.ssh_target(),
                        "root": h.root,
                    })
                )
            })
            .collect();
        let out = run(self.tool("offer").arg("add"), records.as_bytes());
        assert_eq!(code(&out), 0, "{}", stderr(&out));
    }

    fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    fn jobs(&self) -> PathBuf {
        self.dir.path().join("jobs")
    }

    /// A formic tool of this build, reaching the fleet as an operator's would.
    fn tool(&self, name: &str) -> Command {
        let mut c = common::tool(name, &self.state());
        self.reach(&mut c);
        c
    }

    fn reach(&self, c: &mut Command) {
        c.env("FORMIC_SSH", self.fleet.ssh_command())
            .env(
                "FORMIC_REMOTE_BIN",
                common::bin("formic-host").parent().unwrap(),
            )
            .env("FORMIC_LOST_AFTER", LOST_AFTER);
    }

    /// One pass of scripts/reconcile.
    fn reconcile(&self) -> Output {
        run(&mut self.reconcile_command(), b"")
    }

    fn reconcile_command(&self) -> Command {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/reconcile");
        let mut cmd = Command::new(script);
        cmd.arg(self.jobs())
            .env("FORMIC_STATE", self.state())
            .env("FORMIC_BIN", common::bin("offer").parent().unwrap());
        self.reach(&mut cmd);
        cmd
    }

    /// Ends the connection formic keeps open to host `v` (`ssh -O exit` on its control
    /// socket, beside the state file).
    fn close_connection(&self, v: usize) {
        let h = &self.fleet.hosts[v];
        let (destination, port) = h
            .ssh_target()
            .rsplit_once(':')
            .map_or((h.ssh_target(), None), |(d, p)| {
                (d.to_string(), Some(p.to_string()))
            });
        let mut c = Command::new("sh");
        c.arg("-c").arg(format!(
            "{} -o ControlPath={}/ssh-%C {} -O exit {destination}",
            self.fleet.ssh_command(),
            self.dir.path().display(),
            port.map_or(String::new(), |p| format!("-p {p}")),
        ));
        let out = run(&mut c, b"");
        assert_eq!(code(&out), 0, "{}", stderr(&out));
    }

    /// One pass of scripts/reconcile, with the ssh calls it made to each host counted (an
    /// ssh wrapper logs its arguments).
    fn counted_pass(&self) -> (Output, Vec<usize>) {
        let log = self.dir.path().join("ssh-calls");
        let wrapper = self.dir.path().join("counting-ssh");
        std::fs::write(
            &wrapper,
            format!(
                "#!/bin/sh\necho \"$*\" >>{}\nexec {} \"$@\"\n",
                log.display(),
                self.fleet.ssh_command()
            ),
        )
        .unwrap();
        std::fs::set_permissions(
            &wrapper,
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        let _ = std::fs::remove_file(&log);
        let out = run(self.reconcile_command().env("FORMIC_SSH", &wrapper), b"");
        let calls = std::fs::read_to_string(&log).unwrap_or_default();
        let per_host = self
            .fleet
            .hosts
            .iter()
            .map(|h| {
                let target = format!(" {} ", h.ssh_target());
                calls
                    .lines()
                    .filter(|l| format!(" {l} ").contains(&target))
                    .count()
            })
            .collect();
        (out, per_host)
    }

    fn tasks(&self) -> Vec<Value> {
        let out = run(self.tool("reap").args(["tasks", "--json"]), b"");
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        stdout(&out)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// Passes until every instance of the fleet runs and is healthy.
    fn converge(&self, instances: usize) -> Vec<Value> {
        self.passes_until("the fleet to converge", |tasks| {
            running(tasks).len() == instances
        })
    }

    /// Reconciliation passes until `done` holds of the task list.
    fn passes_until(&self, what: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        common::wait_until(what, Duration::from_secs(120), || {
            let out = self.reconcile();
            assert_eq!(code(&out), 0, "{}", stderr(&out));
            let tasks = self.tasks();
            done(&tasks).then_some(tasks)
        })
    }

    fn liveness(&self, host: &str) -> String {
        let out = run(self.tool("offer").args(["hosts", host, "--json"]), b"");
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        let h: Value = serde_json::from_str(stdout(&out).trim()).unwrap();
        h["liveness"]["state"].as_str().unwrap().to_string()
    }

    /// The supervisors at work under a host's root, by task id.
    fn supervised_on(&self, host: &crate::netns::Host) -> Vec<String> {
        common::tasks_under(&host.root)
            .into_iter()
            .filter(|d| formic::taskdir::supervised(d).unwrap_or(false))
            .map(|d| d.strip_prefix(&host.root).unwrap().display().to_string())
            .collect()
    }
}

/// The tasks RUNNING and healthy.
fn running(tasks: &[Value]) -> Vec<&Value> {
    tasks
        .iter()
        .filter(|t| t["state"] == "RUNNING" && t["healthy"] == true)
        .collect()
}

impl Site {
    /// Every endpoint the serverset names, each answering.
    fn resolve(&self) -> Vec<String> {
        let out = run(
            self.tool("announce")
                .args(["resolve", "/formic/t/e/web", "--plain"]),
            b"",
        );
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        let mut endpoints: Vec<String> = stdout(&out).lines().map(String::from).collect();
        endpoints.sort();
        endpoints
    }
}

impl Drop for Site {
    /// Tasks first, while their hosts can still be reached; the fleet's Drop then removes
    /// whatever is left in the namespaces.
    fn drop(&mut self) {
        let _ = run(self.tool("reap").args(["kill", "--job", "t/e/web"]), b"");
    }
}

const WEB: &str = r#"{"job":"t/e/web","instances":8,
 "cmd":["python3","-m","http.server","{{port.http}}","--bind","0.0.0.0"],
 "resources":{"cpus":0.1,"ram_mb":64,"ports":["http"]},
 "constraints":[{"attr":"host","limit":2}],
 "health":{"http":"/","port":"http","interval_s":1,"timeout_s":0.5,"failures":3},
 "announce":{"primary":"http","path":"/formic/t/e/web"}}"#;

/// An HTTP GET from the scheduler's namespace: the status line.
fn get(address: &str, port: u64) -> String {
    let mut s = TcpStream::connect_timeout(
        &format!("{address}:{port}").parse().unwrap(),
        Duration::from_secs(3),
    )
    .unwrap_or_else(|e| panic!("{address}:{port}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    write!(s, "GET / HTTP/1.0\r\nHost: {address}\r\n\r\n").unwrap();
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    answer.lines().next().unwrap_or_default().to_string()
}

#[test]
fn a_four_host_fleet_converges_over_ssh_and_each_instance_answers_at_its_host() {
    let site = Site::new(4);
    std::fs::write(site.jobs().join("web.json"), WEB).unwrap();
    let tasks = site.converge(8);
    // Two on each host (the limit), each answering at its host's address, from outside.
    for h in &site.fleet.hosts {
        let here: Vec<&Value> = tasks
            .iter()
            .filter(|t| t["host"] == h.name.as_str())
            .collect();
        assert_eq!(here.len(), 2, "{}: {tasks:?}", h.name);
        for t in here {
            let port = t["ports"]["http"].as_u64().unwrap();
            let status = get(&h.address.to_string(), port);
            assert!(status.contains(" 200 "), "{} {port}: {status}", h.name);
        }
    }
    // Announced at the host's address.
    let out = run(
        site.tool("announce")
            .args(["resolve", "/formic/t/e/web", "--plain"]),
        b"",
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let mut endpoints: Vec<String> = stdout(&out).lines().map(String::from).collect();
    endpoints.sort();
    let host_of = |t: &Value| {
        site.fleet
            .hosts
            .iter()
            .find(|h| t["host"] == h.name.as_str())
            .unwrap()
    };
    let mut expected: Vec<String> = tasks
        .iter()
        .map(|t| format!("{}:{}", host_of(t).address, t["ports"]["http"]))
        .collect();
    expected.sort();
    assert_eq!(endpoints, expected);
    // A pass over a converged fleet changes nothing, and reaches each host once: the first
    // reap's survey of its supervisors and tasks.
    let before = site.tasks();
    let (out, calls) = site.counted_pass();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(site.tasks(), before);
    assert_eq!(calls, vec![1; 4], "ssh calls a host in a quiet pass");
    // The task directories are on the hosts, under their roots.
    for h in &site.fleet.hosts {
        assert_eq!(common::tasks_under(&h.root).len(), 2, "{}", h.name);
    }
    // A task's logs, read over ssh: the server logs each request on its standard error,
    // the GET above among its health checks; what the host keeps, up to when it was read.
    let t = &tasks[0];
    let id = t["task"].as_str().unwrap();
    let out = run(site.tool("job").args(["logs", id, "--stderr"]), b"");
    assert_eq!(code(&out), 0, "job logs: {}", stderr(&out));
    let read = stdout(&out);
    assert!(read.contains("\"GET / HTTP/1.0\" 200"), "{read}");
    let run_logs = formic::runlogs::run_dir(
        &formic::taskdir::task_dir(&host_of(t).root, id),
        t["incarnation"].as_u64().unwrap() as u32,
    );
    let kept = std::fs::read_to_string(run_logs.join("stderr")).unwrap();
    assert!(
        kept.starts_with(&read),
        "{read:?} is not where {kept:?} starts"
    );
}

/// A host lost to `fault`: suspect, then down after --lost-after, its instances LOST and
/// running elsewhere, clients sent only to live ones; after `heal`, its stale copies are
/// stopped before it takes work again, and one instance per task id lives.
fn lost_and_taken_back(fault: fn(&mut Site, usize), heal: fn(&mut Site, usize)) {
    let mut site = Site::new(4);
    std::fs::write(
        site.jobs().join("web.json"),
        WEB.replace(r#""instances":8"#, r#""instances":6"#),
    )
    .unwrap();
    let tasks = site.converge(6);
    // A host that holds instances.
    let v = site
        .fleet
        .hosts
        .iter()
        .position(|h| tasks.iter().any(|t| t["host"] == h.name.as_str()))
        .unwrap();
    let victim = site.fleet.hosts[v].name.clone();
    let address = site.fleet.hosts[v].address;
    let moved: Vec<String> = tasks
        .iter()
        .filter(|t| t["host"] == victim.as_str())
        .map(|t| t["task"].as_str().unwrap().to_string())
        .collect();
    fault(&mut site, v);
    // Suspect at the first pass that cannot reach it, down after --lost-after; its
    // instances LOST and running elsewhere.
    let out = site.reconcile();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(site.liveness(&victim), "suspect");
    let tasks = site.passes_until("the cut host's instances to run elsewhere", |tasks| {
        running(tasks).len() == 6 && running(tasks).iter().all(|t| t["host"] != victim.as_str())
    });
    assert_eq!(site.liveness(&victim), "down");
    for id in &moved {
        assert!(tasks
            .iter()
            .any(|t| t["task"] == id.as_str() && t["state"] == "RUNNING"));
    }
    // Clients are sent only to live instances.
    let endpoints = site.resolve();
    assert_eq!(endpoints.len(), 6, "{endpoints:?}");
    assert!(endpoints
        .iter()
        .all(|e| !e.starts_with(&format!("{}:", address))));
    for e in &endpoints {
        let (address, port) = e.rsplit_once(':').unwrap();
        assert!(get(address, port.parse().unwrap()).contains(" 200 "), "{e}");
    }
    // Meanwhile the stale copies still run there (nothing can reach them).
    assert_eq!(site.supervised_on(&site.fleet.hosts[v]).len(), moved.len());
    // Healed: the stale copies are stopped, then the host takes work again.
    heal(&mut site, v);
    site.passes_until("the healed host to be taken back", |_| {
        site.liveness(&victim) == "up"
    });
    assert!(
        site.supervised_on(&site.fleet.hosts[v]).is_empty(),
        "stale copies stopped"
    );
    // One live instance per task id across the fleet.
    let mut ids: Vec<String> = site
        .fleet
        .hosts
        .iter()
        .flat_map(|h| site.supervised_on(h))
        .collect();
    ids.sort();
    let n = ids.len();
    ids.dedup();
    assert_eq!((ids.len(), n), (6, 6), "{ids:?}");
}

#[test]
fn a_host_cut_off_is_replaced_elsewhere_and_its_stale_copies_stop_when_it_heals() {
    lost_and_taken_back(
        |s, v| s.fleet.hosts[v].cut(),
        |s, v| s.fleet.hosts[v].heal(),
    );
}

/// Frozen (every process of the host stopped, the kernel still accepting connections):
/// steps time out rather than fail at once.
#[test]
fn a_frozen_host_is_replaced_elsewhere_and_its_copies_stop_when_it_thaws() {
    lost_and_taken_back(
        |s, v| s.fleet.hosts[v].freeze(),
        |s, v| s.fleet.hosts[v].thaw(),
    );
}

/// sshd killed on a host (the listener; sessions open go on, as when a real sshd dies):
/// the connection formic keeps open still reaches the host, so nothing moves while it
/// lasts. Once it ends too (as ControlPersist ends an idle one), the host is lost like any
/// other, and taken back when sshd is started again.
#[test]
fn a_host_whose_sshd_died_is_reached_while_its_connection_lasts_then_lost_and_taken_back() {
    lost_and_taken_back(
        |s, v| {
            let before = s.tasks();
            s.fleet.hosts[v].kill_sshd();
            let out = s.reconcile();
            assert_eq!(code(&out), 0, "{}", stderr(&out));
            assert_eq!(s.liveness(&s.fleet.hosts[v].name), "up");
            assert_eq!(s.tasks().len(), before.len());
            s.close_connection(v);
        },
        |s, v| s.fleet.hosts[v].restart_sshd(),
    );
}

#[test]
fn a_scheduler_cut_off_from_its_whole_fleet_declares_no_host_down() {
    let site = Site::new(4);
    std::fs::write(
        site.jobs().join("web.json"),
        WEB.replace(r#""instances":8"#, r#""instances":4"#),
    )
    .unwrap();
    let before = site.converge(4);
    for h in &site.fleet.hosts {
        h.cut();
    }
    // Passes for longer than --lost-after: every host suspect, none down, nothing LOST.
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_secs(30) {
        let out = site.reconcile();
        assert_eq!(code(&out), 0, "{}", stderr(&out));
    }
    let err = stderr(&site.reconcile());
    assert!(err.contains("not declared down"), "{err}");
    for h in &site.fleet.hosts {
        assert_eq!(site.liveness(&h.name), "suspect", "{}", h.name);
    }
    let during = site.tasks();
    assert!(during.iter().all(|t| t["state"] == "RUNNING"), "{during:?}");
    // Healed: all up, the same instances where they were.
    for h in &site.fleet.hosts {
        h.heal();
    }
    let after = site.passes_until("the fleet to answer again", |tasks| {
        running(tasks).len() == 4
    });
    for h in &site.fleet.hosts {
        assert_eq!(site.liveness(&h.name), "up", "{}", h.name);
    }
    let place = |tasks: &[Value]| -> Vec<(String, String)> {
        let mut p: Vec<(String, String)> = tasks
            .iter()
            .map(|t| (t["task"].to_string(), t["host"].to_string()))
            .collect();
        p.sort();
        p
    };
    assert_eq!(place(&after), place(&before));
}

#[test]
fn a_scheduler_taken_over_can_no_longer_act_on_the_fleet() {
    let site = Site::new(2);
    std::fs::write(
        site.jobs().join("web.json"),
        WEB.replace(r#""instances":8"#, r#""instances":2"#),
    )
    .unwrap();
    site.converge(2);
    // A standby with a copy of the state takes over, and makes one pass.
    let standby = site.dir.path().join("standby");
    std::fs::create_dir(&standby).unwrap();
    for e in std::fs::read_dir(site.dir.path()).unwrap().flatten() {
        let name = e.file_name().into_string().unwrap();
        if name.starts_with("state") && e.path().is_file() {
            std::fs::copy(e.path(), standby.join(&name)).unwrap();
        }
    }
    let tool = |name: &str| {
        let mut c = common::tool(name, &standby.join("state"));
        site.reach(&mut c);
        c
    };
    let out = run(tool("offer").arg("take-over"), b"");
    assert_eq!(
        (code(&out), stdout(&out).trim()),
        (0, "1"),
        "{}",
        stderr(&out)
    );
    let out = run(&mut tool("reap"), b"");
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    // The scheduler it replaced is refused by the hosts: 77, one line, nothing stopped.
    let out = run(site.tool("reap").args(["kill", "t/e/web/0"]), b"");
    assert_eq!(code(&out), 77, "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("another scheduler has taken over"), "{err}");
    let live: usize = site
        .fleet
        .hosts
        .iter()
        .map(|h| site.supervised_on(h).len())
        .sum();
    assert_eq!(live, 2);
    // The standby acts.
    let out = run(tool("reap").args(["kill", "--job", "t/e/web"]), b"");
    assert_eq!(code(&out), 0, "{}", stderr(&out));
}

/// The scheduler's whole directory lost (state, journal, epoch) under a running fleet:
/// with the hosts added again, `offer rebuild` records what the hosts run, as it runs, and
/// a pass then changes nothing; the scheduler that had the old state can no longer act.
#[test]
fn the_state_deleted_under_a_running_fleet_is_rebuilt_from_the_hosts() {
    let site = Site::new(3);
    std::fs::write(
        site.jobs().join("web.json"),
        WEB.replace(r#""instances":8"#, r#""instances":5"#),
    )
    .unwrap();
    std::fs::write(
        site.jobs().join("once.json"),
        r#"{"job":"t/e/once","instances":1,"service":false,"cmd":["true"],
            "resources":{"cpus":0.1,"ram_mb":32}}"#,
    )
    .unwrap();
    site.passes_until(
        "the fleet to converge and the batch task to finish",
        |tasks| running(tasks).len() == 5 && tasks.iter().any(|t| t["state"] == "FINISHED"),
    );
    let before = site.tasks();
    let supervised: Vec<Vec<String>> = site
        .fleet
        .hosts
        .iter()
        .map(|h| site.supervised_on(h))
        .collect();
    // A copy of the old state: the scheduler that still has it.
    let stale = site.dir.path().join("stale");
    std::fs::create_dir(&stale).unwrap();
    for name in ["state", "state.journal", "state.epoch"] {
        let from = site.dir.path().join(name);
        if from.exists() {
            std::fs::copy(&from, stale.join(name)).unwrap();
            std::fs::remove_file(&from).unwrap();
        }
    }
    site.add_hosts();
    let out = run(site.tool("offer").arg("rebuild"), b"");
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("5 tasks running, 1 ended"),
        "{}",
        stderr(&out)
    );
    // What the state says runs is what ran, where it ran, with its pid and ports.
    let shown = |tasks: &[Value]| -> Vec<String> {
        let mut v: Vec<String> = tasks
            .iter()
            .map(|t| {
                format!(
                    "{} {} {} {} {} {}",
                    t["task"], t["host"], t["state"], t["pid"], t["ports"], t["exit"]
                )
            })
            .collect();
        v.sort();
        v
    };
    assert_eq!(shown(&site.tasks()), shown(&before));
    // A rebuild only records: a second one is refused, and changes nothing.
    let again = run(site.tool("offer").arg("rebuild"), b"");
    assert_eq!(code(&again), 2, "{}", stderr(&again));
    // A pass changes nothing: nothing placed or stopped, the batch task not run again.
    let out = site.reconcile();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("reconcile: 0 placed, 0 pending, 0 in conflict, 0 stopped"),
        "{}",
        stderr(&out)
    );
    assert_eq!(shown(&site.tasks()), shown(&before));
    let now: Vec<Vec<String>> = site
        .fleet
        .hosts
        .iter()
        .map(|h| site.supervised_on(h))
        .collect();
    assert_eq!(now, supervised);
    // The scheduler with the old state has been taken over.
    let mut old = common::tool("reap", &stale.join("state"));
    site.reach(&mut old);
    let out = run(&mut old, b"");
    assert_eq!(code(&out), 77, "{}", stderr(&out));
}
