//! Tasks and the jobs they belong to, as the state file keeps them.
//!
//! A task is one instance of a job (`role/env/name/instance`). Its record carries what it
//! reserves on its host (the reservation), where it is in Aurora's life cycle, and how to
//! recognise its process. Jobs are kept once and referenced by slot, so a million tasks do
//! not repeat their job keys.

use crate::fixed::{Corrupt, Decoder, Encoder, TooLarge};
use crate::host::Millicores;

/// Task states, after Aurora's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TaskState {
    Pending = 0,
    Throttled = 1,
    Assigned = 2,
    Starting = 3,
    Running = 4,
    Killing = 5,
    Finished = 6,
    Failed = 7,
    Killed = 8,
    Lost = 9,
    Draining = 10,
    Preempting = 11,
}

/// Every state, in the order of their codes.
pub const STATES: [TaskState; 12] = [
    TaskState::Pending,
    TaskState::Throttled,
    TaskState::Assigned,
    TaskState::Starting,
    TaskState::Running,
    TaskState::Killing,
    TaskState::Finished,
    TaskState::Failed,
    TaskState::Killed,
    TaskState::Lost,
    TaskState::Draining,
    TaskState::Preempting,
];

impl TaskState {
    pub fn name(self) -> &'static str {
        match self {
            TaskState::Pending => "PENDING",
            TaskState::Throttled => "THROTTLED",
            TaskState::Assigned => "ASSIGNED",
            TaskState::Starting => "STARTING",
            TaskState::Running => "RUNNING",
            TaskState::Killing => "KILLING",
            TaskState::Finished => "FINISHED",
            TaskState::Failed => "FAILED",
            TaskState::Killed => "KILLED",
            TaskState::Lost => "LOST",
            TaskState::Draining => "DRAINING",
            TaskState::Preempting => "PREEMPTING",
        }
    }

    pub fn from_name(s: &str) -> Option<Self> {
        STATES.iter().copied().find(|st| st.name() == s)
    }

    /// Whether a task in this state holds a reservation on its host: from the moment it is
    /// assigned until its stop is complete.
    pub fn holds_resources(self) -> bool {
        matches!(
            self,
            TaskState::Assigned
                | TaskState::Starting
                | TaskState::Running
                | TaskState::Killing
                | TaskState::Draining
                | TaskState::Preempting
        )
    }
}

/// Why a task is in its state, kept in its record so that `reap tasks` says it without the
/// task's directory or its history: a code from a fixed list, since a task record has no
/// room for text. The words of the moment (what the supervisor could not do, say) travel in
/// the transition's event.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Reason {
    /// The state needs no reason (RUNNING, ASSIGNED, ...), or the record predates reasons.
    #[default]
    None = 0,
    /// The run ended by itself; its exit status says how.
    Exited = 1,
    /// Stopped by a `kill` record or `reap kill`.
    Killed = 2,
    /// Stopped for a task of a higher tier.
    Preempted = 3,
    /// Stopped because its host is draining.
    Drained = 4,
    /// Stopped because its health check failed.
    Unhealthy = 5,
    /// Its supervisor could not start it (no such program or user, a sandbox the task's
    /// user cannot reach, no formic-supervise).
    CouldNotStart = 6,
    /// Its supervisor gave up on it after it started.
    SupervisorGaveUp = 7,
    /// Its supervisor died without a final word.
    SupervisorGone = 8,
    /// No supervisor ever reported for it.
    NeverReported = 9,
    /// Its start was abandoned before a supervisor took it (its launch ended, or
    /// --start-grace passed).
    NeverStarted = 10,
    /// Stopped before it had started.
    StoppedBeforeStart = 11,
    /// A stop that did not end within the grace period and margin: SIGKILL.
    StopTimedOut = 12,
    /// Its supervisor was asked to stop by someone other than reap.
    SupervisorStopping = 13,
    /// Its task directory was held by another supervisor when launch came to start it.
    DirectoryBusy = 14,
    /// Its host was removed from the inventory with `offer remove --force`.
    HostRemoved = 15,
    /// Its host could not be reached for `--lost-after`.
    HostDown = 16,
    /// Stopped by an update, to be replaced by an instance of the new spec.
    Replaced = 17,
    /// Stopped because its host's drain reached its deadline, whatever its job's budget.
    DrainDeadline = 18,
}

