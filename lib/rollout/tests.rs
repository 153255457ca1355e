use super::*;

const OLD: u64 = 0xa1;
const NEW: u64 = 0xb2;

fn policy(batch_size: u32) -> UpdatePolicy {
    UpdatePolicy {
        batch_size,
        watch_s: 10.0,
        ..UpdatePolicy::default()
    }
}

fn running(instance: u32, spec: u64, since: f64) -> Seen {
    Seen {
        instance,
        state: TaskState::Running,
        spec,
        healthy: true,
        since,
        healthy_since: since,
        failures: 0,
        replaced: false,
    }
}

/// Runs passes the way the cluster would: each replaced instance starts on its target at
/// the pass's time, healthy. Returns the plans.
struct Sim {
    policy: UpdatePolicy,
    rollout: Rollout,
    tasks: Vec<Seen>,
    instances: u32,
    desired: u64,
    /// What the availability budget lets a pass take down.
    room: u32,
}

impl Sim {
    fn new(n: u32, batch: u32) -> Sim {
        Sim {
            policy: policy(batch),
            rollout: Rollout {
                stable: OLD,
                ..Rollout::default()
            },
            tasks: (0..n).map(|i| running(i, OLD, 0.0)).collect(),
            instances: n,
            desired: NEW,
            room: u32::MAX,
        }
    }

    fn pass(&mut self, now: f64) -> Vec<u32> {
        let kept = |_: u64| true;
        let job = Job {
            desired: self.desired,
            instances: self.instances,
            policy: &self.policy,
            health_checked: true,
            rollout: &self.rollout,
            room: self.room,
            kept: &kept,
        };
        let plan = plan(&job, &self.tasks, now);
        let mut replaced = Vec::new();
        for (i, t) in plan.targets.iter().enumerate() {
            let task = &mut self.tasks[i];
            if t.replace || !task.live() {
                *task = running(i as u32, t.spec, now);
                replaced.push(i as u32);
            }
        }
        self.rollout = plan.rollout;
        replaced
    }

    fn phase(&self) -> Phase {
        self.rollout.update.as_ref().unwrap().phase
    }
}

#[test]
fn a_new_spec_rolls_out_in_batches_each_after_the_last_is_done() {
    let mut sim = Sim::new(5, 2);
    assert_eq!(sim.pass(100.0), vec![0, 1]);
    assert_eq!(sim.phase(), Phase::RollingForward);
    // Not watched long enough: nothing more.
    assert_eq!(sim.pass(105.0), Vec::<u32>::new());
    assert_eq!(sim.pass(111.0), vec![2, 3]);
    assert_eq!(sim.pass(122.0), vec![4]);
    assert_eq!(sim.pass(125.0), Vec::<u32>::new());
    assert_eq!(sim.rollout.stable, OLD);
    sim.pass(133.0);
    assert_eq!(sim.phase(), Phase::RolledForward);
    assert_eq!(sim.rollout.stable, NEW);
    // Over: nothing moves, and the record stays as it is.
    let before = sim.rollout.clone();
    assert_eq!(sim.pass(500.0), Vec::<u32>::new());
    assert_eq!(sim.rollout, before);
}

#[test]
fn the_availability_budget_caps_a_batch() {
    let mut sim = Sim::new(5, 3);
    sim.room = 1;
    assert_eq!(sim.pass(0.0), [0], "a batch of 3 with room for 1");
    sim.room = 0;
    assert_eq!(
        sim.pass(100.0),
        Vec::<u32>::new(),
        "no room: the update waits"
    );
    assert_eq!(sim.phase(), Phase::RollingForward);
    sim.room = 3;
    assert_eq!(sim.pass(200.0), [1, 2, 3]);
}

#[test]
fn a_failing_new_spec_rolls_back_highest_first_and_is_not_tried_again() {
    let mut sim = Sim::new(4, 2);
    sim.pass(100.0);
    // Instance 1 of the new spec fails (the restart policy counted it).
    sim.tasks[1].state = TaskState::Throttled;
    sim.tasks[1].failures = 1;
    assert_eq!(sim.pass(101.0), vec![0, 1], "both go back at once");
    assert_eq!(sim.phase(), Phase::RollingBack);
    assert_eq!(sim.rollout.update.as_ref().unwrap().why, Why::Failures);
    assert!(sim.tasks.iter().all(|t| t.spec == OLD));
    sim.pass(120.0);
    assert_eq!(sim.phase(), Phase::RolledBack);
    // The job file still names the failed spec: later passes leave the job alone.
    assert_eq!(sim.pass(200.0), Vec::<u32>::new());
    assert_eq!(sim.phase(), Phase::RolledBack);
    // A new change starts a new update.
    sim.desired = 0xc3;
    assert_eq!(sim.pass(300.0), vec![0, 1]);
    let u = sim.rollout.update.as_ref().unwrap();
    assert_eq!((u.from, u.to, u.phase), (OLD, 0xc3, Phase::RollingForward));
}

