//! Runs of batch and cron jobs: when one is due, and what a job's record keeps of them.
//!
//! A batch job (`"service": false`) places each instance until it has finished, or failed
//! as often as its restart policy allows: all of that is one *run*. A run is started again
//! by hand (`job run`), and a job with a `cron` block starts one at each time its schedule
//! names. A run is named by a number: the Unix second it was scheduled for or asked for (0
//! is a batch job's first run). Each task records the run its incarnation belongs to, and
//! the job's record (`Runs`) the current run and the latest scheduled time acted on.
//!
//! Only the most recent due time starts a run, and only within `starting_deadline_s`:
//! never a backlog (Kubernetes' CronJob controller; Aurora does not catch up at all). The
//! times passed over are counted as missed. A pass proposes the record's next `Runs`
//! against the one it read, and launch commits it only if it is still that one; it places
//! instances naming their run, and launch admits them only while that is the job's current
//! run. So two passes at once, a crash and a retry, or two schedulers start a run once.

use std::str::FromStr;

use croner::parser::{CronParser, Seconds, Year};
use croner::Cron;
use jiff::tz::TimeZone;
use jiff::{Timestamp, Zoned};
use serde::{Deserialize, Serialize};

use crate::fixed::{Corrupt, Decoder, Encoder};

/// What a run due while the last one is still going does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Collision {
    /// Stop what is left of the last run and start the new one (Aurora's default).
    KillExisting,
    /// Let the last run go on; the new one does not start (and is counted as cancelled).
    CancelNew,
}

/// A job's `cron` block, checked.
#[derive(Clone, Debug)]
pub struct Schedule {
    cron: Cron,
    /// The schedule as written, and the zone's name (for messages and `job runs`).
    pub text: String,
    pub zone: String,
    timezone: TimeZone,
    pub collision: Collision,
    pub starting_deadline_s: f64,
}

/// How many scheduled times a pass counts as missed at most: a schedule by the second
/// that no pass has looked at for a day would otherwise be 86,400 steps.
const COUNTED_MAX: u64 = 10_000;

/// A pass every minute must be able to miss one and still start the run: five minutes.
pub const STARTING_DEADLINE_S: f64 = 300.0;

impl Schedule {
    /// `schedule`: 5 fields (minute hour day-of-month month day-of-week), or 6 with seconds
    /// first; `@hourly` and the like; a day of the month and of the week are either (Vixie).
    pub fn new(
        schedule: &str,
        zone: Option<&str>,
        collision: Option<Collision>,
        starting_deadline_s: Option<f64>,
    ) -> Result<Schedule, String> {
        let cron = CronParser::builder()
            .seconds(Seconds::Optional)
            .year(Year::Disallowed)
            .build()
            .parse(schedule)
            .map_err(|e| format!("field \"schedule\": {schedule:?}: {e}"))?;
        let zone = zone.unwrap_or("UTC");
        let timezone = TimeZone::get(zone)
            .map_err(|_| format!("field \"timezone\": {zone:?} is not a time zone name"))?;
        let deadline = starting_deadline_s.unwrap_or(STARTING_DEADLINE_S);
        if !((0.0..=86_400.0 * 366.0).contains(&deadline)) {
            return Err(format!(
                "field \"starting_deadline_s\": {deadline} is not 0 to a year"
            ));
        }
        let s = Schedule {
            cron,
            text: schedule.to_string(),
            zone: zone.to_string(),
            timezone,
            collision: collision.unwrap_or(Collision::KillExisting),
            starting_deadline_s: deadline,
        };
        // "0 0 30 2 *" parses but is never due: refused rather than silently idle.
        if s.next(0).is_none() {
            return Err(format!("field \"schedule\": {schedule:?} is never due"));
        }
        Ok(s)
    }

    fn zoned(&self, second: u64) -> Option<Zoned> {
        let t = Timestamp::from_second(i64::try_from(second).ok()?).ok()?;
        Some(t.to_zoned(self.timezone.clone()))
    }

    /// The latest scheduled time at or before `now` (Unix seconds).
    pub fn latest(&self, now: u64) -> Option<u64> {
        let t = self.cron.find_previous_occurrence(&self.zoned(now)?, true);
        u64::try_from(t.ok()?.timestamp().as_second()).ok()
    }

    /// The first scheduled time after `after`.
    pub fn next(&self, after: u64) -> Option<u64> {
        let t = self.cron.find_next_occurrence(&self.zoned(after)?, false);
        u64::try_from(t.ok()?.timestamp().as_second()).ok()
    }

    /// How many scheduled times lie in (after, upto], counting at most `COUNTED_MAX`.
    fn count(&self, after: u64, upto: u64) -> u64 {
        let Some(from) = self.zoned(after) else {
            return 0;
        };
        let times = self.cron.iter_after(from).take(COUNTED_MAX as usize);
        times
            .take_while(|t| u64::try_from(t.timestamp().as_second()).is_ok_and(|s| s <= upto))
            .count() as u64
    }
}

