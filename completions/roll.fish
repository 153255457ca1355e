# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_roll_global_optspecs
    string join \n state= json h/help V/version
end

function __fish_roll_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_roll_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_roll_using_subcommand
    set -l cmd (__fish_roll_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c roll -n "__fish_roll_needs_command" -l state -d 'The cluster\'s state file [default: /var/lib/formic/state for root, else $XDG_STATE_HOME/formic/state or ~/.local/state/formic/state]' -r -F
complete -c roll -n "__fish_roll_needs_command" -l json -d 'Print JSON lines even when standard output is a terminal (they are the default when it is not)'
complete -c roll -n "__fish_roll_needs_command" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c roll -n "__fish_roll_needs_command" -s V -l version -d 'Print version'
complete -c roll -n "__fish_roll_needs_command" -f -a "status" -d 'Where each job\'s update is (every job with one, or the jobs named): its state, specs, progress, and what it waits for'
complete -c roll -n "__fish_roll_needs_command" -f -a "pause" -d 'Pause a job\'s update; with none under way, hold the next one (it starts paused)'
complete -c roll -n "__fish_roll_needs_command" -f -a "resume" -d 'Resume a paused or held update, or start it on a range of instances (a canary), or widen a canary to the whole job'
complete -c roll -n "__fish_roll_needs_command" -f -a "start" -d 'Resume a paused or held update, or start it on a range of instances (a canary), or widen a canary to the whole job'
complete -c roll -n "__fish_roll_needs_command" -f -a "abort" -d 'Abort a job\'s update: instances stay on the spec they run (it is not tried again until the job file changes)'
complete -c roll -n "__fish_roll_needs_command" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c roll -n "__fish_roll_using_subcommand status" -l state -d 'The cluster\'s state file [default: /var/lib/formic/state for root, else $XDG_STATE_HOME/formic/state or ~/.local/state/formic/state]' -r -F
complete -c roll -n "__fish_roll_using_subcommand status" -l json -d 'Print JSON lines even when standard output is a terminal (they are the default when it is not)'
complete -c roll -n "__fish_roll_using_subcommand status" -s h -l help -d 'Print help'
complete -c roll -n "__fish_roll_using_subcommand pause" -l state -d 'The cluster\'s state file [default: /var/lib/formic/state for root, else $XDG_STATE_HOME/formic/state or ~/.local/state/formic/state]' -r -F
complete -c roll -n "__fish_roll_using_subcommand pause" -l json -d 'Print JSON lines even when standard output is a terminal (they are the default when it is not)'
complete -c roll -n "__fish_roll_using_subcommand pause" -s h -l help -d 'Print help'
complete -c roll -n "__fish_roll_using_subcommand resume" -l instances -d 'The instances to update, FIRST-LAST or one number (default: all)' -r
complete -c roll -n "__fish_roll_using_subcommand resume" -l state -d 'The cluster\'s state file [default: /var/lib/formic/state for root, else $XDG_STATE_HOME/formic/state or ~/.local/state/formic/state]' -r -F
complete -c roll -n "__fish_roll_using_subcommand resume" -l json -d 'Print JSON lines even when standard output is a terminal (they are the default when it is not)'
complete -c roll -n "__fish_roll_using_subcommand resume" -s h -l help -d 'Print help'
complete -c roll -n "__fish_roll_using_subcommand start" -l instances -d 'The instances to update, FIRST-LAST or one number (default: all)' -r
complete -c roll -n "__fish_roll_using_subcommand start" -l state -d 'The cluster\'s state file [default: /var/lib/formic/state for root, else $XDG_STATE_HOME/formic/state or ~/.local/state/formic/state]' -r -F
complete -c roll -n "__fish_roll_using_subcommand start" -l json -d 'Print JSON lines even when standard output is a terminal (they are the default when it is not)'
complete -c roll -n "__fish_roll_using_subcommand start" -s h -l help -d 'Print help'
complete -c roll -n "__fish_roll_using_subcommand abort" -l state -d 'The cluster\'s state file [default: /var/lib/formic/state for root, else $XDG_STATE_HOME/formic/state or ~/.local/state/formic/state]' -r -F
complete -c roll -n "__fish_roll_using_subcommand abort" -l json -d 'Print JSON lines even when standard output is a terminal (they are the default when it is not)'
complete -c roll -n "__fish_roll_using_subcommand abort" -s h -l help -d 'Print help'
complete -c roll -n "__fish_roll_using_subcommand help; and not __fish_seen_subcommand_from status pause resume abort help" -f -a "status" -d 'Where each job\'s update is (every job with one, or the jobs named): its state, specs, progress, and what it waits for'
complete -c roll -n "__fish_roll_using_subcommand help; and not __fish_seen_subcommand_from status pause resume abort help" -f -a "pause" -d 'Pause a job\'s update; with none under way, hold the next one (it starts paused)'
complete -c roll -n "__fish_roll_using_subcommand help; and not __fish_seen_subcommand_from status pause resume abort help" -f -a "resume" -d 'Resume a paused or held update, or start it on a range of instances (a canary), or widen a canary to the whole job'
complete -c roll -n "__fish_roll_using_subcommand help; and not __fish_seen_subcommand_from status pause resume abort help" -f -a "abort" -d 'Abort a job\'s update: instances stay on the spec they run (it is not tried again until the job file changes)'
complete -c roll -n "__fish_roll_using_subcommand help; and not __fish_seen_subcommand_from status pause resume abort help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
