//! announce: publishes the endpoints of healthy running instances as serversets, in the
//! Finagle/Aurora member format, and resolves them for clients.
//!
//! A member is one RUNNING and healthy task of a job with an `announce` block:
//!
//! ```json
//! {"serviceEndpoint":{"host":"h1","port":31001},
//!  "additionalEndpoints":{"http":{"host":"h1","port":31001}},"shard":0,"status":"ALIVE"}
//! ```
//!
//! Two backends keep them. The default is a directory tree (one file per member, under the
//! job's announce path), written by a one-shot run in every reconciliation pass. ZooKeeper
//! (`--zk`) keeps them as ephemeral sequential `member_` nodes, which only live as long as
//! the session that made them: there `announce --follow` is the announcer, one per state
//! file, and a one-shot run only removes what must go and reports what is missing.
//!
//! A graceful stop takes the instance out of discovery before it is signalled: the running
//! announcer marks the tasks whose members it holds (`announced` in the state), and reap
//! waits for the mark to clear before it sends SIGTERM.

mod files;
mod zk;

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use serde_json::{json, Map, Value};

use crate::cli::{OutputArgs, StateArgs};
use crate::exit::{fail, Status, TABLE};
use crate::host::{Host, Transport};
use crate::records::Writer;
use crate::state::{State, View};
use crate::task::{Job, Task, TaskState};

/// Publish healthy running instances as Finagle/Aurora serversets, or resolve them.
///
/// Without a subcommand, makes the serversets of every job with an `announce` block match
/// the state: a member for each RUNNING and healthy instance, none for anything else.
/// Prints one record per change: {"type":"member","op":"join"|"leave",...}.
#[derive(Parser, Debug)]
#[command(name = "announce", version, after_help = TABLE)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub state: StateArgs,
    #[command(flatten)]
    pub backend: Backend,
    /// Keep going: follow the state and keep the serversets in step (with --zk, this is the
    /// announcer that holds the members; one per state file)
    #[arg(long)]
    pub follow: bool,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Print the live endpoints of a serverset: JSON lines {"type":"endpoint",...}, or
    /// host:port lines with --plain. Exits 1 when there are none.
    Resolve {
        /// The serverset's path, as in the job's announce block (e.g. /formic/www/prod/hello)
        path: String,
        /// Print host:port of each member's service endpoint, one per line
        #[arg(long)]
        plain: bool,
    },
}

/// Where serversets live.
#[derive(Args, Debug, Clone)]
pub struct Backend {
    /// Serverset directory tree [default: serversets/ beside the state file]
    #[arg(
        long,
        env = "FORMIC_SERVERSETS",
        value_name = "DIR",
        global = true,
        conflicts_with = "zk"
    )]
    pub dir: Option<PathBuf>,
    /// ZooKeeper ensemble instead of files: HOST:PORT[,HOST:PORT...][/CHROOT]
    #[arg(long, env = "FORMIC_ZK", value_name = "CONNECT", global = true,
          value_parser = parse_connect)]
    pub zk: Option<String>,
    /// Authenticate to ZooKeeper with the digest USER:PASSWORD read from this file (mode
    /// 0600 or stricter), and create members readable by all, writable only by that user
    #[arg(long, value_name = "FILE", global = true, requires = "zk")]
    pub zk_digest_file: Option<PathBuf>,
    /// ZooKeeper session timeout: members of an announcer that died vanish after this long
    #[arg(long, value_name = "SECONDS", default_value_t = 10.0, global = true,
          value_parser = parse_timeout)]
    pub session_timeout: f64,
}

fn parse_timeout(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(t) if (0.1..=3600.0).contains(&t) => Ok(t),
        _ => Err(format!("{s:?} is not a number of seconds from 0.1 to 3600")),
    }
}

/// A ZooKeeper connect string: HOST[:PORT] parts (port 2181 when left out), then an
/// optional chroot path.
fn parse_connect(s: &str) -> Result<String, String> {
    let (hosts, chroot) = s.split_at(s.find('/').unwrap_or(s.len()));
    let bad = |why: String| format!("{s:?} is not HOST:PORT[,HOST:PORT...][/CHROOT]: {why}");
    if hosts.is_empty() {
        return Err(bad("no host".into()));
    }
    for part in hosts.split(',') {
        let (host, port) = part.rsplit_once(':').unwrap_or((part, "2181"));
        if host.is_empty() || host.contains(char::is_whitespace) {
            return Err(bad(format!("bad host {host:?}")));
        }
        if !port.parse::<u16>().is_ok_and(|p| p > 0) {
            return Err(bad(format!("bad port {port:?}")));
        }
    }
    if !chroot.is_empty() {
        crate::job::check_announce_path(chroot).map_err(|e| bad(format!("chroot {e}")))?;
    }
    Ok(s.to_string())
}

