//! What happened to a job's tasks, counted: placements, restarts, failures, LOST and
//! preemptions. The counts live in the job's record and the commit that makes a transition
//! adds it (`state::count_transitions`), whichever tool makes it: one-shot tools keep them
//! across runs, a crash loses none that was reported done, and `job metrics` shows them
//! as Prometheus counters. They start again from zero only when the job's record is
//! removed (the job is gone) or rebuilt (`offer rebuild`).

use crate::fixed::{Corrupt, Decoder, Encoder};
use crate::task::{Reason, Task, TaskState};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Incarnations placed (recorded ASSIGNED by launch).
    pub placed: u64,
    /// Of those, instances placed again in the same run after their last incarnation ended
    /// by itself or was lost (the restart policy at work; not a move for a drain, an update
    /// or a preemption).
    pub restarted: u64,
    /// Runs that ended as failures: FAILED, or held back (THROTTLED) after failing.
    pub failed: u64,
    /// Incarnations lost with their host or supervisor.
    pub lost: u64,
    /// Incarnations stopped for a task of a higher tier.
    pub preempted: u64,
}

impl Counts {
    pub fn encode(&self, e: &mut Encoder) {
        for n in self.fields() {
            e.u64(n);
        }
    }

    pub fn decode(d: &mut Decoder) -> Result<Counts, Corrupt> {
        Ok(Counts {
            placed: d.u64()?,
            restarted: d.u64()?,
            failed: d.u64()?,
            lost: d.u64()?,
            preempted: d.u64()?,
        })
    }

    fn fields(&self) -> [u64; 5] {
        [
            self.placed,
            self.restarted,
            self.failed,
            self.lost,
            self.preempted,
        ]
    }

    pub fn is_zero(&self) -> bool {
        self.fields() == [0; 5]
    }

    /// Adds `other`; a count that would pass 2^64 stays at the top.
    pub fn add(&mut self, other: Counts) {
        self.placed = self.placed.saturating_add(other.placed);
        self.restarted = self.restarted.saturating_add(other.restarted);
        self.failed = self.failed.saturating_add(other.failed);
        self.lost = self.lost.saturating_add(other.lost);
        self.preempted = self.preempted.saturating_add(other.preempted);
    }

    /// What one task's change in a transaction adds: `old` is its record before the
    /// transaction (in the same slot), `new` after. Each count is taken when the task enters
    /// the state (or reason) within one incarnation, so a record written again unchanged, or
    /// twice in a transaction, counts once.
    pub fn of_change(old: Option<&Task>, new: &Task) -> Counts {
        let same_task = old.filter(|o| o.job == new.job && o.instance == new.instance);
        let same_life = same_task.filter(|o| o.incarnation == new.incarnation);
        let entered = |s: &[TaskState]| {
            s.contains(&new.state) && same_life.is_none_or(|o| !s.contains(&o.state))
        };
        let placed = entered(&[TaskState::Assigned]);
        let restarted = placed
            && same_task.is_some_and(|o| {
                o.incarnation != new.incarnation
                    && o.run == new.run
                    && matches!(
                        o.state,
                        TaskState::Failed
                            | TaskState::Throttled
                            | TaskState::Lost
                            | TaskState::Finished
                    )
            });
        let preempted = new.reason == Reason::Preempted
            && same_life.is_none_or(|o| o.reason != Reason::Preempted);
        // A record new to the state is a placement, or a task restored as its host has it
        // (`offer rebuild`): how that run ended was counted before, if ever, not now.
        let ended = |counted: bool| (same_task.is_some() && counted) as u64;
        Counts {
            placed: placed as u64,
            restarted: restarted as u64,
            failed: ended(entered(&[TaskState::Failed, TaskState::Throttled])),
            lost: ended(entered(&[TaskState::Lost])),
            preempted: ended(preempted),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(state: TaskState, incarnation: u32) -> Task {
        let mut t = Task::new(1, 2);
        (t.state, t.incarnation) = (state, incarnation);
        t
    }

    fn counts(old: Option<&Task>, new: &Task) -> [u64; 5] {
        Counts::of_change(old, new).fields()
    }

    #[test]
    fn a_placement_counts_once_and_a_restart_only_after_the_task_ended_by_itself() {
        let assigned = task(TaskState::Assigned, 1);
        assert_eq!(counts(None, &assigned), [1, 0, 0, 0, 0]);
        assert_eq!(counts(Some(&assigned), &assigned), [0; 5]);
        let running = task(TaskState::Running, 1);
        assert_eq!(counts(Some(&assigned), &running), [0; 5]);
        // Placed again after it failed: a restart. After a kill (a drain, an update): not.
        let again = task(TaskState::Assigned, 2);
        assert_eq!(
            counts(Some(&task(TaskState::Throttled, 1)), &again),
            [1, 1, 0, 0, 0]
        );
        assert_eq!(
            counts(Some(&task(TaskState::Lost, 1)), &again),
            [1, 1, 0, 0, 0]
        );
        assert_eq!(
            counts(Some(&task(TaskState::Killed, 1)), &again),
            [1, 0, 0, 0, 0]
        );
        // A batch job's next run places its finished instances again: not a restart.
        let mut next_run = again.clone();
        next_run.run = 1_764_000_000;
        assert_eq!(
            counts(Some(&task(TaskState::Finished, 1)), &next_run),
            [1, 0, 0, 0, 0]
        );
        // Another task in a slot that was freed: its own first placement.
        let mut other = again.clone();
        other.instance = 7;
        assert_eq!(
            counts(Some(&task(TaskState::Failed, 1)), &other),
            [1, 0, 0, 0, 0]
        );
    }

    #[test]
    fn a_failure_held_back_counts_once_and_lost_and_preempted_count_on_entry() {
        let running = task(TaskState::Running, 3);
        let throttled = task(TaskState::Throttled, 3);
        assert_eq!(counts(Some(&running), &throttled), [0, 0, 1, 0, 0]);
        assert_eq!(
            counts(Some(&task(TaskState::Failed, 3)), &throttled),
            [0; 5]
        );
        assert_eq!(
            counts(Some(&running), &task(TaskState::Lost, 3)),
            [0, 0, 0, 1, 0]
        );
        let mut preempting = task(TaskState::Preempting, 3);
        preempting.reason = Reason::Preempted;
        assert_eq!(counts(Some(&running), &preempting), [0, 0, 0, 0, 1]);
        let mut killed = task(TaskState::Killed, 3);
        killed.reason = Reason::Preempted;
        assert_eq!(counts(Some(&preempting), &killed), [0; 5]);
        // Restored as the host has it (`offer rebuild`): no transition, nothing counted.
        for state in [TaskState::Running, TaskState::Failed, TaskState::Lost] {
            assert_eq!(counts(None, &task(state, 3)), [0; 5]);
        }
        assert_eq!(counts(None, &killed), [0; 5]);
    }
}
