# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_job_global_optspecs
    string join \n state= json h/help V/version
end

function __fish_job_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_job_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_job_using_subcommand
    set -l cmd (__fish_job_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c job -n "__fish_job_needs_command" -l state -d 'The cluster\'s state file [default: /var/lib/formic/state for root, else $XDG_STATE_HOME/formic/state or ~/.local/state/formic/state]' -r -F
complete -c job -n "__fish_job_needs_command" -l json -d 'Print JSON lines even when standard output is a terminal (they are the default when it is not)'
complete -c job -n "__fish_job_needs_command" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c job -n "__fish_job_needs_command" -s V -l version -d 'Print version'
complete -c job -n "__fish_job_needs_command" -f -a "run" -d 'Ask for a run of a batch or cron job now: the next pass starts it, with a cron job\'s collision policy if its last run is still going (a batch job\'s stops what is left)'
complete -c job -n "__fish_job_needs_command" -f -a "runs" -d 'Each batch or cron job\'s runs: every job that has a run or a schedule, or the jobs named'
complete -c job -n "__fish_job_needs_command" -f -a "status" -d 'Each job of the job files (or those named): desired, running, healthy, what the next pass would place and leave pending (with why), throttled, the specs its instances run, and each instance\'s host, state and uptime'
complete -c job -n "__fish_job_needs_command" -f -a "metrics" -d 'The cluster as a Prometheus text file (node_exporter\'s textfile collector): tasks by job and state; desired, running and healthy instances; counters of placements, restarts, failures, LOST, preemptions and cron runs; hosts by maintenance and liveness; capacity, reserved and free. `scripts/reconcile --metrics FILE` writes it at the end of every pass, with the pass\'s pending instances and duration'
complete -c job -n "__fish_job_needs_command" -f -a "logs" -d 'A task\'s output from the host it runs on (this machine, or one reached over ssh): standard output, or standard error. Each run of a task on a host (each incarnation) has its own logs; a host keeps the last five runs\' of each task'
complete -c job -n "__fish_job_needs_command" -f -a "history" -d 'What happened: every transition of tasks, jobs and hosts, oldest first, from the history kept beside the state'
complete -c job -n "__fish_job_needs_command" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c job -n "__fish_job_using_subcommand run" -l state -d 'The cluster\'s state file [default: /var/lib/formic/state for root, else $XDG_STATE_HOME/formic/state or ~/.local/state/formic/state]' -r -F
complete -c job -n "__fish_job_using_subcommand run" -l json -d 'Print JSON lines even when standard output is a terminal (they are the default when it is not)'
complete -c job -n "__fish_job_using_subcommand run" -s h -l help -d 'Print help'
complete -c job -n "__fish_job_using_subcommand runs" -l last -d 'Also the last N runs before the current one, from the history: each one\'s start, end, and its instances\' hosts, states and exit statuses' -r
complete -c job -n "__fish_job_using_subcommand runs" -l state -d 'The cluster\'s state file [default: /var/lib/formic/state for root, else $XDG_STATE_HOME/formic/state or ~/.local/state/formic/state]' -r -F
complete -c job -n "__fish_job_using_subcommand runs" -l json -d 'Print JSON lines even when standard output is a terminal (they are the default when it is not)'
complete -c job -n "__fish_job_using_subcommand runs" -s h -l help -d 'Print help'
complete -c job -n "__fish_job_using_subcommand status" -l jobs -d 'The job files or directories the passes place (scripts/reconcile\'s JOBS)' -r -F
complete -c job -n "__fish_job_using_subcommand status" -l state -d 'The cluster\'s state file [default: /var/lib/formic/state for root, else $XDG_STATE_HOME/formic/state or ~/.local/state/formic/state]' -r -F
complete -c job -n "__fish_job_using_subcommand status" -l json -d 'Print JSON lines even when standard output is a terminal (they are the default when it is not)'
complete -c job -n "__fish_job_using_subcommand status" -s h -l help -d 'Print help'
complete -c job -n "__fish_job_using_subcommand metrics" -l jobs -d 'The job files or directories the passes place (scripts/reconcile\'s JOBS)' -r -F
complete -c job -n "__fish_job_using_subcommand metrics" -l pending -d 'The records a pass printed (launch\'s output): its pending instances are counted by job and reason' -r -F
complete -c job -n "__fish_job_using_subcommand metrics" -l pass-started -d 'The pass started at this Unix time: its duration and end are shown' -r
complete -c job -n "__fish_job_using_subcommand metrics" -l pass-status -d 'The pass\'s exit status' -r
complete -c job -n "__fish_job_using_subcommand metrics" -l out -d 'Write to FILE (through a temporary file renamed over it), not standard output' -r -F
complete -c job -n "__fish_job_using_subcommand metrics" -l state -d 'The cluster\'s state file [default: /var/lib/formic/state for root, else $XDG_STATE_HOME/formic/state or ~/.local/state/formic/state]' -r -F
complete -c job -n "__fish_job_using_subcommand metrics" -l json -d 'Print JSON lines even when standard output is a terminal (they are the default when it is not)'
complete -c job -n "__fish_job_using_subcommand metrics" -s h -l help -d 'Print help'
complete -c job -n "__fish_job_using_subcommand logs" -l incarnation -d 'An earlier run: the task\'s incarnation N (`#N` in `job history`, `incarnation` in `reap tasks`)' -r
complete -c job -n "__fish_job_using_subcommand logs" -l run -d 'A batch or cron job\'s run (its number, as `job runs` shows it): the task\'s last incarnation in that run' -r
complete -c job -n "__fish_job_using_subcommand logs" -l state -d 'The cluster\'s state file [default: /var/lib/formic/state for root, else $XDG_STATE_HOME/formic/state or ~/.local/state/formic/state]' -r -F
complete -c job -n "__fish_job_using_subcommand logs" -l stderr -d 'Standard error instead of standard output'
complete -c job -n "__fish_job_using_subcommand logs" -s f -l follow -d 'Go on printing what the run writes until it ends (or until interrupted)'
complete -c job -n "__fish_job_using_subcommand logs" -l json -d 'Print JSON lines even when standard output is a terminal (they are the default when it is not)'
complete -c job -n "__fish_job_using_subcommand logs" -s h -l help -d 'Print help'
complete -c job -n "__fish_job_using_subcommand history" -l since -d 'Only transitions from this time on: a duration ago (30m, 2h, 1d) or a time (2026-12-24T06:00:00Z, or Unix seconds)' -r
complete -c job -n "__fish_job_using_subcommand history" -l until -d 'Only transitions before this time (as --since)' -r
complete -c job -n "__fish_job_using_subcommand history" -l state -d 'The cluster\'s state file [default: /var/lib/formic/state for root, else $XDG_STATE_HOME/formic/state or ~/.local/state/formic/state]' -r -F
complete -c job -n "__fish_job_using_subcommand history" -s f -l follow -d 'Go on printing transitions as they are made (until interrupted)'
complete -c job -n "__fish_job_using_subcommand history" -l json -d 'Print JSON lines even when standard output is a terminal (they are the default when it is not)'
complete -c job -n "__fish_job_using_subcommand history" -s h -l help -d 'Print help'
complete -c job -n "__fish_job_using_subcommand help; and not __fish_seen_subcommand_from run runs status metrics logs history help" -f -a "run" -d 'Ask for a run of a batch or cron job now: the next pass starts it, with a cron job\'s collision policy if its last run is still going (a batch job\'s stops what is left)'
complete -c job -n "__fish_job_using_subcommand help; and not __fish_seen_subcommand_from run runs status metrics logs history help" -f -a "runs" -d 'Each batch or cron job\'s runs: every job that has a run or a schedule, or the jobs named'
complete -c job -n "__fish_job_using_subcommand help; and not __fish_seen_subcommand_from run runs status metrics logs history help" -f -a "status" -d 'Each job of the job files (or those named): desired, running, healthy, what the next pass would place and leave pending (with why), throttled, the specs its instances run, and each instance\'s host, state and uptime'
complete -c job -n "__fish_job_using_subcommand help; and not __fish_seen_subcommand_from run runs status metrics logs history help" -f -a "metrics" -d 'The cluster as a Prometheus text file (node_exporter\'s textfile collector): tasks by job and state; desired, running and healthy instances; counters of placements, restarts, failures, LOST, preemptions and cron runs; hosts by maintenance and liveness; capacity, reserved and free. `scripts/reconcile --metrics FILE` writes it at the end of every pass, with the pass\'s pending instances and duration'
complete -c job -n "__fish_job_using_subcommand help; and not __fish_seen_subcommand_from run runs status metrics logs history help" -f -a "logs" -d 'A task\'s output from the host it runs on (this machine, or one reached over ssh): standard output, or standard error. Each run of a task on a host (each incarnation) has its own logs; a host keeps the last five runs\' of each task'
complete -c job -n "__fish_job_using_subcommand help; and not __fish_seen_subcommand_from run runs status metrics logs history help" -f -a "history" -d 'What happened: every transition of tasks, jobs and hosts, oldest first, from the history kept beside the state'
complete -c job -n "__fish_job_using_subcommand help; and not __fish_seen_subcommand_from run runs status metrics logs history help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