/// How often a follower looks at the state.
const POLL: Duration = Duration::from_millis(50);

pub fn run(cli: Cli) -> Result<Status> {
    let state_path = cli.state.path();
    let human = cli.output.human();
    match (&cli.command, &cli.backend.zk) {
        (Some(Command::Resolve { path, plain }), zk) => {
            crate::job::check_announce_path(path).map_err(|e| fail(Status::Usage, e))?;
            let endpoints = match zk {
                Some(connect) => zk::resolve(&zk::Settings::new(&cli.backend, connect)?, path)?,
                None => files::resolve(&cli.backend.root(&state_path), path)?,
            };
            print_endpoints(&endpoints, *plain)
        }
        (None, zk) => {
            let mut state = if cli.follow {
                State::open_writer(&state_path)?
            } else {
                State::open(&state_path)?
            };
            let mut out = Out::new(human);
            let host_name = this_host_name();
            match (zk, cli.follow) {
                (None, false) => {
                    let want = members(state.view(), &host_name);
                    files::sync(&cli.backend.root(&state_path), &want, &mut out)?;
                    out.finish()?;
                    Ok(Status::Done)
                }
                (None, true) => {
                    let mut lock = follower_lock(&state_path)?;
                    let mut files = files::Holder::new(cli.backend.root(&state_path));
                    follow(&mut state, &mut lock, &mut files, &host_name, &mut out)
                }
                (Some(connect), false) => {
                    let settings = zk::Settings::new(&cli.backend, connect)?;
                    let want = members(state.view(), &host_name);
                    let paths = announce_paths(state.view());
                    let follower = follower_session(&state_path);
                    let missing = zk::sync(&settings, &want, &paths, follower, &mut out)?;
                    out.finish()?;
                    if missing == 0 {
                        return Ok(Status::Done);
                    }
                    let who = if follower_alive(&state_path) {
                        "the running announce --follow has not created them yet"
                    } else {
                        "no announce --zk --follow is running to hold them"
                    };
                    eprintln!("announce: {missing} members are missing from ZooKeeper: {who}");
                    Ok(Status::Partial)
                }
                (Some(connect), true) => {
                    let mut lock = follower_lock(&state_path)?;
                    let settings = zk::Settings::new(&cli.backend, connect)?;
                    let mut holder = zk::Holder::new(settings);
                    follow(&mut state, &mut lock, &mut holder, &host_name, &mut out)
                }
            }
        }
    }
}

impl Backend {
    fn root(&self, state: &Path) -> PathBuf {
        self.dir
            .clone()
            .unwrap_or_else(|| state.parent().unwrap_or(Path::new(".")).join("serversets"))
    }
}

// --- members ---

/// One serverset member: a healthy running instance as clients see it.
#[derive(Clone, Debug, PartialEq)]
pub struct Member {
    /// The task's slot in the state.
    pub slot: u32,
    /// `role/env/name/instance`.
    pub task: String,
    /// The serverset path.
    pub path: String,
    pub shard: u32,
    /// `host:port` of the service endpoint, for messages.
    pub endpoint: String,
    /// The member as stored: Finagle/Aurora JSON.
    pub data: Vec<u8>,
}

/// Whether a task belongs in its job's serverset.
fn is_member(t: &Task) -> bool {
    t.state == TaskState::Running && t.healthy
}

/// The members the state asks for, by task slot.
pub fn members(view: &View, this_host: &str) -> BTreeMap<u32, Member> {
    // A fleet's members share few jobs and hosts: their JSON pieces are made once each.
    let mut jobs: HashMap<u32, Option<(&Job, Vec<String>)>> = HashMap::new();
    let mut hosts: HashMap<u32, Option<(String, String)>> = HashMap::new();
    let mut out = BTreeMap::new();
    for (slot, t) in view.tasks.iter() {
        if !is_member(t) {
            continue;
        }
        let job = jobs.entry(t.job).or_insert_with(|| {
            let job = view.jobs.get(t.job).filter(|j| j.announce.is_some())?;
            Some((job, job.ports.iter().map(|p| quoted(p)).collect()))
        });
        let host = hosts.entry(t.host).or_insert_with(|| {
            let address = endpoint_host(view.hosts.get(t.host)?, this_host);
            Some((quoted(&address), address))
        });
        if let (Some((job, names)), Some((address_json, address))) = (job, host) {
            if let Some(m) = render(slot, t, job, names, address_json, address) {
                out.insert(slot, m);
            }
        }
    }
    out
}

