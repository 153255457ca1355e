//! The task's world: its identity, sandbox and logs directory, and the command that runs
//! in it (the task, and its health command alike).

use std::fs::{self, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result};
use nix::sys::signal::SigSet;
use nix::unistd::{Gid, Uid};

use super::Spec;
use crate::exit::{fail, Status as Exit};
use crate::identity::{self, Ids};
use crate::limits::{Enforcer, InChild};
use crate::taskdir::Status;

/// Gives the task its identity (recorded in `status`), its logs and sandbox, and starts it
/// in its world; returns its ids, the owner of its logs and the child.
pub(super) fn spawn(
    dir: &Path,
    spec: &Spec,
    limits: &Enforcer,
    status: &mut Status,
) -> Result<(Option<Ids>, (Uid, Gid), std::process::Child)> {
    let ids = identity(spec, dir)?;
    let owner = ids.as_ref().map_or(Uid::effective(), |i| i.uid);
    status.uid = Some(owner.as_raw());
    let log_owner = (owner, identity::log_gid(spec.log_group.as_deref()));
    crate::runlogs::make_run_dir(dir, spec.incarnation)?;
    give_logs(dir, log_owner)?;
    give_sandbox(dir, ids.as_ref())?;
    if let Some(ids) = &ids {
        reachable(&dir.join("sandbox"), ids)?;
    }
    let mut cmd = in_task_world(spec, dir, &spec.argv, ids.clone(), limits.for_child())?;
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = cmd
        .spawn()
        .with_context(|| format!("starting {:?}", spec.argv[0]))?;
    Ok((ids, log_owner, child))
}

/// The ids the task runs as (None: the supervisor's own): the user its job names, else an
/// identity of its own from the spec's range. Root only when the spec allows it.
fn identity(spec: &Spec, dir: &Path) -> Result<Option<Ids>> {
    let ids = match (&spec.user, spec.dynamic_ids) {
        (Some(name), _) => Some(identity::named(name)?),
        (None, Some(range)) => Some(identity::dynamic(dir, range)?),
        (None, None) => None,
    };
    let uid = ids.as_ref().map_or(Uid::effective(), |i| i.uid);
    if uid.is_root() && !spec.allow_root {
        return Err(fail(
            Exit::Permission,
            format!("task {} would run as root, which is not allowed", spec.task),
        ));
    }
    Ok(ids)
}

/// The sandbox belongs to the task alone: its owner, mode 0700. Changed through a
/// descriptor of the directory itself, never by a path the task could redirect.
fn give_sandbox(dir: &Path, ids: Option<&Ids>) -> Result<()> {
    let sandbox = OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_DIRECTORY | nix::libc::O_NOFOLLOW)
        .open(dir.join("sandbox"))
        .with_context(|| format!("opening {}/sandbox", dir.display()))?;
    if let Some(ids) = ids {
        nix::unistd::fchown(sandbox.as_raw_fd(), Some(ids.uid), Some(ids.gid))
            .context("giving the sandbox to the task's user")?;
    }
    nix::sys::stat::fchmod(
        sandbox.as_raw_fd(),
        nix::sys::stat::Mode::from_bits_truncate(0o700),
    )
    .context("making the sandbox private")?;
    Ok(())
}

/// The logs earlier runs left go to this run's user (a task directory whose uid changed
/// must not leave them to the uid's next holder): every run's kept, and those of the
/// layout before runs had their own (`logs/stdout`). `logs/` and its run directories are
/// root's (`runlogs`): their entries are ours.
fn give_logs(dir: &Path, (uid, gid): (Uid, Gid)) -> Result<()> {
    let logs = crate::runlogs::logs_dir(dir);
    let runs = crate::runlogs::runs(dir).into_iter().map(|(_, run)| run);
    for at in std::iter::once(logs.clone()).chain(runs) {
        for name in ["stdout", "stderr", "stdout.1", "stderr.1"] {
            match std::os::unix::fs::lchown(at.join(name), Some(uid.as_raw()), Some(gid.as_raw())) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(e)
                        .with_context(|| format!("giving {}/{name} to the task", at.display()))
                }
            }
        }
    }
    Ok(())
}