const REASONS: [Reason; 19] = [
    Reason::None,
    Reason::Exited,
    Reason::Killed,
    Reason::Preempted,
    Reason::Drained,
    Reason::Unhealthy,
    Reason::CouldNotStart,
    Reason::SupervisorGaveUp,
    Reason::SupervisorGone,
    Reason::NeverReported,
    Reason::NeverStarted,
    Reason::StoppedBeforeStart,
    Reason::StopTimedOut,
    Reason::SupervisorStopping,
    Reason::DirectoryBusy,
    Reason::HostRemoved,
    Reason::HostDown,
    Reason::Replaced,
    Reason::DrainDeadline,
];

impl Reason {
    /// The words for it, in events, `reap tasks` and its JSON; empty for [`Reason::None`].
    pub fn text(self) -> &'static str {
        match self {
            Reason::None => "",
            Reason::Exited => "exited",
            Reason::Killed => "killed",
            Reason::Preempted => "preempted",
            Reason::Drained => "host draining",
            Reason::Unhealthy => "unhealthy",
            Reason::CouldNotStart => "could not start",
            Reason::SupervisorGaveUp => "supervisor gave up",
            Reason::SupervisorGone => "supervisor gone",
            Reason::NeverReported => "supervisor never reported",
            Reason::NeverStarted => "never started",
            Reason::StoppedBeforeStart => "stopped before it started",
            Reason::StopTimedOut => "stop timed out",
            Reason::SupervisorStopping => "supervisor stopping",
            Reason::DirectoryBusy => "task directory held by another supervisor",
            Reason::HostRemoved => "host removed",
            Reason::HostDown => "host down",
            Reason::Replaced => "replaced by an update",
            Reason::DrainDeadline => "host drain past its deadline",
        }
    }

    fn from_u8(code: u8) -> Result<Reason, Corrupt> {
        REASONS
            .get(code as usize)
            .copied()
            .ok_or_else(|| Corrupt(format!("task reason {code} is unknown")))
    }
}

/// No host: the task is pending, throttled or its host was removed.
pub const NO_HOST: u32 = u32::MAX;
/// The most named ports one task can hold.
pub const MAX_PORTS: usize = 8;

#[derive(Clone, Debug, PartialEq)]
pub struct Task {
    /// Slot of the task's job in the jobs table.
    pub job: u32,
    pub instance: u32,
    /// Slot of the host in the hosts table, or [`NO_HOST`].
    pub host: u32,
    pub state: TaskState,
    pub healthy: bool,
    pub failures: u16,
    pub pid: u32,
    /// Start time of `pid` (clock ticks since boot, /proc/PID/stat field 22): pid plus start
    /// time names a process uniquely, so a reused pid is never mistaken for the task.
    pub pid_start: u64,
    /// Reserved physical millicores on the host.
    pub cpus: Millicores,
    pub ram_mb: u64,
    pub disk_mb: u64,
    pub gpus: u32,
    /// Port numbers, in the order of the job's port names; 0 where unused.
    pub ports: [u16; MAX_PORTS],
    /// Hash of the job spec the task was placed from.
    pub spec: u64,
    /// Unix time the task entered its state.
    pub since: f64,
    /// THROTTLED tasks are not placed before this Unix time.
    pub not_before: f64,
    /// Exit status, or minus the signal number, of the last run.
    pub exit: i32,
    /// A live `announce --follow` holds a serverset member for this task. Set and cleared
    /// only by that announcer; a graceful stop waits for it to clear before the task is
    /// signalled, so clients stop being sent to an instance before it goes.
    pub announced: bool,
    /// How many times this instance has been assigned to a host: each placement launch
    /// commits starts a new incarnation. Records that act on a task (place, kill, preempt)
    /// name the incarnation they were decided on, so a decision made on an out-of-date view
    /// is refused rather than applied to what replaced it; a supervisor reports the
    /// incarnation it runs, so reap never takes one run's word for another's.
    pub incarnation: u32,
    /// The launch that recorded the current incarnation ASSIGNED: its pid and the low 32
    /// bits of its start time. When that launch is gone and no supervisor ever took the
    /// task, the start was abandoned and reap calls it off at once.
    pub launcher: (u32, u32),
    /// Why it is in its state.
    pub reason: Reason,
    /// Unix time it last turned healthy while running (0 while it is not healthy): an
    /// update's watch and a budget's healthy_for_s count from here, not from its start.
    pub healthy_since: f64,
    /// The run of a batch or cron job this incarnation belongs to (`cron::Runs`): 0 for a
    /// service and for a batch job's first run.
    pub run: u64,
}