/// A string as a JSON string literal.
fn quoted(s: &str) -> String {
    Value::from(s).to_string()
}

/// The member of task `t`, its JSON written out directly: this runs for every member of a
/// fleet whenever the state changes. `names` and `address_json` are JSON string literals.
fn render(
    slot: u32,
    t: &Task,
    job: &Job,
    names: &[String],
    address_json: &str,
    address: &str,
) -> Option<Member> {
    use std::fmt::Write as _;
    let announce = job.announce.as_ref()?;
    let primary = *t.ports.get(announce.primary as usize)?;
    if primary == 0 {
        return None;
    }
    let mut data = String::with_capacity(96 + 48 * names.len());
    let endpoint = |data: &mut String, port: u16| {
        let _ = write!(data, r#"{{"host":{address_json},"port":{port}}}"#);
    };
    data.push_str(r#"{"serviceEndpoint":"#);
    endpoint(&mut data, primary);
    data.push_str(r#","additionalEndpoints":{"#);
    let mut first = true;
    for (name, port) in names.iter().zip(t.ports).filter(|(_, p)| *p != 0) {
        if !first {
            data.push(',');
        }
        first = false;
        data.push_str(name);
        data.push(':');
        endpoint(&mut data, port);
    }
    let _ = write!(data, r#"}},"shard":{},"status":"ALIVE"}}"#, t.instance);
    Some(Member {
        slot,
        task: format!("{}/{}", job.key, t.instance),
        path: announce.path.clone(),
        shard: t.instance,
        endpoint: format!("{address}:{primary}"),
        data: data.into_bytes(),
    })
}

/// The address clients reach a host's instances at: the `address` of its record, else its
/// `address` attribute; else, for a local host, this machine's name (as Aurora announces
/// the agent's host name); else the host's name.
fn endpoint_host(host: &Host, this_host: &str) -> String {
    let set = Some(host.access.address.as_str()).filter(|a| !a.is_empty());
    match (set.or(host.attr("address")), host.transport) {
        (Some(a), _) => a.to_string(),
        (None, Transport::Local) => this_host.to_string(),
        (None, _) => host.name.clone(),
    }
}

pub(crate) fn this_host_name() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".into())
}

/// Every serverset path the state's jobs name, members or not: where stale members may be.
fn announce_paths(view: &View) -> Vec<String> {
    let mut paths: Vec<String> = view
        .jobs
        .iter()
        .filter_map(|(_, j)| j.announce.as_ref().map(|a| a.path.clone()))
        .collect();
    paths.sort();
    paths.dedup();
    paths
}

/// A member as read back from a serverset, checked as a Finagle client would read it.
#[derive(Clone, Debug, PartialEq)]
pub struct Endpoint {
    pub member: String,
    pub shard: Option<u64>,
    pub host: String,
    pub port: u16,
    pub additional: Map<String, Value>,
}

/// Parses a member's data; None unless it is an ALIVE member with a service endpoint.
pub fn parse_member(name: &str, data: &[u8]) -> Option<Endpoint> {
    let v: Value = serde_json::from_slice(data).ok()?;
    if v.get("status")?.as_str()? != "ALIVE" {
        return None;
    }
    let service = v.get("serviceEndpoint")?;
    Some(Endpoint {
        member: name.to_string(),
        shard: v.get("shard").and_then(Value::as_u64),
        host: service.get("host")?.as_str()?.to_string(),
        port: u16::try_from(service.get("port")?.as_u64()?).ok()?,
        additional: v
            .get("additionalEndpoints")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default(),
    })
}

fn print_endpoints(endpoints: &[Endpoint], plain: bool) -> Result<Status> {
    let mut out = Writer::stdout();
    for e in endpoints {
        if plain {
            out.text(&format!("{}:{}\n", e.host, e.port))?;
        } else {
            out.record(&json!({
                "type": "endpoint",
                "member": e.member,
                "shard": e.shard,
                "host": e.host,
                "port": e.port,
                "additionalEndpoints": e.additional,
            }))?;
        }
    }
    out.finish()?;
    Ok(if endpoints.is_empty() {
        eprintln!("announce: no live members");
        Status::Partial
    } else {
        Status::Done
    })
}

// --- output ---

/// What announce reports: one line per join or leave, JSON or for a person.
pub struct Out {
    human: bool,
    out: Writer<std::io::Stdout>,
}

impl Out {
    fn new(human: bool) -> Out {
        Out {
            human,
            out: Writer::stdout(),
        }
    }

    fn change(
        &mut self,
        op: &str,
        task: &str,
        path: &str,
        node: &str,
        endpoint: &str,
    ) -> Result<()> {
        if self.human {
            return self
                .out
                .text(&format!("{op:<5}  {task}  {path}/{node}  {endpoint}\n"));
        }
        self.out.record(&json!({
            "type": "member",
            "op": op,
            "task": task,
            "path": path,
            "member": node,
            "endpoint": endpoint,
        }))
    }

    fn join(&mut self, m: &Member, node: &str) -> Result<()> {
        self.change("join", &m.task, &m.path, node, &m.endpoint)
    }

    fn leave(&mut self, m: &Member, node: &str) -> Result<()> {
        self.change("leave", &m.task, &m.path, node, &m.endpoint)
    }

    /// A member found in a serverset that no task accounts for.
    fn stale(&mut self, path: &str, node: &str, data: &[u8]) -> Result<()> {
        let endpoint = parse_member(node, data)
            .map(|e| format!("{}:{}", e.host, e.port))
            .unwrap_or_default();
        self.change("leave", "", path, node, &endpoint)
    }

    fn flush(&mut self) -> Result<()> {
        self.out.flush()
    }

    fn finish(self) -> Result<()> {
        self.out.finish()
    }
}

// --- following ---

/// A member a follower holds, with its node (ZooKeeper) or file name.
#[derive(Clone, Debug)]
pub struct Held {
    pub member: Member,
    pub node: String,
}

/// What a follower needs of a backend.
trait Publisher {
    /// Gets ready to publish; false while the backend cannot be reached. Members the
    /// backend lost (a ZooKeeper session that expired) are dropped from `held`, and members
    /// it has that `held` lacks are adopted or removed.
    fn tend(&mut self, held: &mut BTreeMap<u32, Held>, want: &BTreeMap<u32, Member>) -> bool;
    /// Publishes `joins`, returning the node of each that is now published.
    fn join(&mut self, joins: &[&Member]) -> Vec<Option<String>>;
    /// Removes `leaves`, returning whether each is gone.
    fn leave(&mut self, leaves: &[&Held]) -> Vec<bool>;
    /// Ends publishing: a ZooKeeper session is closed, so its members go at once.
    fn close(&mut self, held: &mut BTreeMap<u32, Held>);
    /// The ZooKeeper session holding the members, if any.
    fn session(&self) -> Option<i64> {
        None
    }
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop(_: nix::libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// Follows the state: every change of it (and every few seconds in any case) the
/// serversets are brought in step, leaves before joins, and the `announced` marks in the
/// state are set to what is held.
fn follow(
    state: &mut State,
    lock: &mut File,
    publisher: &mut dyn Publisher,
    this_host: &str,
    out: &mut Out,
) -> Result<Status> {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    let action = SigAction::new(
        SigHandler::Handler(on_stop),
        SaFlags::empty(),
        SigSet::empty(),
    );
    for sig in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        // SAFETY: the handler only stores to an atomic.
        unsafe { sigaction(sig, &action) }.context("installing signal handlers")?;
    }
    let mut held: BTreeMap<u32, Held> = BTreeMap::new();
    // A new announcer holds nothing yet: marks left by one that died are cleared first.
    mark(state, &held)?;
    // What the state asks for is worked out again only when the state changed.
    let mut want = BTreeMap::new();
    let mut want_txid = None;
    let mut last_full = Instant::now();
    let mut session = None;
    while !STOP.load(Ordering::SeqCst) {
        let started = Instant::now();
        state.refresh()?;
        let due = last_full.elapsed() >= Duration::from_secs(5);
        let changed = want_txid != Some(state.view().txid);
        if changed || due {
            want = members(state.view(), this_host);
            want_txid = Some(state.view().txid);
        }
        let before_tend = held.len();
        let ready = publisher.tend(&mut held, &want);
        if publisher.session() != session {
            session = publisher.session();
            note_session(lock, session)?;
        }
        if !ready && held.len() != before_tend {
            mark(state, &held)?; // members lost with a session: no stop need wait for them
        }
        if ready && (changed || due || differs(&held, &want)) {
            step(publisher, &mut held, &want, out)?;
            let before = state.view().txid;
            mark(state, &held)?;
            // Marks alone are our own change, nothing to work out again; if another tool
            // committed meanwhile, the next round sees a txid it has not worked out.
            if want_txid == Some(before) && state.view().txid <= before + 1 {
                want_txid = Some(state.view().txid);
            }
            if due {
                last_full = Instant::now();
            }
        }
        if let Some(rest) = POLL.checked_sub(started.elapsed()) {
            std::thread::sleep(rest);
        }
    }
    publisher.close(&mut held);
    mark(state, &held)?;
    out.flush()?;
    Ok(Status::Done)
}

fn differs(held: &BTreeMap<u32, Held>, want: &BTreeMap<u32, Member>) -> bool {
    held.len() != want.len()
        || held
            .iter()
            .zip(want)
            .any(|((s, h), (w, m))| s != w || h.member != *m)
}

/// One round: members that must go leave first, then the missing ones join.
fn step(
    publisher: &mut dyn Publisher,
    held: &mut BTreeMap<u32, Held>,
    want: &BTreeMap<u32, Member>,
    out: &mut Out,
) -> Result<()> {
    let leaving: Vec<Held> = held
        .iter()
        .filter(|(slot, h)| want.get(slot) != Some(&h.member))
        .map(|(_, h)| h.clone())
        .collect();
    let refs: Vec<&Held> = leaving.iter().collect();
    for (h, gone) in leaving.iter().zip(publisher.leave(&refs)) {
        if gone {
            held.remove(&h.member.slot);
            out.leave(&h.member, &h.node)?;
        }
    }
    let joins: Vec<&Member> = want
        .iter()
        .filter(|(slot, _)| !held.contains_key(slot))
        .map(|(_, m)| m)
        .collect();
    for (m, node) in joins.iter().zip(publisher.join(&joins)) {
        if let Some(node) = node {
            out.join(m, &node)?;
            held.insert(
                m.slot,
                Held {
                    member: (*m).clone(),
                    node,
                },
            );
        }
    }
    out.flush()
}

/// Sets each task's `announced` mark to whether a member of it is held.
fn mark(state: &mut State, held: &BTreeMap<u32, Held>) -> Result<()> {
    let wrong = |view: &View| -> Vec<u32> {
        let mut slots: Vec<u32> = view
            .tasks
            .iter()
            .filter(|(slot, t)| t.announced != held.contains_key(slot))
            .map(|(slot, _)| slot)
            .collect();
        slots.sort_unstable();
        slots
    };
    if wrong(state.view()).is_empty() {
        return Ok(());
    }
    state.write(|tx| {
        for slot in wrong(tx.view()) {
            let mut t = tx.view().tasks.get(slot).expect("listed above").clone();
            t.announced = !t.announced;
            tx.set(slot, Some(t));
        }
        Ok(())
    })
}

/// The follower's lock: one announce --follow per state file.
fn follower_lock(state: &Path) -> Result<File> {
    let path = follower_lock_path(state);
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o640)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    if f.try_lock().is_err() {
        let holder = std::fs::read_to_string(&path).unwrap_or_default();
        return Err(fail(
            Status::Temporary,
            format!(
                "another announce --follow (pid {}) holds {}",
                holder.trim(),
                path.display()
            ),
        ));
    }
    note_session(&mut f, None)?;
    Ok(f)
}

/// The lock file says who holds it: `PID [SESSION]`, the session in hex once there is one,
/// so that a one-shot run leaves the follower's own nodes to the follower.
fn note_session(lock: &mut File, session: Option<i64>) -> Result<()> {
    use std::io::{Seek, SeekFrom};
    let mut line = std::process::id().to_string();
    if let Some(s) = session {
        line.push_str(&format!(" {s:x}"));
    }
    lock.set_len(0)?;
    lock.seek(SeekFrom::Start(0))?;
    writeln!(lock, "{line}").context("writing the announce lock file")
}

/// The ZooKeeper session of the running follower, if one runs and has one.
fn follower_session(state: &Path) -> Option<i64> {
    if !follower_alive(state) {
        return None;
    }
    let text = std::fs::read_to_string(follower_lock_path(state)).ok()?;
    i64::from_str_radix(text.split_whitespace().nth(1)?, 16).ok()
}

fn follower_lock_path(state: &Path) -> PathBuf {
    let mut p = state.as_os_str().to_owned();
    p.push(".announce.lock");
    PathBuf::from(p)
}

/// Whether an `announce --follow` runs for this state file: reap waits for it to take an
/// instance out of discovery before stopping it.
pub fn follower_alive(state: &Path) -> bool {
    match File::open(follower_lock_path(state)) {
        Ok(f) => matches!(f.try_lock_shared(), Err(std::fs::TryLockError::WouldBlock)),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::Maintenance;
    use crate::task::Announce;

    /// One task's member, as members() renders it.
    fn member(slot: u32, t: &Task, job: &Job, host: &Host, this_host: &str) -> Option<Member> {
        let names: Vec<String> = job.ports.iter().map(|p| quoted(p)).collect();
        let address = endpoint_host(host, this_host);
        render(slot, t, job, &names, &quoted(&address), &address)
    }

    fn host(attrs: &[(&str, &str)]) -> Host {
        Host {
            name: "h1".into(),
            cpus: 1000,
            ram_mb: 1,
            disk_mb: 1,
            gpus: 0,
            ports: vec![(31000, 31999)],
            attrs: attrs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            cpu_factor: 1.0,
            transport: Transport::Local,
            maintenance: Maintenance::none(),
            access: Default::default(),
            liveness: Default::default(),
        }
    }

    #[test]
    fn a_member_is_finagle_json_with_every_named_port() {
        let job = Job {
            key: "www/prod/hello".into(),
            ports: vec!["admin".into(), "http".into()],
            announce: Some(Announce {
                path: "/formic/www/prod/hello".into(),
                primary: 1,
            }),
            rollout: Default::default(),
            runs: Default::default(),
            counts: Default::default(),
        };
        let mut t = Task::new(0, 3);
        t.state = TaskState::Running;
        t.healthy = true;
        t.ports[0] = 31001;
        t.ports[1] = 31002;
        let m = member(7, &t, &job, &host(&[("address", "10.0.0.5")]), "thishost").unwrap();
        let v: Value = serde_json::from_slice(&m.data).unwrap();
        assert_eq!(
            v,
            json!({"serviceEndpoint":{"host":"10.0.0.5","port":31002},
                   "additionalEndpoints":{"admin":{"host":"10.0.0.5","port":31001},
                                          "http":{"host":"10.0.0.5","port":31002}},
                   "shard":3,"status":"ALIVE"})
        );
        assert_eq!(
            (m.slot, m.task.as_str(), m.endpoint.as_str()),
            (7, "www/prod/hello/3", "10.0.0.5:31002")
        );
        // The record's address comes first.
        let mut h = host(&[("address", "10.0.0.5")]);
        h.access.address = "198.18.0.7".into();
        assert_eq!(endpoint_host(&h, "thishost"), "198.18.0.7");
        // Without an address, a local host is reached by this machine's name.
        let local = member(7, &t, &job, &host(&[]), "thishost").unwrap();
        assert_eq!(local.endpoint, "thishost:31002");
        // What is read back is what was written.
        let e = parse_member("member_0000000001", &m.data).unwrap();
        assert_eq!(
            (e.host.as_str(), e.port, e.shard),
            ("10.0.0.5", 31002, Some(3))
        );
        assert!(is_member(&t));
        t.healthy = false;
        assert!(!is_member(&t));
        t.healthy = true;
        t.state = TaskState::Killing;
        assert!(!is_member(&t));
    }

    #[test]
    fn members_not_alive_or_without_an_endpoint_are_not_read() {
        assert!(parse_member(
            "m",
            br#"{"serviceEndpoint":{"host":"h","port":1},"status":"DEAD"}"#
        )
        .is_none());
        assert!(parse_member("m", br#"{"status":"ALIVE"}"#).is_none());
        assert!(parse_member(
            "m",
            br#"{"serviceEndpoint":{"host":"h","port":70000},"status":"ALIVE"}"#
        )
        .is_none());
        assert!(parse_member("m", b"not json").is_none());
    }
}