#[test]
fn a_rollback_goes_highest_instance_first() {
    let mut sim = Sim::new(4, 1);
    for (now, next) in [(100.0, 0), (111.0, 1), (122.0, 2)] {
        assert_eq!(sim.pass(now), vec![next]);
    }
    // Instance 2 fails: it goes back at once, and the others one by one, highest first.
    sim.tasks[2].failures = 1;
    sim.tasks[2].state = TaskState::Throttled;
    assert_eq!(sim.pass(123.0), vec![1, 2]);
    assert_eq!(sim.phase(), Phase::RollingBack);
    assert_eq!(sim.pass(134.0), vec![0]);
    sim.pass(145.0);
    assert_eq!(sim.phase(), Phase::RolledBack);
    assert!(sim.tasks.iter().all(|t| t.spec == OLD));
}

#[test]
fn no_progress_for_the_deadline_fails_the_update() {
    let mut sim = Sim::new(3, 1);
    sim.policy.rollback = false;
    sim.pass(100.0);
    // Instance 0 never becomes healthy.
    sim.tasks[0].healthy = false;
    sim.tasks[0].state = TaskState::Starting;
    sim.pass(100.0 + 600.0);
    assert_eq!(sim.phase(), Phase::RollingForward);
    sim.pass(100.0 + 601.0);
    let u = sim.rollout.update.as_ref().unwrap();
    assert_eq!((u.phase, u.why), (Phase::Failed, Why::Deadline));
}

#[test]
fn missing_and_broken_instances_go_first_without_counting_against_the_batch() {
    let mut sim = Sim::new(4, 1);
    sim.tasks[2].state = TaskState::Failed;
    sim.tasks[3].healthy = false;
    let replaced = sim.pass(100.0);
    assert_eq!(replaced, vec![0, 2, 3]);
}

#[test]
fn a_held_job_waits_paused_and_a_canary_range_moves_only_its_instances() {
    let mut sim = Sim::new(4, 2);
    sim.rollout.held = true;
    assert_eq!(sim.pass(100.0), Vec::<u32>::new());
    assert_eq!(sim.phase(), Phase::RollForwardPaused);
    // roll start --instances 1-1
    let u = sim.rollout.update.as_mut().unwrap();
    (u.phase, u.first, u.last) = (Phase::RollingForward, 1, 1);
    assert_eq!(sim.pass(101.0), vec![1]);
    sim.pass(120.0);
    assert_eq!(sim.phase(), Phase::RolledForward);
    assert_eq!(sim.rollout.stable, OLD, "only a canary went out");
    // An instance outside the range that dies starts again on its old spec.
    sim.tasks[3].state = TaskState::Lost;
    sim.pass(130.0);
    assert_eq!(sim.tasks[3].spec, OLD);
    assert_eq!(sim.tasks[1].spec, NEW);
}

#[test]
fn a_job_that_runs_its_file_s_spec_has_nothing_to_roll() {
    let mut sim = Sim::new(3, 1);
    sim.desired = OLD;
    sim.rollout.stable = 0;
    assert_eq!(sim.pass(1.0), Vec::<u32>::new());
    assert_eq!(sim.rollout, Rollout::default(), "no record is written");
}

#[test]
fn a_spec_placed_everywhere_without_an_update_becomes_the_one_to_come_back_to() {
    // An update to NEW failed with every instance down; the file then moved on to a third
    // spec, placed without an update (nothing live ran another). Once it runs everywhere,
    // a later failure must come back to it, not to OLD.
    const THIRD: u64 = 0xc3;
    let mut sim = Sim::new(3, 1);
    sim.rollout.update = Some(Update {
        from: OLD,
        to: NEW,
        phase: Phase::Failed,
        first: 0,
        last: 2,
        started: 1.0,
        progress: 1.0,
        done: 0,
        desired: 3,
        why: Why::Failures,
    });
    sim.desired = THIRD;
    for t in &mut sim.tasks {
        (t.state, t.healthy) = (TaskState::Starting, false);
        t.spec = THIRD;
    }
    sim.pass(10.0);
    assert_eq!(sim.rollout.stable, OLD, "not yet: none runs healthy");
    for t in &mut sim.tasks {
        (t.state, t.healthy, t.healthy_since) = (TaskState::Running, true, 11.0);
    }
    sim.pass(12.0);
    assert_eq!(sim.rollout.stable, THIRD);
    assert_eq!(
        sim.rollout.update, None,
        "the failed update to NEW is history"
    );
}

