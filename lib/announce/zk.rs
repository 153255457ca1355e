//! The ZooKeeper backend: members are ephemeral sequential `member_` nodes under the
//! serverset path, holding the member's JSON, as Finagle and Aurora write and read them.
//!
//! The protocol is the `zookeeper-client` crate's. Requests are pipelined: each call queues
//! its request when made, up to a window in flight, so a thousand requests cost about one
//! round trip and one group commit on the server rather than a thousand. Creates go a
//! hundred to a multi request, which the server parses and logs once.
//!
//! An ephemeral node lives as long as its session, so members are held by the follower. A
//! create whose answer is lost (the connection broke) may or may not have happened; the
//! path is then verified by listing it, and nodes of this session that duplicate a member
//! are deleted, so an instance never shows twice.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use anyhow::Result;
use zookeeper_client::{
    Acl, Acls, AuthId, Client, CreateMode, Error, MultiWriteResult, Permission, SessionState,
};

use super::{parse_member, Backend, Endpoint, Held, Member, Out, Publisher};
use crate::exit::{bad_input, fail, Status};

const PREFIX: &str = "member_";
/// Requests in flight at once.
const WINDOW: usize = 2000;
/// Creates sent together in one multi request.
const MULTI: usize = 100;
/// How often the follower checks that the nodes it holds are still there.
const CHECK_EVERY: Duration = Duration::from_secs(5);

/// How to reach ZooKeeper and what to create with.
pub struct Settings {
    connect: String,
    digest: Option<Vec<u8>>,
    acls: Vec<Acl>,
    session_timeout: Duration,
}

impl Settings {
    pub fn new(backend: &Backend, connect: &str) -> Result<Settings> {
        let digest = match &backend.zk_digest_file {
            None => None,
            Some(file) => Some(read_digest(file)?),
        };
        let acls = match digest {
            // Creator all, world read: clients read the members, only we change them.
            Some(_) => vec![
                Acl::new(Permission::ALL, AuthId::authed()),
                Acl::new(Permission::READ, AuthId::anyone()),
            ],
            None => Acls::anyone_all().to_vec(),
        };
        Ok(Settings {
            connect: connect.to_string(),
            digest,
            acls,
            session_timeout: Duration::from_secs_f64(backend.session_timeout),
        })
    }

    /// Opens a session. `eager` fails at once when no server answers (one-shot use);
    /// otherwise the client keeps trying every server for a session timeout.
    fn open(&self, eager: bool) -> Result<Client, Error> {
        let mut connector = Client::connector().with_session_timeout(self.session_timeout);
        if let Some(d) = &self.digest {
            connector = connector.with_auth("digest", d);
        }
        if eager {
            connector = connector.with_fail_eagerly();
        }
        block_on(connector.connect(&self.connect))
    }

    fn connect_once(&self) -> Result<Client> {
        self.open(true).map_err(|e| self.trouble(e))
    }

    /// An error of a one-shot run, with the status it deserves.
    fn trouble(&self, e: Error) -> anyhow::Error {
        match e {
            Error::NoAuth | Error::AuthFailed => fail(
                Status::Permission,
                format!("ZooKeeper at {}: {e}", self.connect),
            ),
            Error::BadArguments(_) => fail(Status::Usage, format!("--zk {}: {e}", self.connect)),
            e => fail(
                Status::Unavailable,
                format!("ZooKeeper at {} is unavailable: {e}", self.connect),
            ),
        }
    }
}

/// The digest secret, `USER:PASSWORD` on the first line of a file nobody else may read.
fn read_digest(file: &std::path::Path) -> Result<Vec<u8>> {
    let meta = std::fs::metadata(file)
        .map_err(|e| fail(Status::BadInput, format!("{}: {e}", file.display())))?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(fail(
            Status::Permission,
            format!(
                "{}: a secret must not be readable by others (chmod 600)",
                file.display()
            ),
        ));
    }
    let text = std::fs::read_to_string(file)
        .map_err(|e| fail(Status::BadInput, format!("{}: {e}", file.display())))?;
    let line = text.lines().next().unwrap_or("").trim();
    match line.split_once(':') {
        Some((user, pass)) if !user.is_empty() && !pass.is_empty() => Ok(line.as_bytes().to_vec()),
        _ => Err(bad_input(format!(
            "{}: expected USER:PASSWORD on its first line",
            file.display()
        ))),
    }
}

