//! formic: schedule stateless services onto a fleet of hosts with small Unix tools.
//!
//! The modules follow the data flow: `records` (JSON lines on pipes) and `state` (the shared
//! state file) are what the tools exchange; `host` and `task` are the records themselves;
//! each tool (`offer`, …) is a module with a `Cli` and a `run`.

pub mod announce;
pub mod cli;
pub mod clock;
pub mod complete;
pub mod counts;
pub mod cron;
pub mod drain;
pub mod exit;
pub mod fixed;
pub mod host;
pub mod identity;
pub mod job;
pub mod launch;
pub mod limits;
pub mod liveness;
pub mod maintenance;
pub mod offer;
pub mod pack;
pub mod process;
pub mod reap;
pub mod rebuild;
pub mod records;
pub mod roll;
pub mod rollout;
pub mod runlogs;
pub mod sla;
pub mod specstore;
pub mod state;
pub mod supervise;
pub mod task;
pub mod taskdir;
pub mod transport;
pub mod usage;
