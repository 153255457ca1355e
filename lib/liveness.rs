//! Whether the scheduler can reach its hosts: up, suspect (the last pass could not reach
//! it), down (unreachable for `--lost-after`). A down host's tasks are LOST and placed
//! elsewhere; a host that comes back takes work again once every incarnation the state no
//! longer runs there has been stopped.
//!
//! A scheduler cut off from its fleet must not take the fleet for dead. So:
//! - a host is declared down only on evidence gathered by passes no further apart than
//!   `--lost-after`: after a gap (a scheduler that was stopped, a state just restored or
//!   opened by a new scheduler) the clock of every suspect host starts again, so a new
//!   scheduler waits `--lost-after` before it declares anything down. (A pass slowed by the
//!   very hosts that fail, each waiting for a timeout, is not a gap.)
//! - at most [`DOWN_SHARE`] of the hosts (at least one) are declared down in one pass;
//! - when more than [`CUT_OFF_SHARE`] of the ssh hosts are unreachable at once, none is
//!   declared down: it is the scheduler that is cut off (Kubernetes stops evictions in a
//!   zone where most nodes are unready, for the same reason).

use crate::host::{Life, Liveness};

/// The share of the hosts declared down in one pass, at most (at least one host).
pub const DOWN_SHARE: f64 = 0.10;
/// Above this share of unreachable ssh hosts, nothing is declared down.
pub const CUT_OFF_SHARE: f64 = 0.5;
/// `--lost-after` unless told.
pub const LOST_AFTER_S: f64 = 300.0;

/// A pass's call to a host: when it went out, and when its outcome was known (an answer,
/// a failure, a timeout).
#[derive(Clone, Copy, Debug)]
pub struct Call {
    pub sent: f64,
    pub settled: f64,
}

/// A host's liveness after a pass tried to reach it: `reached` with the round trip in
/// microseconds, or None. Silence counts from when the first unanswered call went out; a
/// gap is the time from one pass's outcome to the next pass's call, so a pass that waits
/// on the failing host itself is not one. A down host that answers stays down here: it is
/// up again only once its strays are stopped ([`returned`]).
pub fn sensed(l: Liveness, reached: Option<u32>, call: Call, lost_after: f64) -> Liveness {
    let mut n = l;
    n.checked = call.settled;
    match reached {
        Some(rtt_us) => {
            n.contact = call.settled;
            n.rtt_us = rtt_us;
            if l.life == Life::Suspect {
                n.life = Life::Up;
                n.since = call.settled;
            }
        }
        None => {
            let stale = l.checked > 0.0 && call.sent - l.checked > lost_after;
            match l.life {
                Life::Up => {
                    n.life = Life::Suspect;
                    n.since = call.sent;
                }
                // The evidence has a gap: this silence is counted from this call.
                Life::Suspect if stale => n.since = call.sent,
                _ => {}
            }
        }
    }
    n
}

/// Whether a suspect host has been unreachable long enough to be declared down.
pub fn overdue(l: &Liveness, now: f64, lost_after: f64) -> bool {
    l.life == Life::Suspect && now - l.since >= lost_after
}

/// How many hosts one pass may declare down, of `hosts`, when `unreachable` of the
/// `remote` ssh hosts could not be reached.
pub fn down_budget(hosts: usize, remote: usize, unreachable: usize) -> usize {
    if remote > 0 && unreachable as f64 > remote as f64 * CUT_OFF_SHARE {
        return 0;
    }
    ((hosts as f64 * DOWN_SHARE).floor() as usize).max(1)
}

/// A down host reached again, with no incarnation left there that the state does not run:
/// up, taking work.
pub fn returned(l: Liveness, now: f64) -> Liveness {
    Liveness {
        life: Life::Up,
        since: now,
        ..l
    }
}