impl Task {
    pub fn new(job: u32, instance: u32) -> Task {
        Task {
            job,
            instance,
            host: NO_HOST,
            state: TaskState::Pending,
            healthy: false,
            failures: 0,
            pid: 0,
            pid_start: 0,
            cpus: 0,
            ram_mb: 0,
            disk_mb: 0,
            gpus: 0,
            ports: [0; MAX_PORTS],
            spec: 0,
            since: 0.0,
            not_before: 0.0,
            exit: 0,
            announced: false,
            incarnation: 0,
            launcher: (0, 0),
            reason: Reason::None,
            healthy_since: 0.0,
            run: 0,
        }
    }

    /// The exit status of its last run, once that run is over (it means nothing before).
    pub fn exit_status(&self) -> Option<i32> {
        matches!(
            self.state,
            TaskState::Finished | TaskState::Failed | TaskState::Killed | TaskState::Throttled
        )
        .then_some(self.exit)
    }

    /// This record in `state` with nothing reserved (terminal, pending and throttled
    /// tasks hold no cpus, memory, disk, gpus or ports) and no process.
    pub fn freed(&self, state: TaskState, now: f64) -> Task {
        let mut r = self.clone();
        r.state = state;
        r.since = now;
        r.healthy = false;
        r.healthy_since = 0.0;
        r.pid = 0;
        r.pid_start = 0;
        r.cpus = 0;
        r.ram_mb = 0;
        r.disk_mb = 0;
        r.gpus = 0;
        r.ports = [0; MAX_PORTS];
        if matches!(state, TaskState::Pending | TaskState::Throttled) {
            r.host = NO_HOST;
        }
        r
    }
}

pub const TASK_SLOT_SIZE: usize = 128;
/// Bytes of a task record's fields: layout 2 adds `announced` to layout 1, layout 3
/// `incarnation` and `launcher`, layout 4 `reason`, layout 5 `healthy_since`. Each only
/// appends, so a record of an older layout reads with the new fields at their defaults
/// (a task healthy then has been healthy since it entered its state). Layout 6 adds `run`
/// and, to make room for it in the slot, keeps ram_mb and disk_mb in 32 bits (4 PiB, more
/// than any task may ask: `MB_MAX`).
const TASK_BODY_1: usize = 96;
const TASK_BODY_2: usize = 97;
const TASK_BODY_3: usize = 109;
const TASK_BODY_4: usize = 110;
const TASK_BODY_5: usize = 118;
const TASK_BODY: usize = 118;
const TASK_LAYOUT: u8 = 6;

/// The most ram_mb or disk_mb one task may hold: what its record keeps (4 PiB).
pub const MB_MAX: u64 = u32::MAX as u64;

