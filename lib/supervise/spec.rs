//! What a supervisor runs (`spec.json`, written by launch), and the durations in it as the
//! supervisor can honour them.
//!
//! Every duration is read as seconds and turned into a [`Duration`] here and only here,
//! clamped into a range the loop can act on: nothing in `spec.json` can make the
//! supervisor panic (a float too large for a `Duration`, or an `Instant` overflowed by
//! one) or spin (a health check every 0 s). What cannot be honoured at all (a health check
//! that could only send a malformed request) is refused before anything starts, and so is
//! a spec.json that is not one (see [`Spec`]).

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

use crate::limits::Limits;

/// What to run, as launch resolved it (`spec.json` in the task's directory). Read as launch
/// wrote it or not at all: a field of the wrong type, a number the field cannot hold (a
/// port past 65535 is no port, not another one), or a field launch does not write is
/// refused with its name. A field that may be missing is one that launch of an earlier
/// version did not write, or that has always had a default.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    pub task: String,
    /// The incarnation of the task this directory was prepared for (see `Task::incarnation`);
    /// the supervisor reports it in every status.
    #[serde(default)]
    pub incarnation: u32,
    /// The run of a batch or cron job it belongs to (see `Task::run`; 0, left out, for a
    /// service or a batch job's first run): what `offer rebuild` gives the task back.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub run: u64,
    #[serde(deserialize_with = "command")]
    pub argv: Vec<String>,
    #[serde(default, serialize_with = "env_out", deserialize_with = "env_in")]
    pub env: Vec<(String, String)>,
    /// Run as this user; None runs as a dynamic user when `dynamic_ids` names a range,
    /// else as the supervisor's own user.
    pub user: Option<String>,
    /// The uid range a task without a named user takes its own uid from.
    pub dynamic_ids: Option<(u32, u32)>,
    /// Whether the task may run as root.
    #[serde(default)]
    pub allow_root: bool,
    /// Seconds between SIGTERM and SIGKILL on a stop (see [`Spec::grace`]).
    #[serde(default = "ten")]
    pub grace_s: f64,
    /// Size at which a log is rotated (one old generation is kept).
    #[serde(default = "sixteen_mib")]
    pub log_max_bytes: u64,
    /// The operators' group that may read the task's logs (root's when it does not exist).
    pub log_group: Option<String>,
    /// What the task may use (its reservation): cgroups where the host has them.
    #[serde(default = "no_limits", with = "LimitsFile")]
    pub limits: Limits,
    pub health: Option<Health>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Health {
    /// HTTP GET of `path` on 127.0.0.1:`port`; 2xx and 3xx are healthy. 0 (or missing)
    /// with no `cmd` is refused (see [`Spec::refusal`]).
    #[serde(default)]
    pub port: u16,
    #[serde(default = "root_path")]
    pub path: String,
    /// Or a command (argv, no shell) run in the sandbox as the task's user, in its
    /// cgroups: exit 0 is healthy. Used when not empty.
    #[serde(default)]
    pub cmd: Vec<String>,
    /// Seconds from the end of one check to the start of the next (see
    /// [`Health::interval`]).
    #[serde(default = "ten")]
    pub interval_s: f64,
    /// Seconds a check may take; one that takes longer has failed (see
    /// [`Health::timeout`]).
    #[serde(default = "one")]
    pub timeout_s: f64,
    /// Consecutive failures that make the task unhealthy.
    #[serde(default = "three")]
    pub failures: u32,
}

/// [`Limits`] as spec.json holds them (0, or missing: no limit).
#[derive(Serialize, Deserialize)]
#[serde(remote = "Limits", deny_unknown_fields)]
struct LimitsFile {
    #[serde(default)]
    cpus: u32,
    #[serde(default)]
    ram_mb: u64,
    #[serde(default)]
    pids: u32,
}

