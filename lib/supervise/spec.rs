//! What a supervisor runs (`spec.json`, written by launch), and the durations in it as the
//! supervisor can honour them.
//!
//! Every duration is read as seconds and turned into a [`Duration`] here and only here,
//! clamped into a range the loop can act on: nothing in `spec.json` can make the
//! supervisor panic (a float too large for a `Duration`, or an `Instant` overflowed by
//! one) or spin (a health check every 0 s). What cannot be honoured at all (a health check
//! that could only send a malformed request) is refused before anything starts.

use std::time::Duration;

use serde_json::Value;

use crate::limits::Limits;

/// What to run, as launch resolved it (`spec.json` in the task's directory).
#[derive(Clone, Debug, PartialEq)]
pub struct Spec {
    pub task: String,
    /// The incarnation of the task this directory was prepared for (see `Task::incarnation`);
    /// the supervisor reports it in every status.
    pub incarnation: u32,
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    /// Run as this user; None runs as a dynamic user when `dynamic_ids` names a range,
    /// else as the supervisor's own user.
    pub user: Option<String>,
    /// The uid range a task without a named user takes its own uid from.
    pub dynamic_ids: Option<(u32, u32)>,
    /// Whether the task may run as root.
    pub allow_root: bool,
    /// Seconds between SIGTERM and SIGKILL on a stop (see [`Spec::grace`]).
    pub grace_s: f64,
    /// Size at which a log is rotated (one old generation is kept).
    pub log_max_bytes: u64,
    /// The operators' group that may read the task's logs (root's when it does not exist).
    pub log_group: Option<String>,
    pub health: Option<Health>,
    /// What the task may use (its reservation): cgroups where the host has them.
    pub limits: Limits,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Health {
    /// HTTP GET of `path` on 127.0.0.1:`port`; 2xx and 3xx are healthy.
    pub port: u16,
    pub path: String,
    /// Or a command (argv, no shell) run in the sandbox as the task's user, in its
    /// cgroups: exit 0 is healthy. Used when not empty.
    pub cmd: Vec<String>,
    /// Seconds from the end of one check to the start of the next (see
    /// [`Health::interval`]).
    pub interval_s: f64,
    /// Seconds a check may take; one that takes longer has failed (see
    /// [`Health::timeout`]).
    pub timeout_s: f64,
    /// Consecutive failures that make the task unhealthy.
    pub failures: u32,
}

/// The shortest interval between health checks: a check asked for more often (0, or a
/// negative number) would make the supervisor spin.
pub const MIN_INTERVAL: Duration = Duration::from_millis(100);

/// The shortest time a check is given.
pub const MIN_TIMEOUT: Duration = Duration::from_millis(1);

/// The longest duration the supervisor acts on (about 31 years): longer ones mean "never"
/// in practice, and are taken as this one, which any `Instant` of this machine can be
/// pushed by without overflowing.
pub const LONGEST: Duration = Duration::from_secs(1_000_000_000);

/// `s` seconds as a duration in `floor..=LONGEST`: below the floor (also negative, and not
/// a number) is the floor, above LONGEST (also infinite) is LONGEST.
pub fn seconds(s: f64, floor: Duration) -> Duration {
    if s.is_nan() || s <= floor.as_secs_f64() {
        floor
    } else if s >= LONGEST.as_secs_f64() {
        LONGEST
    } else {
        Duration::from_secs_f64(s)
    }
}

impl Spec {
    /// The grace period of a stop: `grace_s`, at least 0, at most [`LONGEST`].
    pub fn grace(&self) -> Duration {
        seconds(self.grace_s, Duration::ZERO)
    }

    /// Why the supervisor cannot run this spec as it stands, if it cannot.
    pub fn refusal(&self) -> Option<String> {
        if let Some((first, last)) = self.dynamic_ids {
            if first == 0 || first > last {
                return Some(format!(
                    "the dynamic uid range {first}-{last} is not a range of uids above 0"
                ));
            }
        }
        let h = self.health.as_ref().filter(|h| h.cmd.is_empty())?;
        // The path goes into the request line as it is: nothing that would end or split it.
        let sendable =
            h.path.starts_with('/') && h.path.bytes().all(|b| b.is_ascii_graphic() && b != b'#');
        if !sendable {
            return Some(format!(
                "the health check's path {:?} is not an HTTP request path (it must start \
                 with / and hold no spaces, control characters or #)",
                h.path
            ));
        }
        if h.port == 0 {
            return Some("the health check has no port".into());
        }
        None
    }

