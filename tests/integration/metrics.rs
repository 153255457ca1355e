//! Prometheus metrics, end to end: passes of scripts/reconcile with --metrics over real
//! tasks on local hosts; the file checked by promtool (Debian's prometheus package, which
//! scripts/test installs) and against `reap tasks`, `offer hosts --summary` and the
//! history; counters kept across one-shot tools.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::announce::Cluster;
use crate::common::{self, code, run, stderr, stdout, tool};

/// A sample's name and labels (`name{a="x",b="y"}`), and its value.
type Samples = BTreeMap<String, f64>;

/// The samples of a Prometheus text file; every family must have its HELP and TYPE first.
fn samples(text: &str) -> Samples {
    let mut out = Samples::new();
    let mut typed = std::collections::HashSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            typed.insert(rest.split(' ').next().unwrap().to_string());
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap();
        let name = series.split('{').next().unwrap();
        assert!(typed.contains(name), "{name} has no TYPE before it");
        assert!(
            out.insert(series.to_string(), value.parse().unwrap())
                .is_none(),
            "{series} twice"
        );
    }
    out
}

/// The value of `series`, 0 when the file has none.
fn value(s: &Samples, series: &str) -> f64 {
    s.get(series).copied().unwrap_or(0.0)
}

/// The samples of one family, by their labels.
fn family<'a>(s: &'a Samples, name: &str) -> BTreeMap<&'a str, f64> {
    s.iter()
        .filter_map(|(k, v)| {
            let labels = k.strip_prefix(name)?;
            (labels.is_empty() || labels.starts_with('{')).then_some((labels, *v))
        })
        .collect()
}

fn reconcile(c: &Cluster, jobs: &Path, metrics: &Path) -> String {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/reconcile");
    let mut cmd = Command::new(script);
    cmd.args([Path::new("--metrics"), metrics, jobs])
        .env("FORMIC_STATE", c.state())
        .env("FORMIC_BIN", common::bin("offer").parent().unwrap());
    let out = run(&mut cmd, b"");
    assert_eq!(code(&out), 0, "reconcile: {}", stderr(&out));
    stderr(&out)
}

fn read(metrics: &Path) -> Samples {
    samples(&std::fs::read_to_string(metrics).unwrap())
}

/// `promtool check metrics` on the file: its status and what it said.
fn promtool(metrics: &Path) -> (i32, String) {
    let text = std::fs::read(metrics).unwrap();
    let out = run(Command::new("promtool").args(["check", "metrics"]), &text);
    (code(&out), stdout(&out) + &stderr(&out))
}

const WEB: &str = "www/prod/web";
const CRASH: &str = "www/prod/crash";
const HUGE: &str = "www/prod/huge";
const ONCE: &str = "batch/prod/once";

fn job_lines() -> String {
    let job = |key: &str, n: u32, cmd: &[&str], ram: u64, extra: Value| {
        let mut j = json!({"job": key, "instances": n, "cmd": cmd,
                           "resources": {"cpus": 0.5, "ram_mb": ram}});
        for (k, v) in extra.as_object().unwrap() {
            j[k] = v.clone();
        }
        j.to_string() + "\n"
    };
    [
        job(WEB, 2, &["sleep", "600"], 64, json!({})),
        job(
            CRASH,
            1,
            &["false"],
            16,
            json!({"restart": {"backoff_s": 0.2, "max_backoff_s": 0.4}}),
        ),
        job(HUGE, 1, &["sleep", "600"], 100_000, json!({})),
        job(ONCE, 1, &["true"], 16, json!({"service": false})),
    ]
    .concat()
}

