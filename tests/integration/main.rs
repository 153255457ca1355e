//! formic's integration tests: the real binaries and the real state file, in temporary
//! directories, with a timeout on every spawned command. One test binary keeps the build
//! short; the modules split it by subject.

mod announce;
mod common;
mod concurrency;
mod containment;
mod corruption;
mod crash;
mod cron;
mod docs;
mod drain;
mod fleet;
mod fleet_ssh;
mod fuzz;
mod host_side;
mod launch;
mod logs;
mod metrics;
mod netns;
mod offer_cli;
mod pack_cli;
mod pack_props;
mod parsers;
mod promises;
mod races;
mod reap;
mod rollout;
mod supervise;
mod zk;