fn block_on<F: Future>(f: F) -> F::Output {
    futures::executor::block_on(f)
}

/// Runs requests with at most [`WINDOW`] in flight, answers in order. The window slides: a
/// request is made (and so sent) as soon as an earlier one is answered, so the pipeline
/// never drains between batches.
fn pipelined<I, F>(requests: I) -> Vec<F::Output>
where
    I: IntoIterator<Item = F>,
    F: Future,
{
    pipelined_by(WINDOW, requests)
}

fn pipelined_by<I, F>(window: usize, requests: I) -> Vec<F::Output>
where
    I: IntoIterator<Item = F>,
    F: Future,
{
    use futures::stream::StreamExt;
    block_on(
        futures::stream::iter(requests)
            .buffered(window)
            .collect::<Vec<_>>(),
    )
}

/// Deletes nodes, pipelined; one already gone counts as deleted.
fn delete_all(client: &Client, nodes: &[String]) -> Vec<Result<(), Error>> {
    pipelined(nodes.iter().map(|p| client.delete(p, None)))
        .into_iter()
        .map(|r| match r {
            Err(Error::NoNode) => Ok(()),
            r => r,
        })
        .collect()
}

fn node_path(path: &str, node: &str) -> String {
    format!("{path}/{node}")
}

/// A serverset's member nodes with their data and owning session; None when the path
/// does not exist.
type Nodes = Vec<(String, Vec<u8>, i64)>;

fn read_members(client: &Client, path: &str) -> Result<Option<Nodes>, Error> {
    let children = match block_on(client.list_children(path)) {
        Err(Error::NoNode) => return Ok(None),
        r => r?,
    };
    let names: Vec<String> = children
        .into_iter()
        .filter(|c| c.starts_with(PREFIX))
        .collect();
    let paths: Vec<String> = names.iter().map(|n| node_path(path, n)).collect();
    let answers = pipelined(paths.iter().map(|p| client.get_data(p)));
    let mut out = Vec::new();
    for (name, answer) in names.into_iter().zip(answers) {
        match answer {
            Ok((data, stat)) => out.push((name, data, stat.ephemeral_owner)),
            Err(Error::NoNode) => {} // gone meanwhile
            Err(e) => return Err(e),
        }
    }
    Ok(Some(out))
}

/// The live members at `path`, by shard.
pub fn resolve(settings: &Settings, path: &str) -> Result<Vec<Endpoint>> {
    let client = settings.connect_once()?;
    let nodes = read_members(&client, path)
        .map_err(|e| settings.trouble(e))?
        .unwrap_or_default();
    let mut endpoints = Vec::new();
    for (name, data, _) in nodes {
        match parse_member(&name, &data) {
            Some(e) => endpoints.push(e),
            None => eprintln!("announce: {path}/{name}: not a live serverset member; skipped"),
        }
    }
    endpoints.sort_by(|a, b| (a.shard, &a.member).cmp(&(b.shard, &b.member)));
    Ok(endpoints)
}