#[test]
fn the_pass_writes_metrics_promtool_accepts_that_match_the_tools_and_keep_their_counts() {
    let c = Cluster::new(&["h1", "h2"], 36300, None);
    let jobs = c.path("jobs.jsonl");
    std::fs::write(&jobs, job_lines()).unwrap();
    let metrics = c.path("prom/formic.prom");
    std::fs::create_dir(c.path("prom")).unwrap();
    // Passes until the crashing job has been placed again at least twice.
    let end = Instant::now() + Duration::from_secs(40);
    let before_last = loop {
        let before = crate::common::now();
        reconcile(&c, &jobs, &metrics);
        let s = read(&metrics);
        if value(&s, &format!("formic_restarts_total{{job_key=\"{CRASH}\"}}")) >= 2.0 {
            break before;
        }
        assert!(Instant::now() < end, "no two restarts in 40 s: {s:?}");
        std::thread::sleep(Duration::from_millis(300));
    };
    let passed = crate::common::now();
    let (status, said) = promtool(&metrics);
    assert_eq!(status, 0, "promtool check metrics: {said}");
    let s = read(&metrics);

    // Tasks by job and state: what `reap tasks` lists.
    let mut listed: BTreeMap<String, f64> = BTreeMap::new();
    for t in c.tasks() {
        let series = format!(
            "{{job_key=\"{}\",state=\"{}\"}}",
            t["job"].as_str().unwrap(),
            t["state"].as_str().unwrap()
        );
        *listed.entry(series).or_default() += 1.0;
    }
    let shown: BTreeMap<String, f64> = family(&s, "formic_tasks")
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    assert_eq!(shown, listed);

    // Desired, running, healthy; and the pending instance with the reason hosts gave.
    let job = |name: &str, key: &str| {
        value(
            &s,
            &format!("formic_job_{name}_instances{{job_key=\"{key}\"}}"),
        )
    };
    assert_eq!(
        (
            job("desired", WEB),
            job("running", WEB),
            job("healthy", WEB)
        ),
        (2.0, 2.0, 2.0)
    );
    assert_eq!(job("desired", HUGE), 1.0);
    assert_eq!(
        family(&s, "formic_job_pending_instances"),
        BTreeMap::from([(
            format!("{{job_key=\"{HUGE}\",reason=\"insufficient ram_mb\"}}").as_str(),
            1.0
        )])
    );

    // Hosts and capacity: what `offer hosts --summary` says of the cluster.
    let out = run(
        tool("offer", &c.state()).args(["hosts", "--summary", "--json"]),
        b"",
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let summary: Value = serde_json::from_str(stdout(&out).lines().next().unwrap()).unwrap();
    assert_eq!(
        value(&s, "formic_hosts{maintenance=\"none\",liveness=\"up\"}"),
        summary["hosts"].as_f64().unwrap()
    );
    assert_eq!(family(&s, "formic_hosts").values().sum::<f64>(), 2.0);
    const MIB: f64 = 1048576.0;
    for (family_name, field) in [
        ("formic_resource_capacity", "capacity"),
        ("formic_resource_reserved", "reserved"),
        ("formic_resource_free", "free"),
    ] {
        let of = &summary[field];
        let want = [
            ("cpus\",unit=\"core", of["cpus"].as_f64().unwrap()),
            ("ram\",unit=\"byte", of["ram_mb"].as_f64().unwrap() * MIB),
            ("disk\",unit=\"byte", of["disk_mb"].as_f64().unwrap() * MIB),
            ("gpus\",unit=\"integer", of["gpus"].as_f64().unwrap()),
        ];
        for (labels, amount) in want {
            let series = format!("{family_name}{{resource=\"{labels}\"}}");
            assert!(
                (value(&s, &series) - amount).abs() < 1e-6,
                "{series}: {s:?} {of}"
            );
        }
    }
    let reserved = value(
        &s,
        "formic_resource_reserved{resource=\"cpus\",unit=\"core\"}",
    );
    assert!(
        reserved >= 1.0,
        "web's two instances hold a core: {reserved}"
    );

    // Counters: what the history says happened.
    let hist = crate::cron::history(&c, &[CRASH]);
    let to = |states: &[&str]| {
        hist.iter()
            .filter(|l| states.iter().any(|s| l["to"] == *s))
            .count() as f64
    };
    let counter =
        |name: &str, key: &str| value(&s, &format!("formic_{name}_total{{job_key=\"{key}\"}}"));
    assert_eq!(counter("placements", CRASH), to(&["ASSIGNED"]), "{hist:?}");
    assert_eq!(
        counter("task_failures", CRASH),
        to(&["FAILED", "THROTTLED"]),
        "{hist:?}"
    );
    // Every placement after the first followed a failure.
    assert_eq!(
        counter("restarts", CRASH),
        counter("placements", CRASH) - 1.0
    );
    assert_eq!(counter("placements", WEB), 2.0);
    assert_eq!(
        (
            counter("restarts", WEB),
            counter("task_failures", WEB),
            counter("tasks_lost", WEB)
        ),
        (0.0, 0.0, 0.0)
    );

    // The pass: when it ended, how long it took, and that it did its work.
    let last = value(&s, "formic_last_pass_timestamp_seconds");
    assert!(
        (before_last..=passed).contains(&last),
        "{last} not in {before_last}..{passed}"
    );
    let took = value(&s, "formic_pass_duration_seconds");
    assert!(took > 0.0 && took <= passed - before_last, "{took}");
    assert_eq!(value(&s, "formic_last_pass_status"), 0.0);
    // Written by rename: nothing else is left beside it, and anyone may read it.
    let names: Vec<_> = std::fs::read_dir(c.path("prom"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["formic.prom"]);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&metrics).unwrap().permissions().mode() & 0o777,
        0o644
    );
    // Whatever the umask of whoever runs it: the collector's user reads the file.
    let strict = c.path("strict.prom");
    let mut cmd = tool("job", &c.state());
    cmd.args(["metrics", "--jobs"])
        .arg(&jobs)
        .arg("--out")
        .arg(&strict);
    // SAFETY: umask is async-signal-safe and touches nothing but the child's mask.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            nix::libc::umask(0o077);
            Ok(())
        });
    }
    let out = run(&mut cmd, b"");
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(
        std::fs::metadata(&strict).unwrap().permissions().mode() & 0o777,
        0o644
    );

    // A run of the batch job by hand counts as a run; the counts of one-shot tools are
    // those of the state, whoever asks.
    let out = run(tool("job", &c.state()).args(["run", ONCE]), b"");
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    reconcile(&c, &jobs, &metrics);
    let after = read(&metrics);
    assert_eq!(
        value(
            &after,
            &format!("formic_cron_runs_total{{job_key=\"{ONCE}\"}}")
        ),
        1.0
    );
    let out = run(
        tool("job", &c.state())
            .args(["metrics", "--jobs"])
            .arg(&jobs),
        b"",
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let alone = samples(&stdout(&out));
    assert!(!alone.contains_key("formic_last_pass_timestamp_seconds"));
    for (series, v) in after.iter().filter(|(k, _)| k.contains("_total{")) {
        assert!(
            alone[series] >= *v,
            "{series} went back: {v} then {}",
            alone[series]
        );
        assert!(
            *v >= value(&s, series),
            "{series} went back: {} then {v}",
            value(&s, series)
        );
    }
}

