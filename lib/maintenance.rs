//! The maintenance of hosts, as Aurora and Nomad have it: a host is scheduled for
//! maintenance (still in service, used last), then draining (its tasks are stopped and placed
//! elsewhere), then drained (nothing left on it), until an operator puts it back. This module
//! says which steps may be taken and when a drain is over; `offer` takes the operators'
//! steps, and every transaction that stops tasks calls [`settle_drains`].

use crate::exit::bad_input;
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