/// One-shot: removes every member no task accounts for, and counts the wanted members that
/// are missing (only a follower's session can hold them). The nodes of the running
/// follower's session are its own to manage: it may be ahead of the state read here.
pub fn sync(
    settings: &Settings,
    want: &BTreeMap<u32, Member>,
    paths: &[String],
    follower: Option<i64>,
    out: &mut Out,
) -> Result<usize> {
    let client = settings.connect_once()?;
    let mut wanted: HashMap<(&str, &[u8]), usize> = HashMap::new();
    for m in want.values() {
        *wanted.entry((&m.path, &m.data)).or_default() += 1;
    }
    let mut all_paths: BTreeSet<&str> = paths.iter().map(String::as_str).collect();
    all_paths.extend(want.values().map(|m| m.path.as_str()));
    let mut present = 0;
    for path in all_paths {
        let nodes = read_members(&client, path)
            .map_err(|e| settings.trouble(e))?
            .unwrap_or_default();
        let (keep, stale): (Vec<_>, Vec<_>) = nodes.into_iter().partition(|(_, data, owner)| {
            wanted.contains_key(&(path, &data[..])) || Some(*owner) == follower
        });
        let mut seen = HashSet::new();
        present += keep
            .iter()
            .filter(|(_, data, _)| {
                wanted.contains_key(&(path, &data[..])) && seen.insert(data.clone())
            })
            .count();
        let nodes: Vec<String> = stale.iter().map(|(n, _, _)| node_path(path, n)).collect();
        for ((name, data, _), r) in stale.iter().zip(delete_all(&client, &nodes)) {
            r.map_err(|e| settings.trouble(e))?;
            out.stale(path, name, data)?;
        }
    }
    Ok(want.len().saturating_sub(present))
}

/// The follower's side: a session, reopened whenever it is lost.
pub struct Holder {
    settings: Settings,
    client: Option<Client>,
    /// Paths whose nodes must be listed before the next round: after a new session, or a
    /// request whose outcome is unknown.
    unsure: BTreeSet<String>,
    /// Serverset paths known to exist.
    made: HashSet<String>,
    retry_at: Instant,
    backoff: Duration,
    down: bool,
    checked: Instant,
    /// The session whose leftovers were looked for.
    verified_session: i64,
    /// The last error reported, so a lasting one is said once.
    last_error: Option<String>,
}

impl Holder {
    pub fn new(settings: Settings) -> Holder {
        Holder {
            settings,
            client: None,
            unsure: BTreeSet::new(),
            made: HashSet::new(),
            retry_at: Instant::now(),
            backoff: Duration::from_millis(100),
            down: false,
            checked: Instant::now(),
            verified_session: 0,
            last_error: None,
        }
    }

    fn session_id(&self) -> i64 {
        self.client.as_ref().map_or(0, |c| c.session_id().0)
    }

    /// Opens a session when there is none; false while ZooKeeper cannot be reached.
    fn ensure_session(&mut self, held: &mut BTreeMap<u32, Held>) -> bool {
        if let Some(c) = &self.client {
            match c.state() {
                SessionState::Expired | SessionState::Closed | SessionState::AuthFailed => {
                    // Every ephemeral node of the session is gone with it.
                    eprintln!(
                        "announce: ZooKeeper session {:#x} ended ({:?}); re-creating {} members",
                        self.session_id(),
                        c.state(),
                        held.len()
                    );
                    held.clear();
                    self.client = None;
                }
                _ => return true,
            }
        }
        if Instant::now() < self.retry_at {
            return false;
        }
        match self.settings.open(true) {
            Ok(c) => {
                self.client = Some(c);
                eprintln!(
                    "announce: connected to ZooKeeper at {} (session {:#x})",
                    self.settings.connect,
                    self.session_id()
                );
                self.down = false;
                self.backoff = Duration::from_millis(100);
                true
            }
            Err(e) => {
                if !self.down {
                    eprintln!(
                        "announce: ZooKeeper at {} is unavailable: {e}; retrying",
                        self.settings.connect
                    );
                    self.down = true;
                }
                self.retry_at = Instant::now() + self.backoff;
                self.backoff = (self.backoff * 2).min(Duration::from_secs(2));
                false
            }
        }
    }

