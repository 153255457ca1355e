# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_reap_global_optspecs
    string join \n state= json follow asked-only start-grace= min-run= lost-after= parallel= h/help V/version
end

function __fish_reap_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_reap_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_reap_using_subcommand
    set -l cmd (__fish_reap_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c reap -n "__fish_reap_needs_command" -l state -d 'The cluster\'s state file [default: /var/lib/formic/state for root, else $XDG_STATE_HOME/formic/state or ~/.local/state/formic/state]' -r -F
complete -c reap -n "__fish_reap_needs_command" -l start-grace -d 'Seconds a task may stay ASSIGNED (or STARTING) with no supervisor, while the launch that recorded it lives, before reap gives up on its start: ASSIGNED goes back to PENDING, STARTING becomes LOST' -r
complete -c reap -n "__fish_reap_needs_command" -l min-run -d 'A failed run shorter than this many seconds makes the task THROTTLED (its next start waits backoff_s × 2^(failures-1), at most max_backoff_s); a longer healthy run resets the failure count' -r
complete -c reap -n "__fish_reap_needs_command" -l lost-after -d 'An ssh host that passes cannot reach for this long (90s, 5m, ...) is down: its tasks are LOST and placed elsewhere (a pass declares at most a tenth of the hosts down, and none when it cannot reach most of them)' -r
complete -c reap -n "__fish_reap_needs_command" -l parallel -d 'Hosts worked at once' -r
complete -c reap -n "__fish_reap_needs_command" -l json -d 'Print JSON lines even when standard output is a terminal (they are the default when it is not)'
complete -c reap -n "__fish_reap_needs_command" -l follow -d 'Stay running: collect and stop continuously and print events as they happen (task directories are polled every 50 ms; standard input is not read)'
complete -c reap -n "__fish_reap_needs_command" -l asked-only -d 'Stop only the tasks asked for on standard input, reaching only their hosts: the survey of every host (liveness, strays, what ended) is left to the reap that ran before pack in the same pass (scripts/reconcile\'s second reap)'
complete -c reap -n "__fish_reap_needs_command" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c reap -n "__fish_reap_needs_command" -s V -l version -d 'Print version'
complete -c reap -n "__fish_reap_needs_command" -f -a "kill" -d 'Stop tasks gracefully'
complete -c reap -n "__fish_reap_needs_command" -f -a "tasks" -d 'List tasks with their host, state, pid, ports, health, failure count, last exit status and the reason for their state'
complete -c reap -n "__fish_reap_needs_command" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c reap -n "__fish_reap_using_subcommand kill" -l job -d 'Stop every instance of this job (role/env/name; repeatable)' -r
complete -c reap -n "__fish_reap_using_subcommand kill" -l host -d 'Stop every task on this host (repeatable)' -r
complete -c reap -n "__fish_reap_using_subcommand kill" -l state -d 'The cluster\'s state file [default: /var/lib/formic/state for root, else $XDG_STATE_HOME/formic/state or ~/.local/state/formic/state]' -r -F
complete -c reap -n "__fish_reap_using_subcommand kill" -l start-grace -d 'Seconds a task may stay ASSIGNED (or STARTING) with no supervisor, while the launch that recorded it lives, before reap gives up on its start: ASSIGNED goes back to PENDING, STARTING becomes LOST' -r
complete -c reap -n "__fish_reap_using_subcommand kill" -l min-run -d 'A failed run shorter than this many seconds makes the task THROTTLED (its next start waits backoff_s × 2^(failures-1), at most max_backoff_s); a longer healthy run resets the failure count' -r
complete -c reap -n "__fish_reap_using_subcommand kill" -l lost-after -d 'An ssh host that passes cannot reach for this long (90s, 5m, ...) is down: its tasks are LOST and placed elsewhere (a pass declares at most a tenth of the hosts down, and none when it cannot reach most of them)' -r
complete -c reap -n "__fish_reap_using_subcommand kill" -l parallel -d 'Hosts worked at once' -r
complete -c reap -n "__fish_reap_using_subcommand kill" -l json -d 'Print JSON lines even when standard output is a terminal (they are the default when it is not)'
complete -c reap -n "__fish_reap_using_subcommand kill" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c reap -n "__fish_reap_using_subcommand tasks" -l job -d 'Only the instances of this job (role/env/name; repeatable)' -r
complete -c reap -n "__fish_reap_using_subcommand tasks" -l host -d 'Only tasks on this host (repeatable)' -r
complete -c reap -n "__fish_reap_using_subcommand tasks" -l in -d 'Only tasks in these states (RUNNING, THROTTLED, ...; comma-separated)' -r
complete -c reap -n "__fish_reap_using_subcommand tasks" -l state -d 'The cluster\'s state file [default: /var/lib/formic/state for root, else $XDG_STATE_HOME/formic/state or ~/.local/state/formic/state]' -r -F
complete -c reap -n "__fish_reap_using_subcommand tasks" -l start-grace -d 'Seconds a task may stay ASSIGNED (or STARTING) with no supervisor, while the launch that recorded it lives, before reap gives up on its start: ASSIGNED goes back to PENDING, STARTING becomes LOST' -r
complete -c reap -n "__fish_reap_using_subcommand tasks" -l min-run -d 'A failed run shorter than this many seconds makes the task THROTTLED (its next start waits backoff_s × 2^(failures-1), at most max_backoff_s); a longer healthy run resets the failure count' -r
complete -c reap -n "__fish_reap_using_subcommand tasks" -l lost-after -d 'An ssh host that passes cannot reach for this long (90s, 5m, ...) is down: its tasks are LOST and placed elsewhere (a pass declares at most a tenth of the hosts down, and none when it cannot reach most of them)' -r
complete -c reap -n "__fish_reap_using_subcommand tasks" -l parallel -d 'Hosts worked at once' -r
complete -c reap -n "__fish_reap_using_subcommand tasks" -l json -d 'Print JSON lines even when standard output is a terminal (they are the default when it is not)'
complete -c reap -n "__fish_reap_using_subcommand tasks" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c reap -n "__fish_reap_using_subcommand help; and not __fish_seen_subcommand_from kill tasks help" -f -a "kill" -d 'Stop tasks gracefully'
complete -c reap -n "__fish_reap_using_subcommand help; and not __fish_seen_subcommand_from kill tasks help" -f -a "tasks" -d 'List tasks with their host, state, pid, ports, health, failure count, last exit status and the reason for their state'
complete -c reap -n "__fish_reap_using_subcommand help; and not __fish_seen_subcommand_from kill tasks help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