fn no_limits() -> Limits {
    Limits {
        cpus: 0,
        ram_mb: 0,
        pids: 0,
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

fn ten() -> f64 {
    10.0
}

fn one() -> f64 {
    1.0
}

fn three() -> u32 {
    3
}

fn sixteen_mib() -> u64 {
    16 << 20
}

fn root_path() -> String {
    "/".into()
}

/// An argv: at least the program.
fn command<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let argv = Vec::<String>::deserialize(d)?;
    if argv.is_empty() {
        return Err(serde::de::Error::custom("no program to run"));
    }
    Ok(argv)
}

/// The environment as an object of strings, in order.
fn env_out<S: Serializer>(env: &[(String, String)], s: S) -> Result<S::Ok, S::Error> {
    s.collect_map(env.iter().map(|(k, v)| (k, v)))
}

/// An object of strings, each name once.
fn env_in<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<(String, String)>, D::Error> {
    crate::job::UniqueMap::deserialize(d).map(|m| m.0)
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

    /// A spec from the text of spec.json; the error names the field refused.
    pub fn parse(text: &str) -> Result<Spec, String> {
        crate::taskdir::decode(text)
    }

    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).expect("a spec is JSON: its maps have string keys")
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
    use serde_json::json;
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

    /// A spec with every field given.
    fn full() -> Spec {
        Spec {
            task: "a/b/c/0".into(),
            incarnation: u32::MAX,
            run: u64::MAX,
            argv: vec!["sh".into(), "-c".into(), "exec \"$@\"".into()],
            env: vec![("Z".into(), "1".into()), ("A".into(), "\u{e9}".into())],
            user: Some("nobody".into()),
            dynamic_ids: Some((70000, u32::MAX)),
            allow_root: true,
            grace_s: 2.5,
            log_max_bytes: u64::MAX,
            log_group: Some("adm".into()),
            health: Some(Health {
                port: u16::MAX,
                path: "/health".into(),
                cmd: vec!["true".into()],
                interval_s: 0.25,
                timeout_s: 1e9,
                failures: u32::MAX,
            }),
            limits: Limits {
                cpus: u32::MAX,
                ram_mb: u64::MAX,
                pids: u32::MAX,
            },
        }
    }

    #[test]
    fn a_full_spec_round_trips() {
        assert_eq!(Spec::parse(&full().to_json().to_string()), Ok(full()));
    }

    /// spec.json as launch of this version and of the first one wrote it (the latter
    /// without incarnation, dynamic_ids, log_group, a limit on pids and a health command)
    /// still reads.
    #[test]
    fn a_spec_an_earlier_launch_wrote_still_reads() {
        let now = r#"{"task":"a/b/c/0","incarnation":4294967295,"run":18446744073709551615,"argv":["sh","-c","exec \"$@\""],"env":{"Z":"1","A":"é"},"user":"nobody","dynamic_ids":[70000,4294967295],"allow_root":true,"grace_s":2.5,"log_max_bytes":18446744073709551615,"log_group":"adm","limits":{"cpus":4294967295,"ram_mb":18446744073709551615,"pids":4294967295},"health":{"port":65535,"path":"/health","cmd":["true"],"interval_s":0.25,"timeout_s":1000000000.0,"failures":4294967295}}"#;
        assert_eq!(Spec::parse(now), Ok(full()));
        assert_eq!(full().to_json().to_string(), now, "the file's shape");
        let first = r#"{"task":"a/b/c/0","argv":["true"],"env":{},"user":null,"allow_root":false,"grace_s":10.0,"log_max_bytes":16777216,"limits":{"cpus":500,"ram_mb":64},"health":{"port":8080,"path":"/","interval_s":10.0,"timeout_s":1.0,"failures":3}}"#;
        let spec = Spec::parse(first).unwrap();
        assert_eq!(
            (spec.incarnation, spec.dynamic_ids, spec.log_group),
            (0, None, None)
        );
        assert_eq!(
            spec.limits,
            Limits {
                cpus: 500,
                ram_mb: 64,
                pids: 0
            }
        );
        assert_eq!(spec.health.map(|h| (h.port, h.cmd)), Some((8080, vec![])));
    }

    /// `full()` with `bad` at `path` is refused, naming the field `named`.
    fn refused(path: &str, bad: Value, named: &str) {
        crate::taskdir::assert_refused::<Spec>(full().to_json(), path, bad, named);
    }

    /// A number a field cannot hold is refused, not wrapped into another port, uid or
    /// limit.
    #[test]
    fn a_number_out_of_range_is_refused() {
        for (path, bad, named) in [
            ("health.port", json!(70000), "health.port"),
            ("health.port", json!(-1), "health.port"),
            (
                "health.failures",
                json!(4_294_967_296u64),
                "health.failures",
            ),
            ("incarnation", json!(4_294_967_296u64), "incarnation"),
            (
                "dynamic_ids",
                json!([4_294_967_301u64, 4_294_967_302u64]),
                "dynamic_ids[0]",
            ),
            ("dynamic_ids", json!([70000, -1]), "dynamic_ids[1]"),
            ("limits.cpus", json!(4_294_967_296u64), "limits.cpus"),
            ("limits.ram_mb", json!(-1), "limits.ram_mb"),
            ("limits.pids", json!(4_294_967_296u64), "limits.pids"),
            ("log_max_bytes", json!(1.5), "log_max_bytes"),
        ] {
            refused(path, bad, named);
        }
    }

    /// A field of the wrong type, or one launch does not write, is refused rather than read
    /// as absent: a uid range that is not one must not make the task run as the
    /// supervisor's own user, an argument that is not a string must not be dropped.
    #[test]
    fn a_field_of_the_wrong_type_is_refused() {
        for (path, bad, named) in [
            ("dynamic_ids", json!("70000-79999"), "dynamic_ids"),
            ("dynamic_ids", json!([70000]), "dynamic_ids"),
            ("dynamic_ids", json!([70000, 79999, 1]), "dynamic_ids"),
            ("argv", json!(["sh", 1]), "argv[1]"),
            ("argv", json!([]), "argv"),
            ("env", json!({"A": 1}), "env.A"),
            ("grace_s", json!("10"), "grace_s"),
            ("allow_root", json!("yes"), "allow_root"),
            ("health.path", Value::Null, "health.path"),
            ("health.cmd", json!("true"), "health.cmd"),
            ("limits.memory", json!(1), "limits.memory"),
            ("extra", json!(1), "extra"),
        ] {
            refused(path, bad, named);
        }
    }

    /// An environment variable given twice is refused: the file says two things.
    #[test]
    fn an_environment_variable_given_twice_is_refused() {
        let text = r#"{"task":"a/b/c/0","argv":["true"],"env":{"A":"1","A":"2"}}"#;
        assert_eq!(
            Spec::parse(text),
            Err(r#"field "env": "A" is given twice"#.into())
        );
    }

    #[test]
    fn a_uid_range_that_is_not_one_is_refused() {
        let read = |range: &str| {
            let text = format!(r#"{{"task":"a/b/c/0","argv":["true"],"dynamic_ids":{range}}}"#);
            Spec::parse(&text).unwrap()
        };
        assert_eq!(read("[70000,79999]").refusal(), None);
        for bad in ["[79999,70000]", "[0,10]"] {
            assert!(read(bad).refusal().is_some(), "{bad}");
        }
    }

    #[test]
    fn a_health_path_that_cannot_be_sent_is_refused() {
        let mut spec = Spec {
            task: "a/b/c/0".into(),
            incarnation: 1,
            run: 0,
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