impl Task {
    pub fn encode(&self, slot: &mut [u8]) -> Result<(), TooLarge> {
        let room = slot.len();
        let mut e = Encoder::new(slot);
        e.u32(self.job);
        e.u32(self.instance);
        e.u32(self.host);
        e.u8(self.state as u8);
        e.u8(self.healthy as u8);
        e.u16(self.failures);
        e.u32(self.pid);
        e.u64(self.pid_start);
        e.u32(self.cpus);
        for mb in [self.ram_mb, self.disk_mb] {
            // Checked against MB_MAX where a task is asked for (job spec, place record).
            let Ok(mb) = u32::try_from(mb) else {
                return Err(TooLarge {
                    needed: usize::MAX,
                    room,
                });
            };
            e.u32(mb);
        }
        e.u32(self.gpus);
        for p in self.ports {
            e.u16(p);
        }
        e.u64(self.spec);
        e.f64(self.since);
        e.f64(self.not_before);
        e.i32(self.exit);
        e.u8(self.announced as u8);
        e.u32(self.incarnation);
        e.u32(self.launcher.0);
        e.u32(self.launcher.1);
        e.u8(self.reason as u8);
        e.f64(self.healthy_since);
        e.u64(self.run);
        e.seal(TASK_LAYOUT)
    }

    pub fn decode(version: u8, body: &[u8]) -> Result<Task, Corrupt> {
        let len = match version {
            1 => TASK_BODY_1,
            2 => TASK_BODY_2,
            3 => TASK_BODY_3,
            4 => TASK_BODY_4,
            5 => TASK_BODY_5,
            TASK_LAYOUT => TASK_BODY,
            _ => return Err(Corrupt(format!("task record layout {version} is unknown"))),
        };
        // Slicing to the exact layout length first lets the compiler drop the bounds check
        // of every field read: this runs a million times when a fleet's state is opened.
        let body = body
            .get(..len)
            .ok_or_else(|| Corrupt("task slot too short".into()))?;
        let mut d = Decoder::new(body);
        let job = d.u32()?;
        let instance = d.u32()?;
        let host = d.u32()?;
        let state = *STATES
            .get(d.u8()? as usize)
            .ok_or_else(|| Corrupt("bad task state".into()))?;
        let healthy = d.u8()? != 0;
        let failures = d.u16()?;
        let pid = d.u32()?;
        let pid_start = d.u64()?;
        let cpus = d.u32()?;
        let (ram_mb, disk_mb) = match version >= 6 {
            true => (d.u32()? as u64, d.u32()? as u64),
            false => (d.u64()?, d.u64()?),
        };
        let gpus = d.u32()?;
        let mut ports = [0u16; MAX_PORTS];
        for p in &mut ports {
            *p = d.u16()?;
        }
        let mut t = Task {
            job,
            instance,
            host,
            state,
            healthy,
            failures,
            pid,
            pid_start,
            cpus,
            ram_mb,
            disk_mb,
            gpus,
            ports,
            spec: d.u64()?,
            since: d.f64()?,
            not_before: d.f64()?,
            exit: d.i32()?,
            announced: version >= 2 && d.u8()? != 0,
            incarnation: 0,
            launcher: (0, 0),
            reason: Reason::None,
            healthy_since: 0.0,
            run: 0,
        };
        if version >= 3 {
            t.incarnation = d.u32()?;
            t.launcher = (d.u32()?, d.u32()?);
        }
        if version >= 4 {
            t.reason = Reason::from_u8(d.u8()?)?;
        }
        t.healthy_since = match version >= 5 {
            true => d.f64()?,
            false if t.healthy => t.since,
            false => 0.0,
        };
        if version >= 6 {
            t.run = d.u64()?;
        }
        Ok(t)
    }
}

/// A job as the state knows it: its key, the names of its ports, and where its instances
/// are announced.
#[derive(Clone, Debug, PartialEq)]
pub struct Job {
    /// `role/env/name`.
    pub key: String,
    pub ports: Vec<String>,
    pub announce: Option<Announce>,
    /// Its updates: the spec rolled out everywhere, the current update (layout 3).
    pub rollout: crate::rollout::Rollout,
    /// Its runs, if it is a batch or cron job (layout 4).
    pub runs: crate::cron::Runs,
    /// What happened to its tasks, counted (layout 5).
    pub counts: crate::counts::Counts,
}

/// A job's serverset: members go under `path`, with the port `ports[primary]` as their
/// service endpoint and every named port as an additional endpoint.
#[derive(Clone, Debug, PartialEq)]
pub struct Announce {
    pub path: String,
    pub primary: u8,
}