impl FromStr for Collision {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "kill_existing" => Ok(Collision::KillExisting),
            "cancel_new" => Ok(Collision::CancelNew),
            _ => Err(format!("{s:?} is not kill_existing or cancel_new")),
        }
    }
}

/// What a job's record keeps of its runs. (Counts saturate: a record comes from a pipe's
/// `cron` record, and no number in one may make a pass panic.)
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Runs {
    /// The run whose instances are placed (0: a batch job's first run; a cron job with
    /// `runs` 0 has none yet).
    pub current: u64,
    /// When it started (0 for a batch job's first run), and whether by hand.
    pub started: f64,
    pub manual: bool,
    /// The latest scheduled time acted on, by starting, cancelling or missing it (0: the
    /// pass has not seen the schedule yet).
    pub fired: u64,
    /// A run asked for by hand that has not started yet (0: none).
    pub requested: u64,
    /// Runs started (by schedule or by hand), scheduled times missed, and runs not started
    /// because the last one was still going (`cancel_new`).
    pub runs: u64,
    pub missed: u64,
    pub cancelled: u64,
}

impl Runs {
    pub fn encode(&self, e: &mut Encoder) {
        e.u64(self.current);
        e.f64(self.started);
        e.u8(self.manual as u8);
        for n in [
            self.fired,
            self.requested,
            self.runs,
            self.missed,
            self.cancelled,
        ] {
            e.u64(n);
        }
    }

    pub fn decode(d: &mut Decoder) -> Result<Runs, Corrupt> {
        Ok(Runs {
            current: d.u64()?,
            started: d.f64()?,
            manual: d.u8()? != 0,
            fired: d.u64()?,
            requested: d.u64()?,
            runs: d.u64()?,
            missed: d.u64()?,
            cancelled: d.u64()?,
        })
    }

    /// The number a run asked for by hand at `now` gets: its second, or the one after the
    /// current run's when that is later (a run's number only grows).
    pub fn request_number(&self, now: f64) -> u64 {
        (now as u64)
            .max(self.current.saturating_add(1))
            .max(self.requested)
    }
}

/// What happened to a job's runs in a pass, as its `cron` record and event say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// A cron job's schedule is read for the first time: times before now are not its own.
    Seen,
    Started,
    Cancelled,
    Missed,
}

impl Step {
    pub fn name(self) -> &'static str {
        match self {
            Step::Seen => "seen",
            Step::Started => "started",
            Step::Cancelled => "cancelled",
            Step::Missed => "missed",
        }
    }

    pub fn from_name(s: &str) -> Option<Step> {
        [Step::Seen, Step::Started, Step::Cancelled, Step::Missed]
            .into_iter()
            .find(|step| step.name() == s)
    }
}

/// A job's runs as a pass leaves them.
#[derive(Debug, PartialEq)]
pub struct Plan {
    pub runs: Runs,
    /// What changed, if anything did.
    pub step: Option<Step>,
    /// The run whose instances the pass places: None for a cron job that has not run.
    pub wanted: Option<u64>,
}

