//! Availability budgets: how many of a job's instances the voluntary stops (drains and
//! updates) may take down at once, counted against every instance that is down for any
//! reason. After Aurora's SLA check: an instance is available once running and healthy
//! for the budget's duration, and every other is down; stopping one that does not serve
//! at all (starting, failing its checks) costs nothing, so a broken instance never blocks
//! a drain, while one serving but not yet for long enough is down and still needs room;
//! and a job can always lose one instance when every other one is up, so a budget never
//! blocks forever by itself.

use crate::job::{Budget, Sla};
use crate::task::TaskState;

/// Whether an instance counts as up for its job's budget: running, healthy (a task
/// without a health check is healthy while it runs) and so for `healthy_for_s` since
/// `healthy_since`.
pub fn is_available(
    state: TaskState,
    healthy: bool,
    healthy_since: f64,
    sla: &Sla,
    now: f64,
) -> bool {
    is_serving(state, healthy) && now - healthy_since >= sla.healthy_for_s
}

/// Whether an instance serves at all: running and healthy. Stopping one that does not
/// costs its job's budget nothing.
pub fn is_serving(state: TaskState, healthy: bool) -> bool {
    state == TaskState::Running && healthy
}

/// The most of `desired` instances that may be down at once: never less than one.
pub fn max_down(sla: &Sla, desired: u32) -> u32 {
    let n = match sla.budget {
        Budget::MaxUnavailable(n) => n,
        Budget::MinHealthyPercent(p) => {
            let keep = (desired as f64 * p / 100.0).ceil() as u32;
            desired.saturating_sub(keep)
        }
    };
    n.max(1)
}

/// How many more available instances of a job of `desired` instances may be stopped now,
/// when `available` of them are up.
pub fn room(sla: &Sla, desired: u32, available: u32) -> u32 {
    let down = desired.saturating_sub(available);
    max_down(sla, desired).saturating_sub(down)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sla(budget: Budget) -> Sla {
        Sla {
            budget,
            healthy_for_s: 30.0,
        }
    }

    #[test]
    fn a_budget_allows_its_count_less_what_is_down_and_always_one() {
        let one = sla(Budget::MaxUnavailable(1));
        let two = sla(Budget::MaxUnavailable(2));
        let zero = sla(Budget::MaxUnavailable(0));
        assert_eq!(room(&one, 3, 3), 1);
        assert_eq!(room(&one, 3, 2), 0, "one already down anywhere");
        assert_eq!(room(&two, 3, 2), 1);
        assert_eq!(room(&two, 3, 0), 0);
        assert_eq!(room(&zero, 3, 3), 1, "a job can always lose one");
        assert_eq!(room(&zero, 1, 1), 1, "even its only instance");
        assert_eq!(
            room(&one, 3, 4),
            1,
            "more up than desired (surplus) is not room"
        );
    }

    #[test]
    fn a_percentage_keeps_its_share_rounded_up() {
        let half = sla(Budget::MinHealthyPercent(50.0));
        assert_eq!(max_down(&half, 4), 2);
        assert_eq!(max_down(&half, 3), 1, "2 of 3 must stay");
        assert_eq!(max_down(&half, 1), 1);
        assert_eq!(max_down(&sla(Budget::MinHealthyPercent(100.0)), 5), 1);
        assert_eq!(max_down(&sla(Budget::MinHealthyPercent(0.0)), 5), 5);
        assert_eq!(room(&half, 4, 3), 1);
    }

    #[test]
    fn available_means_running_healthy_and_for_long_enough() {
        let s = sla(Budget::MaxUnavailable(1));
        assert!(is_available(TaskState::Running, true, 100.0, &s, 130.0));
        assert!(!is_available(TaskState::Running, true, 100.0, &s, 129.0));
        assert!(!is_available(TaskState::Running, false, 0.0, &s, 130.0));
        assert!(!is_available(TaskState::Starting, true, 0.0, &s, 130.0));
        assert!(!is_available(TaskState::Draining, true, 0.0, &s, 130.0));
        assert!(
            is_serving(TaskState::Running, true),
            "serving, if not yet for long"
        );
        assert!(!is_serving(TaskState::Running, false));
    }
}