#[test]
fn bad_pending_records_are_refused_and_leave_the_file_as_it_was() {
    let c = Cluster::new(&["h1"], 36340, None);
    let jobs = c.path("jobs.jsonl");
    std::fs::write(&jobs, "").unwrap();
    let metrics = c.path("formic.prom");
    std::fs::write(&metrics, "# an older file\n").unwrap();
    let pending = c.path("launched");
    std::fs::write(&pending, "{\"type\":\"pending\",\"job\":\"a/b/c\"}\n").unwrap();
    let out = run(
        tool("job", &c.state())
            .args(["metrics", "--jobs"])
            .arg(&jobs)
            .arg("--pending")
            .arg(&pending)
            .arg("--out")
            .arg(&metrics),
        b"",
    );
    assert_eq!(code(&out), 65, "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!(
            "{}:1: a pending record without reasons",
            pending.display()
        )),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        std::fs::read_to_string(&metrics).unwrap(),
        "# an older file\n"
    );
    // A pass's start that is no time: refused as usage (2), the file as it was.
    for when in ["-inf", "NaN", "-5"] {
        let out = run(
            tool("job", &c.state())
                .args(["metrics", "--jobs"])
                .arg(&jobs)
                .arg(format!("--pass-started={when}"))
                .args(["--pass-status", "0", "--out"])
                .arg(&metrics),
            b"",
        );
        assert_eq!(code(&out), 2, "{when}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("not a time in Unix seconds"),
            "{}",
            stderr(&out)
        );
    }
    assert_eq!(
        std::fs::read_to_string(&metrics).unwrap(),
        "# an older file\n"
    );
}

/// A pass that fails at its first step still writes the file, with its status: the
/// alert on formic_last_pass_status sees the failure, not the last good pass.
#[test]
fn a_pass_that_fails_early_writes_its_status() {
    let c = Cluster::new(&["h1"], 36440, None);
    let jobs = c.path("jobs.jsonl");
    std::fs::write(&jobs, "").unwrap();
    let real = common::bin("offer").parent().unwrap().to_path_buf();
    let bin = c.path("bin");
    std::fs::create_dir(&bin).unwrap();
    for tool in ["offer", "pack", "launch", "announce", "job"] {
        std::os::unix::fs::symlink(real.join(tool), bin.join(tool)).unwrap();
    }
    // A reap that cannot read the hosts, as when their root is unreadable.
    std::fs::write(bin.join("reap"), "#!/bin/sh\nexit 74\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(bin.join("reap"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let metrics = c.path("formic.prom");
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/reconcile");
    let out = run(
        Command::new(script)
            .args([Path::new("--metrics"), &metrics, &jobs])
            .env("FORMIC_STATE", c.state())
            .env("FORMIC_BIN", &bin),
        b"",
    );
    assert_eq!(code(&out), 74, "{}", stderr(&out));
    let s = read(&metrics);
    assert_eq!(value(&s, "formic_last_pass_status"), 74.0);
    assert!(value(&s, "formic_last_pass_timestamp_seconds") > 0.0);
}