/// Plans a batch job's runs (`schedule` None) or a cron job's, from its record as the pass
/// read it (`was`, the default when it has none). `going`: an instance of the current run
/// is not over yet (runs, waits to restart, or waits for room).
pub fn plan(schedule: Option<&Schedule>, was: &Runs, going: bool, now: f64) -> Plan {
    let mut runs = was.clone();
    let mut step = None;
    let second = now.max(0.0) as u64;
    let cancel_new = schedule.is_some_and(|s| s.collision == Collision::CancelNew);
    let start = |runs: &mut Runs, number: u64, manual: bool| {
        if going && cancel_new {
            runs.cancelled = runs.cancelled.saturating_add(1);
            return Step::Cancelled;
        }
        runs.current = number.max(runs.current.saturating_add(1));
        runs.started = now;
        runs.manual = manual;
        runs.runs = runs.runs.saturating_add(1);
        runs.requested = 0;
        Step::Started
    };
    if let Some(s) = schedule {
        if runs.fired == 0 {
            runs.fired = second;
            step = Some(Step::Seen);
        } else if let Some(latest) = s.latest(second).filter(|&t| t > runs.fired) {
            let due = s.count(runs.fired, latest).max(1);
            runs.fired = latest;
            if now - latest as f64 > s.starting_deadline_s {
                runs.missed = runs.missed.saturating_add(due);
                step = Some(Step::Missed);
            } else {
                runs.missed = runs.missed.saturating_add(due - 1);
                step = Some(start(&mut runs, latest, false));
            }
        }
    }
    if runs.requested != 0 {
        if step == Some(Step::Started) {
            runs.requested = 0; // served by the run the schedule started
        } else {
            let number = runs.requested;
            runs.requested = 0;
            step = Some(start(&mut runs, number, true));
        }
    }
    let wanted = match schedule.is_some() && runs.runs == 0 {
        true => None,
        false => Some(runs.current),
    };
    Plan {
        step: step.filter(|_| runs != *was),
        runs,
        wanted,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every(text: &str) -> Schedule {
        Schedule::new(text, None, None, Some(3.0)).unwrap()
    }

    /// 2026-12-03 00:00:00 UTC.
    const DAY: u64 = 1_796_256_000;

    #[test]
    fn the_latest_due_time_starts_and_earlier_ones_are_missed() {
        let s = every("*/10 * * * * *");
        assert_eq!(s.latest(DAY + 25), Some(DAY + 20));
        assert_eq!(s.next(DAY + 20), Some(DAY + 30));
        let seen = plan(Some(&s), &Runs::default(), false, DAY as f64 + 3.5);
        assert_eq!(seen.step, Some(Step::Seen));
        assert_eq!((seen.runs.fired, seen.wanted), (DAY + 3, None));
        // Nothing due yet.
        let idle = plan(Some(&s), &seen.runs, false, DAY as f64 + 9.0);
        assert_eq!((idle.step, idle.wanted), (None, None));
        // Due at +10, +20, +30: one run, for +30, and two missed.
        let p = plan(Some(&s), &seen.runs, false, DAY as f64 + 31.0);
        assert_eq!(p.step, Some(Step::Started));
        assert_eq!(
            (p.runs.current, p.runs.runs, p.runs.missed),
            (DAY + 30, 1, 2)
        );
        assert_eq!(p.wanted, Some(DAY + 30));
        // The same pass again, or a second pass on the record it left: nothing more.
        let again = plan(Some(&s), &p.runs, true, DAY as f64 + 32.0);
        assert_eq!((again.step, again.runs), (None, p.runs.clone()));
        // Past the deadline: missed, and the run before stays current.
        let late = plan(Some(&s), &p.runs, false, DAY as f64 + 75.0);
        assert_eq!(late.step, Some(Step::Missed));
        assert_eq!((late.runs.missed, late.runs.fired), (2 + 4, DAY + 70));
        assert_eq!(late.wanted, Some(DAY + 30));
    }

    #[test]
    fn cancel_new_lets_the_going_run_finish() {
        let s = Schedule::new(
            "* * * * *",
            Some("Europe/Berlin"),
            Some(Collision::CancelNew),
            None,
        )
        .unwrap();
        let was = Runs {
            current: DAY,
            fired: DAY,
            runs: 1,
            ..Runs::default()
        };
        let p = plan(Some(&s), &was, true, DAY as f64 + 61.0);
        assert_eq!(p.step, Some(Step::Cancelled));
        assert_eq!(
            (p.runs.current, p.runs.cancelled, p.runs.fired),
            (DAY, 1, DAY + 60)
        );
        let p = plan(Some(&s), &was, false, DAY as f64 + 61.0);
        assert_eq!((p.step, p.runs.current), (Some(Step::Started), DAY + 60));
    }

    #[test]
    fn a_run_asked_for_by_hand_starts_once() {
        // A batch job: its first run is 0.
        let first = plan(None, &Runs::default(), true, 100.0);
        assert_eq!((first.step, first.wanted), (None, Some(0)));
        let asked = Runs {
            requested: Runs::default().request_number(100.0),
            ..Runs::default()
        };
        let p = plan(None, &asked, false, 101.0);
        assert_eq!(p.step, Some(Step::Started));
        assert_eq!(
            (p.runs.current, p.runs.requested, p.runs.manual),
            (100, 0, true)
        );
        assert_eq!(p.wanted, Some(100));
        // Asked again within the same second: the next number.
        assert_eq!(p.runs.request_number(100.5), 101);
    }

    #[test]
    fn counts_at_their_limits_saturate_rather_than_panic() {
        let was = Runs {
            current: u64::MAX,
            fired: 1,
            requested: u64::MAX,
            runs: u64::MAX,
            missed: u64::MAX,
            cancelled: u64::MAX,
            ..Runs::default()
        };
        let cancel = Schedule::new("* * * * * *", None, Some(Collision::CancelNew), None).unwrap();
        for s in [Some(&every("* * * * * *")), Some(&cancel), None] {
            for going in [false, true] {
                let p = plan(s, &was, going, DAY as f64);
                assert_eq!(p.runs.current, u64::MAX);
            }
        }
        assert_eq!(was.request_number(1.0), u64::MAX);
    }

    #[test]
    fn schedules_that_are_not_are_refused() {
        for (text, zone, why) in [
            ("* * *", None, "field \"schedule\""),
            ("61 * * * *", None, "field \"schedule\""),
            ("0 0 30 2 *", None, "never due"),
            ("* * * * *", Some("Mars/Olympus"), "not a time zone"),
        ] {
            let e = Schedule::new(text, zone, None, None).unwrap_err();
            assert!(e.contains(why), "{text}: {e}");
        }
        assert!(Schedule::new("* * * * *", None, None, Some(-1.0)).is_err());
        assert!(Schedule::new("@hourly", None, None, None).is_ok());
    }
}