    pub fn from_json(v: &Value) -> Option<Spec> {
        let strings = |v: &Value| {
            v.as_array().map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(String::from))
                    .collect::<Vec<_>>()
            })
        };
        let health = v.get("health").filter(|h| !h.is_null()).and_then(|h| {
            let cmd = strings(&h["cmd"]).unwrap_or_default();
            Some(Health {
                port: h["port"]
                    .as_u64()
                    .or(if cmd.is_empty() { None } else { Some(0) })? as u16,
                path: h["path"].as_str().unwrap_or("/").to_string(),
                cmd,
                interval_s: h["interval_s"].as_f64().unwrap_or(10.0),
                timeout_s: h["timeout_s"].as_f64().unwrap_or(1.0),
                failures: h["failures"].as_u64().unwrap_or(3) as u32,
            })
        });
        // A uid past u32 is read as 0, which `refusal` refuses, rather than cut short to
        // some other account's uid.
        let uid = |v: &Value| v.as_u64().map(|n| u32::try_from(n).unwrap_or(0));
        let range = |r: &Value| Some((uid(&r[0])?, uid(&r[1])?));
        Some(Spec {
            task: v["task"].as_str()?.to_string(),
            incarnation: v["incarnation"].as_u64().unwrap_or(0) as u32,
            argv: strings(&v["argv"]).filter(|a| !a.is_empty())?,
            env: v["env"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                        .collect()
                })
                .unwrap_or_default(),
            user: v["user"].as_str().map(String::from),
            dynamic_ids: range(&v["dynamic_ids"]),
            allow_root: v["allow_root"].as_bool().unwrap_or(false),
            grace_s: v["grace_s"].as_f64().unwrap_or(10.0),
            log_max_bytes: v["log_max_bytes"].as_u64().unwrap_or(16 << 20),
            log_group: v["log_group"].as_str().map(String::from),
            health,
            limits: Limits {
                cpus: v["limits"]["cpus"].as_u64().unwrap_or(0) as u32,
                ram_mb: v["limits"]["ram_mb"].as_u64().unwrap_or(0),
                pids: v["limits"]["pids"].as_u64().unwrap_or(0) as u32,
            },
        })
    }

    pub fn to_json(&self) -> Value {
        serde_json::json!({
            "task": self.task, "incarnation": self.incarnation, "argv": self.argv,
            "env": self.env.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect::<serde_json::Map<_, _>>(),
            "user": self.user, "dynamic_ids": self.dynamic_ids.map(|(a, b)| [a, b]),
            "allow_root": self.allow_root, "grace_s": self.grace_s,
            "log_max_bytes": self.log_max_bytes, "log_group": self.log_group,
            "limits": {"cpus": self.limits.cpus, "ram_mb": self.limits.ram_mb, "pids": self.limits.pids},
            "health": self.health.as_ref().map(|h| serde_json::json!({"port": h.port, "path": h.path, "cmd": h.cmd,
                "interval_s": h.interval_s, "timeout_s": h.timeout_s, "failures": h.failures})),
        })
    }
}

impl Health {
    /// The time between checks: `interval_s`, at least [`MIN_INTERVAL`].
    pub fn interval(&self) -> Duration {
        seconds(self.interval_s, MIN_INTERVAL)
    }

    /// The time a check is given: `timeout_s`, at least [`MIN_TIMEOUT`].
    pub fn timeout(&self) -> Duration {
        seconds(self.timeout_s, MIN_TIMEOUT)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn any_number_of_seconds_is_a_duration_an_instant_can_take() {
        let now = Instant::now();
        for s in [
            f64::NAN,
            f64::NEG_INFINITY,
            -1e30,
            -1.0,
            -0.0,
            0.0,
            f64::MIN_POSITIVE,
            1e-12,
            0.05,
            0.1,
            1.5,
            1e9,
            1e10,
            1e30,
            f64::MAX,
            f64::INFINITY,
        ] {
            for floor in [Duration::ZERO, MIN_TIMEOUT, MIN_INTERVAL] {
                let d = seconds(s, floor);
                assert!(
                    (floor..=LONGEST).contains(&d),
                    "{s} s, floor {floor:?}: {d:?}"
                );
                let _ = now + d;
            }
        }
        assert_eq!(seconds(1.5, Duration::ZERO), Duration::from_millis(1500));
        assert_eq!(seconds(0.0, MIN_INTERVAL), MIN_INTERVAL);
        assert_eq!(seconds(f64::NAN, MIN_INTERVAL), MIN_INTERVAL);
        assert_eq!(seconds(1e30, Duration::ZERO), LONGEST);
    }

    #[test]
    fn a_uid_range_that_is_not_one_is_refused() {
        let read = |range: &str| {
            let text = format!(r#"{{"task":"a/b/c/0","argv":["true"],"dynamic_ids":{range}}}"#);
            Spec::from_json(&serde_json::from_str(&text).unwrap()).unwrap()
        };
        assert_eq!(read("[70000,79999]").refusal(), None);
        for bad in ["[79999,70000]", "[0,10]", "[4294967301,4294967302]"] {
            assert!(read(bad).refusal().is_some(), "{bad}");
        }
    }

    #[test]
    fn a_health_path_that_cannot_be_sent_is_refused() {
        let mut spec = Spec {
            task: "a/b/c/0".into(),
            incarnation: 1,
            argv: vec!["true".into()],
            env: vec![],
            user: None,
            dynamic_ids: None,
            allow_root: true,
            grace_s: 1.0,
            log_max_bytes: 4096,
            log_group: None,
            health: None,
            limits: Limits {
                cpus: 0,
                ram_mb: 0,
                pids: 0,
            },
        };
        assert_eq!(spec.refusal(), None);
        let http = |path: &str| Health {
            port: 8080,
            path: path.into(),
            cmd: vec![],
            interval_s: 1.0,
            timeout_s: 1.0,
            failures: 3,
        };
        for good in ["/", "/health?full=1", "/a%20b"] {
            spec.health = Some(http(good));
            assert_eq!(spec.refusal(), None, "{good}");
        }
        for bad in [
            "",
            "health",
            "/a b",
            "/x\r\nHost: evil",
            "/\u{e9}",
            "/#frag",
        ] {
            spec.health = Some(http(bad));
            assert!(spec.refusal().is_some(), "{bad:?}");
        }
    }
}