pub const JOB_SLOT_SIZE: usize = 512;
/// Layout 2 adds the announce block to layout 1, layout 3 the rollout, layout 4 the runs,
/// layout 5 the counts.
const JOB_LAYOUT: u8 = 5;

/// A job key is `role/env/name`, each part of letters, digits and `._-`, not starting with
/// a dot: the parts name directories on hosts, so `.` and `..` must never be one.
pub fn check_job_key(key: &str) -> Result<(), String> {
    let parts: Vec<&str> = key.split('/').collect();
    let ok_part = |p: &&str| {
        !p.is_empty()
            && p.len() <= 64
            && !p.starts_with('.')
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
    };
    if parts.len() != 3 || !parts.iter().all(ok_part) {
        return Err(format!(
            "job key {key:?} is not role/env/name (letters, digits, . _ -; no part starting with .)"
        ));
    }
    Ok(())
}

/// A job's key, port names and announce block: the part of its record whose size is the
/// spec's.
fn encode_names(e: &mut Encoder, key: &str, ports: &[String], announce: Option<&Announce>) {
    e.str8(key);
    e.u8(ports.len() as u8);
    for p in ports {
        e.str8(p);
    }
    match announce {
        None => e.u8(0),
        Some(a) => {
            e.u8(1);
            e.str8(&a.path);
            e.u8(a.primary);
        }
    }
}

/// Whether the record of a job of this key, port names and announce block fits its slot
/// at its largest, an update under way.
pub fn job_record_fits(
    key: &str,
    ports: &[String],
    announce: Option<&Announce>,
) -> Result<(), TooLarge> {
    let mut slot = [0u8; JOB_SLOT_SIZE];
    let mut e = Encoder::new(&mut slot);
    encode_names(&mut e, key, ports, announce);
    crate::rollout::Rollout::largest().encode(&mut e);
    crate::cron::Runs::default().encode(&mut e);
    crate::counts::Counts::default().encode(&mut e);
    e.fits()
}

impl Job {
    pub fn encode(&self, slot: &mut [u8]) -> Result<(), TooLarge> {
        let mut e = Encoder::new(slot);
        encode_names(&mut e, &self.key, &self.ports, self.announce.as_ref());
        self.rollout.encode(&mut e);
        self.runs.encode(&mut e);
        self.counts.encode(&mut e);
        e.seal(JOB_LAYOUT)
    }