/// Whether the task's user can reach its sandbox by its path: search permission on every
/// directory from `/` down, by mode and owner. A task that cannot still runs if started
/// (the supervisor enters the sandbox for it), but cannot name its own working directory:
/// getcwd() and every path under it fail, and a web server answers 404 to everything.
/// (The task's own `chdir` into the sandbox, after it has its identity, is the exact test:
/// it also sees ACLs. This one is the explanation.)
fn reachable(sandbox: &Path, ids: &Ids) -> Result<()> {
    if ids.uid.is_root() {
        return Ok(());
    }
    let mut at = PathBuf::new();
    for part in sandbox.components() {
        at.push(part);
        let meta = fs::metadata(&at).with_context(|| format!("reading {}", at.display()))?;
        let bit = if meta.uid() == ids.uid.as_raw() {
            0o100
        } else if meta.gid() == ids.gid.as_raw()
            || ids.groups.iter().any(|g| g.as_raw() == meta.gid())
        {
            0o010
        } else {
            0o001
        };
        if meta.mode() & bit == 0 {
            return Err(fail(
                Exit::Permission,
                format!(
                    "the task's user {} cannot reach its sandbox: {} is mode {:04o} (owner {}, group {})",
                    ids.uid,
                    at.display(),
                    meta.mode() & 0o7777,
                    meta.uid(),
                    meta.gid()
                ),
            ));
        }
    }
    Ok(())
}

/// A command in the task's world, for the task and for its health command alike: the
/// sandbox as working directory (entered as the task's user), the spec's environment and
/// nothing else, stdin from /dev/null, a session of its own, the task's cgroups, no new
/// privileges, the task's user with no capabilities, and only fds 0-2.
pub(super) fn in_task_world(
    spec: &Spec,
    dir: &Path,
    argv: &[String],
    ids: Option<Ids>,
    limits: InChild,
) -> Result<Command> {
    use nix::libc;
    let Some((program, args)) = argv.split_first() else {
        return Err(fail(Exit::BadInput, "an empty command"));
    };
    let sandbox = std::ffi::CString::new(dir.join("sandbox").as_os_str().as_bytes())
        .context("the sandbox's path")?;
    let mut cmd = Command::new(program);
    cmd.args(args)
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null());
    // SAFETY: the closure runs between fork and exec and makes only async-signal-safe
    // system calls (sigprocmask, setsid, write, setrlimit, prctl, setgroups, setgid,
    // setuid, chdir, close_range) on values prepared before the fork.
    unsafe {
        cmd.pre_exec(move || {
            SigSet::empty()
                .thread_set_mask()
                .map_err(std::io::Error::from)?;
            nix::unistd::setsid().map_err(std::io::Error::from)?;
            // Into its cgroups (or under its rlimits) before it runs a single instruction
            // of its own, and while still privileged enough to move itself.
            limits.apply()?;
            // Neither setuid binaries nor file capabilities give it more than it has.
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if let Some(ids) = &ids {
                if !ids.uid.is_root() {
                    // No capability can come back, whatever it executes.
                    for cap in 0..64 {
                        libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0);
                    }
                }
                nix::unistd::setgroups(&ids.groups).map_err(std::io::Error::from)?;
                nix::unistd::setgid(ids.gid).map_err(std::io::Error::from)?;
                nix::unistd::setuid(ids.uid).map_err(std::io::Error::from)?;
            }
            // Entered as the task: a sandbox its user cannot reach is refused here rather
            // than given to it as a working directory it cannot name.
            if libc::chdir(sandbox.as_ptr()) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // Only 0-2 cross, whatever a library left open without CLOEXEC.
            super::only_std_fds_cross_exec()
        });
    }
    Ok(cmd)
}