/// `--lost-after`: a duration such as `90s`, `5m` or `1h 30m`, or seconds.
pub fn parse_duration(s: &str) -> Result<f64, String> {
    let secs = match s.trim().parse::<f64>() {
        Ok(n) => n,
        Err(_) => humantime::parse_duration(s.trim())
            .map_err(|e| format!("{s:?} is not a duration such as 90s or 5m: {e}"))?
            .as_secs_f64(),
    };
    if !(secs.is_finite() && secs > 0.0 && secs <= 86_400.0 * 7.0) {
        return Err(format!("{s:?}: a duration above 0 and at most a week"));
    }
    Ok(secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn up() -> Liveness {
        Liveness::default()
    }

    /// A call answered (or not) at once.
    fn at(t: f64) -> Call {
        Call {
            sent: t,
            settled: t,
        }
    }

    #[test]
    fn silence_makes_a_host_suspect_then_down_after_lost_after() {
        let lost = 300.0;
        let l = sensed(up(), Some(800), at(1000.0), lost);
        assert_eq!((l.life, l.contact, l.rtt_us), (Life::Up, 1000.0, 800));
        let l = sensed(l, None, at(1060.0), lost);
        assert_eq!((l.life, l.since), (Life::Suspect, 1060.0));
        let l = sensed(l, None, at(1260.0), lost);
        assert!(!overdue(&l, 1260.0, lost));
        let l = sensed(l, None, at(1360.0), lost);
        assert!(overdue(&l, 1360.0, lost));
        // A suspect host that answers is up again.
        let back = sensed(l, Some(900), at(1361.0), lost);
        assert_eq!(back.life, Life::Up);
    }

    #[test]
    fn a_gap_between_passes_starts_the_clock_again() {
        let lost = 300.0;
        let l = sensed(sensed(up(), Some(1), at(1.0), lost), None, at(60.0), lost);
        assert_eq!(l.life, Life::Suspect);
        // The scheduler was away for an hour: that hour is no evidence.
        let l = sensed(l, None, at(3660.0), lost);
        assert_eq!(l.since, 3660.0);
        assert!(!overdue(&l, 3660.0, lost));
    }

    /// The first pass after a host went silent waits on its open connection longer than
    /// --lost-after: that wait is no gap, and the silence counts from the call.
    #[test]
    fn a_pass_slowed_by_the_silent_host_is_not_a_gap() {
        let lost = 15.0;
        let l = sensed(up(), Some(1), at(0.0), lost);
        let waited = Call {
            sent: 1.0,
            settled: 16.5,
        };
        let l = sensed(l, None, waited, lost);
        assert_eq!((l.life, l.since), (Life::Suspect, 1.0));
        let l = sensed(l, None, at(17.0), lost);
        assert_eq!(l.since, 1.0);
        assert!(overdue(&l, 17.0, lost));
    }

    #[test]
    fn a_down_host_that_answers_stays_down_until_its_strays_are_stopped() {
        let mut l = up();
        l.life = Life::Down;
        let l = sensed(l, Some(5), at(10.0), 300.0);
        assert_eq!((l.life, l.contact), (Life::Down, 10.0));
        assert_eq!(returned(l, 11.0).life, Life::Up);
    }

    #[test]
    fn a_pass_declares_few_hosts_down_and_none_when_it_is_cut_off() {
        assert_eq!(down_budget(4, 4, 1), 1);
        assert_eq!(down_budget(50, 50, 10), 5);
        assert_eq!(
            down_budget(50, 50, 26),
            0,
            "most of the fleet gone: it is us"
        );
        assert_eq!(down_budget(4, 4, 4), 0);
    }

    #[test]
    fn durations_read_as_operators_write_them() {
        assert_eq!(parse_duration("90s"), Ok(90.0));
        assert_eq!(parse_duration("5m"), Ok(300.0));
        assert_eq!(parse_duration("1h 30m"), Ok(5400.0));
        assert_eq!(parse_duration("2.5"), Ok(2.5));
        for bad in ["", "0", "-1", "soon", "inf", "8d"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
