//! formic-host, the host's half of launch and reap, driven as the ssh transport drives it:
//! one request on standard input, the answers and a count on standard output.

use std::time::Duration;

use formic::transport::wire::{Answer, End, Op, Probe, Request, StartTask, StartWire};
use serde_json::{json, Value};

use crate::common::{self, bin, code, run, stderr, stdout};

fn ask(root: &std::path::Path, op: Op) -> Vec<Answer> {
    let req = Request {
        root: root.to_path_buf(),
        epoch: 0,
        op,
    };
    let out = run(
        &mut std::process::Command::new(bin("formic-host")),
        format!("{}\n", serde_json::to_string(&req).unwrap()).as_bytes(),
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let text = stdout(&out);
    let mut lines: Vec<&str> = text.lines().collect();
    let end: End = serde_json::from_str(lines.pop().unwrap()).unwrap();
    assert_eq!(end.end, lines.len(), "{text}");
    lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn status_of(root: &std::path::Path, task: &str, n: u32) -> Option<Value> {
    match ask(root, Op::Reports(vec![(task.into(), n)])).pop() {
        Some(Answer::Status(s)) => s,
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_task_is_started_looked_at_and_stopped_through_the_host_side() {
    let root = common::tempdir();
    let task = "t/e/web/0";
    let spec = common::spec(task, &["sleep", "600"]);
    let started = ask(
        root.path(),
        Op::Start(vec![StartTask {
            task: task.into(),
            incarnation: 1,
            spec: spec.to_json(),
            job: json!({"name": "web"}).to_string(),
        }]),
    );
    assert!(
        matches!(started[..], [Answer::Start(StartWire::Started)]),
        "{started:?}"
    );
    let running = common::wait_until("RUNNING", Duration::from_secs(10), || {
        status_of(root.path(), task, 1).filter(|s| s["state"] == "RUNNING")
    });
    // A look sees what reap sees locally: alive, with the supervisor's status.
    let probe = Probe {
        task: task.into(),
        incarnation: 1,
        state: "STARTING".into(),
        since: 0.0,
        pid_start: 0,
    };
    match &ask(root.path(), Op::Look(vec![probe]))[..] {
        [Answer::Look(l)] => {
            assert_eq!(l.seen, "alive");
            assert_eq!(l.status.as_ref().unwrap()["pid"], running["pid"]);
            assert!(l.facts.started.is_some());
        }
        other => panic!("{other:?}"),
    }
    // Asked about another incarnation, the host has no word of it; calling that off
    // raises the fence past it, and the running one is untouched.
    assert!(status_of(root.path(), task, 2).is_none());
    let sup = &running["supervisor"];
    let who = (
        sup["pid"].as_u64().unwrap() as u32,
        sup["start"].as_u64().unwrap(),
    );
    let stop = formic::reap::Act::Stop { supervisor: who };
    let acted = ask(root.path(), Op::Act(vec![(task.into(), stop)]));
    assert!(matches!(acted[..], [Answer::Acted(true)]), "{acted:?}");
    common::wait_until("KILLED", Duration::from_secs(15), || {
        status_of(root.path(), task, 1).filter(|s| s["state"] == "KILLED")
    });
    // A start older than the one made is fenced out.
    let stale = ask(
        root.path(),
        Op::Start(vec![StartTask {
            task: task.into(),
            incarnation: 0,
            spec: spec.to_json(),
            job: "{}".into(),
        }]),
    );
    assert!(
        matches!(stale[..], [Answer::Start(StartWire::CalledOff)]),
        "{stale:?}"
    );
}

#[test]
fn a_request_it_cannot_take_is_refused_on_one_line_with_65() {
    let root = common::tempdir();
    let good = |root: &str| {
        format!(
            r#"{{"root":{},"epoch":0,"op":{{"stamps":["t/e/web/0"]}}}}"#,
            json!(root)
        )
    };
    for (input, what) in [
        ("not json\n".to_string(), "not one formic sends"),
        (good("relative/root"), "not an absolute path"),
        (good("/x/../etc"), "not an absolute path"),
        (
            format!(
                r#"{{"root":{},"op":{{"stamps":["../../etc/0"]}}}}"#,
                json!(root.path())
            ),
            "is not role/env/name",
        ),
        (
            format!(r#"{{"root":{},"op":{{"launch":[]}}}}"#, json!(root.path())),
            "not one formic sends",
        ),
    ] {
        let out = run(
            &mut std::process::Command::new(bin("formic-host")),
            input.as_bytes(),
        );
        assert_eq!(code(&out), 65, "{input}: {}", stderr(&out));
        let err = stderr(&out);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.starts_with("formic-host: ") && err.contains(what),
            "{input}: {err}"
        );
        assert!(stdout(&out).is_empty());
    }
}

#[test]
fn a_host_refuses_a_scheduler_older_than_the_newest_it_has_seen() {
    let root = common::tempdir();
    let ask_at = |epoch: u64| {
        let line = format!(
            r#"{{"root":{},"epoch":{epoch},"op":{{"stamps":[]}}}}"#,
            json!(root.path())
        );
        run(
            &mut std::process::Command::new(bin("formic-host")),
            format!("{line}\n").as_bytes(),
        )
    };
    assert_eq!(code(&ask_at(0)), 0);
    assert_eq!(code(&ask_at(2)), 0);
    let out = ask_at(1);
    assert_eq!(code(&out), 77, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("epoch 1 is older than 2"),
        "{}",
        stderr(&out)
    );
    assert!(stdout(&out).is_empty());
    assert_eq!(code(&ask_at(2)), 0);
    assert_eq!(code(&ask_at(3)), 0);
    assert_eq!(code(&ask_at(2)), 77);
    // A look at everything the host holds changes nothing: any scheduler may take it, and
    // it says the newest epoch seen (a rebuilt state takes over past it).
    let line = format!(
        r#"{{"root":{},"epoch":0,"op":"inventory"}}"#,
        json!(root.path())
    );
    let out = run(
        &mut std::process::Command::new(bin("formic-host")),
        format!("{line}\n").as_bytes(),
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(stdout(&out), "{\"epoch\":3}\n{\"end\":1}\n");
}