    /// Lists `path` and makes it agree with `held`: nodes of this session that are held
    /// stay, those that match a wanted member not yet held are adopted, and every other
    /// node (a duplicate of a create whose answer was lost, or a member of an announcer
    /// that died) is deleted. Held nodes that are not there any more are forgotten, to be
    /// created again.
    fn verify(
        &mut self,
        path: &str,
        held: &mut BTreeMap<u32, Held>,
        want: &BTreeMap<u32, Member>,
    ) -> Result<(), Error> {
        let session = self.session_id();
        let client = self.client.as_ref().expect("a session is open");
        let Some(nodes) = read_members(client, path)? else {
            held.retain(|_, h| h.member.path != path);
            self.made.remove(path);
            return Ok(());
        };
        let names: HashSet<&str> = nodes.iter().map(|(n, _, _)| n.as_str()).collect();
        held.retain(|_, h| h.member.path != path || names.contains(h.node.as_str()));
        let mut held_nodes: HashSet<String> = held
            .values()
            .filter(|h| h.member.path == path)
            .map(|h| h.node.clone())
            .collect();
        let mut unheld: HashMap<&[u8], Vec<&Member>> = HashMap::new();
        for m in want.values() {
            if m.path == path && !held.contains_key(&m.slot) {
                unheld.entry(&m.data).or_default().push(m);
            }
        }
        let mut doomed = Vec::new();
        for (name, data, owner) in &nodes {
            if held_nodes.contains(name) {
                continue;
            }
            let adoptable = unheld.get_mut(&data[..]).and_then(Vec::pop);
            match adoptable {
                Some(m) if *owner == session => {
                    held.insert(
                        m.slot,
                        Held {
                            member: m.clone(),
                            node: name.clone(),
                        },
                    );
                    held_nodes.insert(name.clone());
                }
                _ => doomed.push(node_path(path, name)),
            }
        }
        delete_all(client, &doomed)
            .into_iter()
            .collect::<Result<(), Error>>()?;
        self.made.insert(path.to_string());
        Ok(())
    }

    /// Lists each path where members are held; a path missing one of them (someone
    /// deleted it) is verified in full, and the member created again.
    fn check(&mut self, held: &BTreeMap<u32, Held>) {
        let client = self.client.as_ref().expect("a session is open");
        let mut nodes: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for h in held.values() {
            nodes.entry(&h.member.path).or_default().push(&h.node);
        }
        let paths: Vec<&str> = nodes.keys().copied().collect();
        let answers = pipelined(paths.iter().map(|p| client.list_children(p)));
        for (path, answer) in paths.into_iter().zip(answers) {
            let complete = answer.is_ok_and(|children| {
                let present: HashSet<&str> = children.iter().map(String::as_str).collect();
                nodes[path].iter().all(|n| present.contains(n))
            });
            if !complete {
                self.unsure.insert(path.to_string());
            }
        }
    }

