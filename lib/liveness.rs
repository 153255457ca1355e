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

/// A host's liveness after a pass tried to reach it: `reached` with the round trip in
/// microseconds, or None. A down host that answers stays down here: it is up again only
/// once its strays are stopped ([`returned`]).
pub fn sensed(l: Liveness, reached: Option<u32>, now: f64, lost_after: f64) -> Liveness {
    let mut n = l;
    n.checked = now;
    match reached {
        Some(rtt_us) => {
            n.contact = now;
            n.rtt_us = rtt_us;
            if l.life == Life::Suspect {
                n.life = Life::Up;
                n.since = now;
            }
        }
        None => {
            let stale = l.checked > 0.0 && now - l.checked > lost_after;
            match l.life {
                Life::Up => {
                    n.life = Life::Suspect;
                    n.since = now;
                }
                // The evidence has a gap: this silence is counted from now.
                Life::Suspect if stale => n.since = now,
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

    #[test]
    fn silence_makes_a_host_suspect_then_down_after_lost_after() {
        let lost = 300.0;
        let l = sensed(up(), Some(800), 1000.0, lost);
        assert_eq!((l.life, l.contact, l.rtt_us), (Life::Up, 1000.0, 800));
        let l = sensed(l, None, 1060.0, lost);
        assert_eq!((l.life, l.since), (Life::Suspect, 1060.0));
        let l = sensed(l, None, 1260.0, lost);
        assert!(!overdue(&l, 1260.0, lost));
        let l = sensed(l, None, 1360.0, lost);
        assert!(overdue(&l, 1360.0, lost));
        // A suspect host that answers is up again.
        let back = sensed(l, Some(900), 1361.0, lost);
        assert_eq!(back.life, Life::Up);
    }

    #[test]
    fn a_gap_between_passes_starts_the_clock_again() {
        let lost = 300.0;
        let l = sensed(sensed(up(), Some(1), 0.0 + 1.0, lost), None, 60.0, lost);
        assert_eq!(l.life, Life::Suspect);
        // The scheduler was away for an hour: that hour is no evidence.
        let l = sensed(l, None, 3660.0, lost);
        assert_eq!(l.since, 3660.0);
        assert!(!overdue(&l, 3660.0, lost));
    }

    #[test]
    fn a_down_host_that_answers_stays_down_until_its_strays_are_stopped() {
        let mut l = up();
        l.life = Life::Down;
        let l = sensed(l, Some(5), 10.0, 300.0);
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