    pub fn decode(version: u8, body: &[u8]) -> Result<Job, Corrupt> {
        if !(1..=JOB_LAYOUT).contains(&version) {
            return Err(Corrupt(format!("job record layout {version} is unknown")));
        }
        let mut d = Decoder::new(body);
        let key = d.str8()?;
        let n = d.u8()? as usize;
        let ports: Vec<String> = (0..n).map(|_| d.str8()).collect::<Result<_, _>>()?;
        let announce = match version >= 2 && d.u8()? != 0 {
            false => None,
            true => {
                let path = d.str8()?;
                let primary = d.u8()?;
                if primary as usize >= ports.len() {
                    return Err(Corrupt("announce names a port the job lacks".into()));
                }
                Some(Announce { path, primary })
            }
        };
        let rollout = match version >= 3 {
            true => crate::rollout::Rollout::decode(&mut d)?,
            false => crate::rollout::Rollout::default(),
        };
        let runs = match version >= 4 {
            true => crate::cron::Runs::decode(&mut d)?,
            false => crate::cron::Runs::default(),
        };
        let counts = match version >= 5 {
            true => crate::counts::Counts::decode(&mut d)?,
            false => crate::counts::Counts::default(),
        };
        Ok(Job {
            key,
            ports,
            announce,
            rollout,
            runs,
            counts,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixed::{open_slot, Slot};

    fn body(slot: &[u8]) -> &[u8] {
        match open_slot(slot).unwrap() {
            Slot::Live { body, .. } => body,
            Slot::Empty => panic!("empty slot"),
        }
    }

    /// A task as layout 5 wrote it: ram_mb and disk_mb in 64 bits, no run.
    fn encode_5(t: &Task, slot: &mut [u8]) {
        let mut e = Encoder::new(slot);
        e.u32(t.job);
        e.u32(t.instance);
        e.u32(t.host);
        e.u8(t.state as u8);
        e.u8(t.healthy as u8);
        e.u16(t.failures);
        e.u32(t.pid);
        e.u64(t.pid_start);
        e.u32(t.cpus);
        e.u64(t.ram_mb);
        e.u64(t.disk_mb);
        e.u32(t.gpus);
        for p in t.ports {
            e.u16(p);
        }
        e.u64(t.spec);
        e.f64(t.since);
        e.f64(t.not_before);
        e.i32(t.exit);
        e.u8(t.announced as u8);
        e.u32(t.incarnation);
        e.u32(t.launcher.0);
        e.u32(t.launcher.1);
        e.u8(t.reason as u8);
        e.f64(t.healthy_since);
        e.seal(5).unwrap();
    }

    /// Layout 6 keeps ram and disk in 32 bits and adds the run: a task of layout 5 reads
    /// with its sizes and as of run 0, and a size past `MB_MAX` does not encode.
    #[test]
    fn records_of_layout_5_still_read() {
        let mut t = Task::new(3, 4);
        t.state = TaskState::Finished;
        (t.ram_mb, t.disk_mb, t.healthy_since, t.incarnation) = (MB_MAX, 1 << 20, 7.5, 9);
        let mut slot = [0u8; TASK_SLOT_SIZE];
        encode_5(&t, &mut slot);
        assert_eq!(Task::decode(5, body(&slot)).unwrap(), t);
        t.run = 1_764_000_000;
        t.encode(&mut slot).unwrap();
        assert_eq!(Task::decode(TASK_LAYOUT, body(&slot)).unwrap(), t);
        assert!(Task::decode(TASK_LAYOUT, &body(&slot)[..TASK_BODY - 1]).is_err());
        t.disk_mb = MB_MAX + 1;
        assert!(t.encode(&mut slot).is_err(), "disk past MB_MAX");
    }

    /// Layouts 2 to 5 only append, so a state written by layout 1 reads as never announced
    /// and one of layout 2 as at incarnation 0.
    #[test]
    fn records_of_layout_1_still_read() {
        let mut t = Task::new(3, 4);
        t.state = TaskState::Running;
        t.announced = true;
        let mut slot = [0u8; TASK_SLOT_SIZE];
        encode_5(&t, &mut slot);
        assert_eq!(Task::decode(5, body(&slot)).unwrap(), t);
        let old = Task::decode(1, body(&slot)).unwrap();
        assert_eq!(
            old,
            Task {
                announced: false,
                ..t.clone()
            }
        );
        // Layout 3 only appends too: a task of layout 2 is at incarnation 0.
        t.incarnation = 7;
        t.launcher = (1234, 5678);
        encode_5(&t, &mut slot);
        assert_eq!(Task::decode(5, body(&slot)).unwrap(), t);
        assert_eq!(
            Task::decode(2, body(&slot)).unwrap(),
            Task {
                incarnation: 0,
                launcher: (0, 0),
                reason: Reason::None,
                ..t.clone()
            }
        );
        // Layout 4 only appends too: a task of layout 3 has no reason.
        t.reason = Reason::StopTimedOut;
        encode_5(&t, &mut slot);
        assert_eq!(Task::decode(5, body(&slot)).unwrap(), t);
        assert_eq!(
            Task::decode(3, body(&slot)).unwrap(),
            Task {
                reason: Reason::None,
                ..t.clone()
            }
        );
        // Layout 5 only appends too: a task of layout 4 healthy then has been so since it
        // entered its state.
        (t.healthy, t.since, t.healthy_since) = (true, 100.0, 130.0);
        encode_5(&t, &mut slot);
        assert_eq!(Task::decode(5, body(&slot)).unwrap(), t);
        assert_eq!(
            Task::decode(4, body(&slot)).unwrap(),
            Task {
                healthy_since: 100.0,
                ..t.clone()
            }
        );
        // The lengths above are the layouts' own: a body one byte short does not read.
        for (layout, len) in [
            (1, TASK_BODY_1),
            (2, TASK_BODY_2),
            (3, TASK_BODY_3),
            (4, TASK_BODY_4),
            (5, TASK_BODY_5),
        ] {
            assert!(Task::decode(layout, &body(&slot)[..len]).is_ok());
            assert!(Task::decode(layout, &body(&slot)[..len - 1]).is_err());
        }
        assert!(
            body(&slot)[TASK_BODY_5..].iter().all(|&b| b == 0),
            "nothing past the fields"
        );
        let mut bad = body(&slot).to_vec();
        bad[TASK_BODY_4 - 1] = 200;
        assert!(Task::decode(5, &bad).is_err(), "an unknown reason");

        let mut j = Job {
            key: "www/prod/hello".into(),
            ports: vec!["http".into(), "admin".into()],
            announce: None,
            rollout: Default::default(),
            runs: Default::default(),
            counts: Default::default(),
        };
        let mut slot = [0u8; JOB_SLOT_SIZE];
        j.encode(&mut slot).unwrap();
        assert_eq!(Job::decode(1, body(&slot)).unwrap(), j);
        j.announce = Some(Announce {
            path: "/formic/www/prod/hello".into(),
            primary: 1,
        });
        j.encode(&mut slot).unwrap();
        assert_eq!(Job::decode(JOB_LAYOUT, body(&slot)).unwrap(), j);
        // Layout 3 appends the rollout: one of layout 2 has none.
        j.rollout.stable = 42;
        j.rollout.held = true;
        j.encode(&mut slot).unwrap();
        assert_eq!(Job::decode(JOB_LAYOUT, body(&slot)).unwrap(), j);
        assert_eq!(
            Job::decode(2, body(&slot)).unwrap(),
            Job {
                rollout: Default::default(),
                ..j.clone()
            }
        );
        // Layout 4 appends the runs: one of layout 3 has had none.
        j.runs.current = 1_796_256_000;
        j.runs.missed = 3;
        j.encode(&mut slot).unwrap();
        assert_eq!(Job::decode(JOB_LAYOUT, body(&slot)).unwrap(), j);
        assert_eq!(
            Job::decode(3, body(&slot)).unwrap(),
            Job {
                runs: Default::default(),
                ..j.clone()
            }
        );
        // Layout 5 appends the counts: one of layout 4 has counted nothing.
        j.counts.placed = 12;
        j.counts.lost = 2;
        j.encode(&mut slot).unwrap();
        assert_eq!(Job::decode(JOB_LAYOUT, body(&slot)).unwrap(), j);
        assert_eq!(
            Job::decode(4, body(&slot)).unwrap(),
            Job {
                counts: Default::default(),
                ..j.clone()
            }
        );
        j.announce = Some(Announce {
            path: "/x".into(),
            primary: 2,
        });
        j.encode(&mut slot).unwrap();
        assert!(
            Job::decode(JOB_LAYOUT, body(&slot)).is_err(),
            "a port the job lacks"
        );
    }

    /// The check where specs are read and the record as the state writes it agree, on
    /// both sides of the edge.
    #[test]
    fn a_record_fits_where_the_check_says_it_does() {
        let ports: Vec<String> = (0..8)
            .map(|i| format!("port{i}-{}", "x".repeat(20)))
            .collect();
        for n in (0..=255).step_by(5) {
            let announce = Announce {
                path: format!("/{}", "p".repeat(n)),
                primary: 0,
            };
            let job = Job {
                key: "www/prod/web".into(),
                ports: ports.clone(),
                announce: Some(announce.clone()),
                rollout: crate::rollout::Rollout::largest(),
                runs: Default::default(),
                counts: Default::default(),
            };
            let mut slot = [0u8; JOB_SLOT_SIZE];
            assert_eq!(
                job_record_fits(&job.key, &job.ports, Some(&announce)),
                job.encode(&mut slot),
                "path of {n}"
            );
        }
    }
}