#[test]
fn the_watch_counts_from_when_an_instance_turned_healthy() {
    let mut sim = Sim::new(2, 1);
    assert_eq!(sim.pass(100.0), vec![0]);
    // Running since 100, but failing its checks until 125.
    (sim.tasks[0].healthy, sim.tasks[0].healthy_since) = (false, 0.0);
    assert_eq!(sim.pass(120.0), Vec::<u32>::new());
    (sim.tasks[0].healthy, sim.tasks[0].healthy_since) = (true, 125.0);
    assert_eq!(sim.pass(126.0), Vec::<u32>::new(), "healthy for 1 s of 10");
    assert_eq!(sim.pass(135.0), vec![1]);
}

#[test]
fn a_replacement_that_cannot_be_placed_holds_the_next_batch() {
    let mut sim = Sim::new(4, 1);
    assert_eq!(sim.pass(100.0), vec![0]);
    // The update stopped instance 0, and its replacement found no room.
    let t = &mut sim.tasks[0];
    (t.state, t.spec, t.healthy, t.replaced) = (TaskState::Killed, OLD, false, true);
    let kept = |_: u64| true;
    let job = Job {
        desired: NEW,
        instances: 4,
        policy: &sim.policy,
        health_checked: true,
        rollout: &sim.rollout,
        room: u32::MAX,
        kept: &kept,
    };
    for now in [110.0, 200.0] {
        let plan = plan(&job, &sim.tasks, now);
        let replaced: Vec<usize> = (0..4).filter(|&i| plan.targets[i].replace).collect();
        assert_eq!(replaced, Vec::<usize>::new(), "no second batch at {now}");
        assert_eq!(plan.targets[0].spec, NEW, "the stopped one is placed again");
    }
}

#[test]
fn the_record_reads_back_as_written() {
    let r = Rollout {
        held: true,
        stable: 7,
        update: Some(Update {
            from: 7,
            to: u64::MAX,
            phase: Phase::RollBackPaused,
            first: 1,
            last: 9,
            started: 1.5,
            progress: 2.5,
            done: 3,
            desired: 10,
            why: Why::Deadline,
        }),
    };
    assert_eq!(Rollout::from_json(&r.to_json()).unwrap(), r);
    let mut slot = [0u8; 128];
    let mut e = Encoder::new(&mut slot);
    r.encode(&mut e);
    e.seal(1).unwrap();
    let crate::fixed::Slot::Live { body, .. } = crate::fixed::open_slot(&slot).unwrap() else {
        panic!("empty")
    };
    assert_eq!(Rollout::decode(&mut Decoder::new(body)).unwrap(), r);
}

#[test]
fn waiting_names_the_instances_in_flight_and_how_far_each_is() {
    let mut sim = Sim::new(4, 2);
    assert_eq!(sim.pass(100.0), vec![0, 1]);
    sim.tasks[0].healthy_since = 104.0;
    (sim.tasks[1].healthy, sim.tasks[1].healthy_since) = (false, 0.0);
    let kept = |_: u64| true;
    let job = |room: u32| Job {
        desired: NEW,
        instances: 4,
        policy: &sim.policy,
        health_checked: true,
        rollout: &sim.rollout,
        room,
        kept: &kept,
    };
    let u = sim.rollout.update.clone().unwrap();
    let task = |i: u32| sim.tasks.get(i as usize).copied();
    assert_eq!(
        waiting(&job(2), &u, &task, 110.0),
        "waiting for instance 0 healthy for 6 of 10 s; instance 1 not healthy yet"
    );
    // Both done: the budget decides when the next batch goes.
    let done = |i: u32| {
        let mut t = sim.tasks.get(i as usize).copied()?;
        (t.healthy, t.healthy_since) = (true, 100.0);
        Some(t)
    };
    assert_eq!(
        waiting(&job(0), &u, &done, 120.0),
        "waiting for room in the job's availability budget"
    );
    assert_eq!(
        waiting(&job(2), &u, &done, 120.0),
        "the next pass starts a batch"
    );
}

#[test]
fn a_failed_rollback_says_it_was_the_rollback() {
    let mut sim = Sim::new(2, 1);
    sim.pass(100.0);
    sim.tasks[0].failures = 1;
    sim.pass(101.0);
    assert_eq!(sim.phase(), Phase::RollingBack);
    sim.tasks[0].failures = 1; // the old spec fails too
    sim.pass(102.0);
    let u = sim.rollout.update.as_ref().unwrap();
    assert_eq!((u.phase, u.why), (Phase::Failed, Why::RollbackFailures));
    assert!(u.why.words().starts_with("rolling back"));
}