    /// Creates a serverset path (and its parents) once.
    fn make_path(&mut self, path: &str) -> Result<(), Error> {
        if self.made.contains(path) {
            return Ok(());
        }
        let client = self.client.as_ref().expect("a session is open");
        let options = CreateMode::Persistent.with_acls(Acls::new(&self.settings.acls));
        match block_on(client.mkdir(path, &options)) {
            Ok(()) | Err(Error::NodeExists) => {
                self.made.insert(path.to_string());
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    fn note(&mut self, path: &str, what: &str, e: &Error) {
        let line = format!("announce: {what} under {path}: {e}; will check and retry");
        if self.last_error.as_ref() != Some(&line) {
            eprintln!("{line}");
            self.last_error = Some(line);
        }
        self.unsure.insert(path.to_string());
        if matches!(e, Error::NoNode) {
            self.made.remove(path);
        }
    }
}

impl Publisher for Holder {
    fn tend(&mut self, held: &mut BTreeMap<u32, Held>, want: &BTreeMap<u32, Member>) -> bool {
        if !self.ensure_session(held) {
            return false;
        }
        if self.session_id() != self.verified_session {
            // A new session: whatever a former one left is checked, path by path.
            self.unsure.extend(want.values().map(|m| m.path.clone()));
            self.made.clear();
            self.verified_session = self.session_id();
        }
        if self.client.as_ref().map(Client::state) != Some(SessionState::SyncConnected) {
            return false;
        }
        if self.checked.elapsed() >= CHECK_EVERY {
            self.check(held);
            self.checked = Instant::now();
        }
        while let Some(path) = self.unsure.first().cloned() {
            if let Err(e) = self.verify(&path, held, want) {
                eprintln!("announce: checking {path}: {e}");
                return false;
            }
            self.unsure.remove(&path);
        }
        true
    }

    fn join(&mut self, joins: &[&Member]) -> Vec<Option<String>> {
        let mut results = vec![None; joins.len()];
        let paths: BTreeSet<&str> = joins.iter().map(|m| m.path.as_str()).collect();
        let mut ready = HashSet::new();
        for path in paths {
            match self.make_path(path) {
                Ok(()) => {
                    ready.insert(path);
                }
                Err(e) => self.note(path, "creating the serverset", &e),
            }
        }
        let todo: Vec<usize> = (0..joins.len())
            .filter(|&i| ready.contains(joins[i].path.as_str()))
            .collect();
        let client = self.client.as_ref().expect("tended first");
        let options = CreateMode::EphemeralSequential.with_acls(Acls::new(&self.settings.acls));
        let prefixes: Vec<String> = todo
            .iter()
            .map(|&i| node_path(&joins[i].path, PREFIX))
            .collect();
        // Creates go MULTI to a request (one multi, applied as one transaction): a hundred
        // members cost the server one request to parse and log, not a hundred.
        let chunks: Vec<Vec<(usize, &String)>> = todo
            .iter()
            .copied()
            .zip(&prefixes)
            .collect::<Vec<_>>()
            .chunks(MULTI)
            .map(<[_]>::to_vec)
            .collect();
        let answers = pipelined_by(
            WINDOW / MULTI,
            chunks.iter().map(|chunk| {
                let mut multi = client.new_multi_writer();
                let added = chunk.iter().try_for_each(|&(i, prefix)| {
                    multi.add_create(prefix, &joins[i].data, &options)
                });
                let commit = added.map(|()| multi.commit());
                async move {
                    match commit {
                        Ok(commit) => commit.await.map_err(Error::from),
                        Err(e) => Err(e),
                    }
                }
            }),
        );
        let mut failed = Vec::new();
        for (chunk, answer) in chunks.iter().zip(answers) {
            match answer {
                Ok(created) => {
                    for (&(i, _), result) in chunk.iter().zip(created) {
                        if let MultiWriteResult::Create { path, .. } = result {
                            let node = path.rsplit('/').next().unwrap_or_default();
                            results[i] = Some(node.to_string());
                        }
                    }
                }
                Err(e) => failed.push((joins[chunk[0].0].path.clone(), e)),
            }
        }
        for (path, e) in failed {
            self.note(&path, "creating a member", &e);
        }
        results
    }

    fn leave(&mut self, leaves: &[&Held]) -> Vec<bool> {
        let client = self.client.as_ref().expect("tended first");
        let paths: Vec<String> = leaves
            .iter()
            .map(|h| node_path(&h.member.path, &h.node))
            .collect();
        let answers = delete_all(client, &paths);
        let mut failed = Vec::new();
        let gone = leaves
            .iter()
            .zip(answers)
            .map(|(h, r)| match r {
                Ok(()) => true,
                Err(e) => {
                    failed.push((h.member.path.clone(), e));
                    false
                }
            })
            .collect();
        for (path, e) in failed {
            self.note(&path, "removing a member", &e);
        }
        gone
    }

    fn session(&self) -> Option<i64> {
        self.client.as_ref().map(|c| c.session_id().0)
    }

    fn close(&mut self, held: &mut BTreeMap<u32, Held>) {
        if let Some(client) = self.client.take() {
            // Dropping the last handle sends the session's close; its nodes go with it.
            // Wait for that to be done before the process exits.
            let mut watcher = client.state_watcher();
            drop(client);
            let deadline = Instant::now() + Duration::from_secs(2);
            while Instant::now() < deadline
                && !matches!(
                    watcher.state(),
                    SessionState::Closed | SessionState::Expired
                )
            {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        held.clear();
    }
}
