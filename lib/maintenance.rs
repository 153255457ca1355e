//! The maintenance of hosts, as Aurora and Nomad have it: a host is scheduled for
//! maintenance (still in service, used last), then draining (its tasks are stopped and placed
//! elsewhere), then drained (nothing left on it), until an operator puts it back. This module
//! says which steps may be taken and when a drain is over; `offer` takes the operators'
//! steps, and every transaction that stops tasks calls [`settle_drains`].

use crate::exit::{bad_input, fail, Status};
use crate::host::{Host, Mode};
use crate::state::Txn;
use crate::usage;

/// A drain with no tasks left to move is already complete.
pub fn settled(mode: Mode, tasks: u32) -> Mode {
    if mode == Mode::Draining && tasks == 0 {
        Mode::Drained
    } else {
        mode
    }
}

/// Moves draining hosts that no longer hold tasks to drained. Any transaction that stops
/// tasks calls this, so "drained" always means "nothing left there".
pub fn settle_drains(tx: &mut Txn) {
    let usage = usage::by_host(tx.view());
    let done: Vec<u32> = tx
        .view()
        .hosts
        .iter()
        .filter(|(s, h)| h.maintenance.mode == Mode::Draining && usage[*s as usize].tasks == 0)
        .map(|(s, _)| s)
        .collect();
    for slot in done {
        let mut h = tx.view().hosts.get(slot).unwrap().clone();
        h.maintenance.mode = Mode::Drained;
        h.maintenance.since = tx.now();
        tx.set(slot, Some(h));
    }
}

/// Scheduling is the first step of a maintenance: on a draining or drained host it would
/// put the host back in service and end its drain without anyone asking for that. A drain
/// ends only with `undrain`, as Aurora's end_maintenance and Nomad's `node drain -disable`.
pub fn refuse_backward_step(h: &Host, mode: Mode, tasks: u32) -> anyhow::Result<()> {
    let now = settled(h.maintenance.mode, tasks);
    if mode == Mode::Scheduled && !now.takes_work() {
        return Err(bad_input(format!(
            "host {} is {}; scheduling it would end its drain (end it first with \
             `offer undrain {}`)",
            h.name,
            now.name(),
            h.name
        )));
    }
    Ok(())
}

/// Ending maintenance another owner asked for takes `--force`: a drain scripted by one team
/// is not ended by another's undrain by mistake (Aurora's maintenance has no owner; Nomad's
/// drain can be disabled by anyone with the ACL).
pub fn refuse_others_maintenance(h: &Host, asker: &str) -> anyhow::Result<()> {
    let m = &h.maintenance;
    if m.mode == Mode::None || m.owner.is_empty() || m.owner == asker {
        return Ok(());
    }
    Err(fail(
        Status::Permission,
        format!(
            "host {} is {} by {}{}; undrain it as {} or with --force",
            h.name,
            m.mode.name(),
            m.owner,
            if m.reason.is_empty() {
                String::new()
            } else {
                format!(" ({})", m.reason)
            },
            m.owner
        ),
    ))
}

/// The longest a drain's deadline may lie ahead: Aurora's client forces after 7 days at
/// the latest; a month leaves room for slow hardware swaps and no more.
pub const MAX_DEADLINE_S: f64 = 30.0 * 86_400.0;

/// `--deadline`: `never` (0), a duration from `now` (`2h`, `1d 12h`, or seconds), or a
/// time (RFC 3339, UTC: `2026-12-24T06:00:00Z`). A time already past forces at once.
pub fn parse_deadline(s: &str, now: f64) -> Result<f64, String> {
    let s = s.trim();
    if s == "never" {
        return Ok(0.0);
    }
    let at = if let Ok(secs) = s.parse::<f64>() {
        now + secs
    } else if let Ok(d) = humantime::parse_duration(s) {
        now + d.as_secs_f64()
    } else {
        let t = humantime::parse_rfc3339_weak(s).map_err(|_| {
            format!("{s:?} is not a duration (2h, 30m, 1d), a time (2026-12-24T06:00:00Z) or never")
        })?;
        t.duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64())
    };
    if !(at.is_finite() && at >= 0.0) || at - now > MAX_DEADLINE_S {
        return Err(format!("{s:?}: a deadline at most 30 days ahead"));
    }
    // 0 means none: a deadline at the epoch is long past, as any past time.
    Ok(at.max(1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_read_as_operators_write_them() {
        let now = 1_800_000_000.0;
        assert_eq!(parse_deadline("never", now), Ok(0.0));
        assert_eq!(parse_deadline("2h", now), Ok(now + 7_200.0));
        assert_eq!(parse_deadline("1d 12h", now), Ok(now + 129_600.0));
        assert_eq!(parse_deadline("90", now), Ok(now + 90.0));
        assert_eq!(parse_deadline("2027-01-15T08:00:00Z", now - 60.0), Ok(now));
        assert!(parse_deadline("2020-01-01T00:00:00Z", now).unwrap() < now);
        assert!(parse_deadline("soon", now)
            .unwrap_err()
            .contains("not a duration"));
        assert!(parse_deadline("90d", now).unwrap_err().contains("30 days"));
        assert!(
            parse_deadline("-5", now).is_ok(),
            "a time past forces at once"
        );
        assert!(parse_deadline("inf", now).is_err());
    }
}
