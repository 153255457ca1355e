# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_offer_global_optspecs
    string join \n state= json h/help V/version
end

function __fish_offer_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_offer_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_offer_using_subcommand
    set -l cmd (__fish_offer_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c offer -n "__fish_offer_needs_command" -l state -d 'The cluster\'s state file [default: /var/lib/formic/state for root, else $XDG_STATE_HOME/formic/state or ~/.local/state/formic/state]' -r -F
complete -c offer -n "__fish_offer_needs_command" -l json -d 'Print JSON lines even when standard output is a terminal (they are the default when it is not)'
complete -c offer -n "__fish_offer_needs_command" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c offer -n "__fish_offer_needs_command" -s V -l version -d 'Print version'
complete -c offer -n "__fish_offer_needs_command" -f -a "add" -d 'Add or update hosts from records on standard input'
complete -c offer -n "__fish_offer_needs_command" -f -a "take-over" -d 'Take over the fleet: raise this scheduler\'s epoch'
complete -c offer -n "__fish_offer_needs_command" -f -a "rebuild" -d 'Rebuild a lost or corrupt state\'s tasks from the hosts'
complete -c offer -n "__fish_offer_needs_command" -f -a "remove" -d 'Remove hosts from the inventory'
complete -c offer -n "__fish_offer_needs_command" -f -a "schedule" -d 'Schedule maintenance on hosts'
complete -c offer -n "__fish_offer_needs_command" -f -a "drain" -d 'Drain hosts for maintenance'
complete -c offer -n "__fish_offer_needs_command" -f -a "probe" -d 'Say, per job with instances on hosts, whether draining them all at once is safe'
complete -c offer -n "__fish_offer_needs_command" -f -a "undrain" -d 'End maintenance on hosts'
complete -c offer -n "__fish_offer_needs_command" -f -a "hosts" -d 'List hosts with their capacity, free capacity, tasks, maintenance and attributes'
complete -c offer -n "__fish_offer_needs_command" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c offer -n "__fish_offer_using_subcommand add" -l probe -d 'Register a host under NAME with its real cores, memory and disk, measured on it, instead of reading standard input: this machine, or with --ssh the host reached there (formic-host measures it)' -r
complete -c offer -n "__fish_offer_using_subcommand add" -l ssh -d 'With --probe: reach the host over ssh at [USER@]ADDRESS[:PORT] (transport ssh)' -r
complete -c offer -n "__fish_offer_using_subcommand add" -l address -d 'With --probe: the address clients reach its tasks at' -r
complete -c offer -n "__fish_offer_using_subcommand add" -l root -d 'With --probe --ssh: the task-directory root there [default: /var/lib/formic/host]' -r
complete -c offer -n "__fish_offer_using_subcommand add" -l attr -d 'With --probe: an attribute of the host (repeatable; a repeated `dedicated` gives the host each of its values)' -r
complete -c offer -n "__fish_offer_using_subcommand add" -l ports -d 'With --probe: the port range the host offers' -r
complete -c offer -n "__fish_offer_using_subcommand add" -l state -d 'The cluster\'s state file [default: /var/lib/formic/state for root, else $XDG_STATE_HOME/formic/state or ~/.local/state/formic/state]' -r -F
complete -c offer -n "__fish_offer_using_subcommand add" -l json -d 'Print JSON lines even when standard output is a terminal (they are the default when it is not)'
complete -c offer -n "__fish_offer_using_subcommand add" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c offer -n "__fish_offer_using_subcommand take-over" -l past -d 'Go past this epoch too (the one a host said it has seen)' -r
complete -c offer -n "__fish_offer_using_subcommand take-over" -l state -d 'The cluster\'s state file [default: /var/lib/formic/state for root, else $XDG_STATE_HOME/formic/state or ~/.local/state/formic/state]' -r -F
complete -c offer -n "__fish_offer_using_subcommand take-over" -l json -d 'Print JSON lines even when standard output is a terminal (they are the default when it is not)'
complete -c offer -n "__fish_offer_using_subcommand take-over" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c offer -n "__fish_offer_using_subcommand rebuild" -l parallel -d 'Hosts worked at once' -r
complete -c offer -n "__fish_offer_using_subcommand rebuild" -l state -d 'The cluster\'s state file [default: /var/lib/formic/state for root, else $XDG_STATE_HOME/formic/state or ~/.local/state/formic/state]' -r -F
complete -c offer -n "__fish_offer_using_subcommand rebuild" -l json -d 'Print JSON lines even when standard output is a terminal (they are the default when it is not)'
complete -c offer -n "__fish_offer_using_subcommand rebuild" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c offer -n "__fish_offer_using_subcommand remove" -l state -d 'The cluster\'s state file [default: /var/lib/formic/state for root, else $XDG_STATE_HOME/formic/state or ~/.local/state/formic/state]' -r -F
complete -c offer -n "__fish_offer_using_subcommand remove" -l force -d 'Remove anyway; the tasks placed there become LOST'
complete -c offer -n "__fish_offer_using_subcommand remove" -l json -d 'Print JSON lines even when standard output is a terminal (they are the default when it is not)'
complete -c offer -n "__fish_offer_using_subcommand remove" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c offer -n "__fish_offer_using_subcommand schedule" -l reason -d 'Why the maintenance is done' -r
complete -c offer -n "__fish_offer_using_subcommand schedule" -l owner -d 'Who asked for it [default: $USER]' -r
complete -c offer -n "__fish_offer_using_subcommand schedule" -l state -d 'The cluster\'s state file [default: /var/lib/formic/state for root, else $XDG_STATE_HOME/formic/state or ~/.local/state/formic/state]' -r -F
complete -c offer -n "__fish_offer_using_subcommand schedule" -l json -d 'Print JSON lines even when standard output is a terminal (they are the default when it is not)'
complete -c offer -n "__fish_offer_using_subcommand schedule" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c offer -n "__fish_offer_using_subcommand drain" -l reason -d 'Why the maintenance is done' -r
complete -c offer -n "__fish_offer_using_subcommand drain" -l owner -d 'Who asked for it [default: $USER]' -r
complete -c offer -n "__fish_offer_using_subcommand drain" -l deadline -d 'When the rest is stopped regardless of budgets: a duration from now (`2h`, `30m`, `1d`), a time (`2026-12-24T06:00:00Z`), or `never`' -r
complete -c offer -n "__fish_offer_using_subcommand drain" -l jobs -d 'The job files or directories the passes place (scripts/reconcile\'s JOBS)' -r -F
complete -c offer -n "__fish_offer_using_subcommand drain" -l wait-limit -d 'With --wait: give up after this long (status 75; the drain goes on)' -r
complete -c offer -n "__fish_offer_using_subcommand drain" -l state -d 'The cluster\'s state file [default: /var/lib/formic/state for root, else $XDG_STATE_HOME/formic/state or ~/.local/state/formic/state]' -r -F
complete -c offer -n "__fish_offer_using_subcommand drain" -l dry-run -d 'Change nothing: say, per instance on the hosts, whether its job\'s budget lets the next pass stop it now, where its replacement would go, or why it would wait (needs --jobs). Exit 0 when every instance would move now, 1 when some wait'
complete -c offer -n "__fish_offer_using_subcommand drain" -l wait -d 'Block until every host is drained, showing progress on a terminal. Exit 0 when drained within the deadline, 1 when drained past it (the passes stopped the rest whatever the budgets), 75 when --wait-limit passed first; with --jobs, 69 when what is left has had no room elsewhere for its replacements for 15 s (the drain goes on: its deadline stops them regardless)'
complete -c offer -n "__fish_offer_using_subcommand drain" -l json -d 'Print JSON lines even when standard output is a terminal (they are the default when it is not)'
complete -c offer -n "__fish_offer_using_subcommand drain" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c offer -n "__fish_offer_using_subcommand probe" -l jobs -d 'The job files or directories the passes place (their `sla` blocks)' -r -F
complete -c offer -n "__fish_offer_using_subcommand probe" -l state -d 'The cluster\'s state file [default: /var/lib/formic/state for root, else $XDG_STATE_HOME/formic/state or ~/.local/state/formic/state]' -r -F
complete -c offer -n "__fish_offer_using_subcommand probe" -l json -d 'Print JSON lines even when standard output is a terminal (they are the default when it is not)'
complete -c offer -n "__fish_offer_using_subcommand probe" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c offer -n "__fish_offer_using_subcommand undrain" -l owner -d 'Who asks [default: $USER]' -r
complete -c offer -n "__fish_offer_using_subcommand undrain" -l state -d 'The cluster\'s state file [default: /var/lib/formic/state for root, else $XDG_STATE_HOME/formic/state or ~/.local/state/formic/state]' -r -F
complete -c offer -n "__fish_offer_using_subcommand undrain" -l force -d 'End maintenance that another owner asked for'
complete -c offer -n "__fish_offer_using_subcommand undrain" -l json -d 'Print JSON lines even when standard output is a terminal (they are the default when it is not)'
complete -c offer -n "__fish_offer_using_subcommand undrain" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c offer -n "__fish_offer_using_subcommand hosts" -l by -d 'With --summary: the attributes to add up by, in this order (those no host has are left out)' -r
complete -c offer -n "__fish_offer_using_subcommand hosts" -l state -d 'The cluster\'s state file [default: /var/lib/formic/state for root, else $XDG_STATE_HOME/formic/state or ~/.local/state/formic/state]' -r -F
complete -c offer -n "__fish_offer_using_subcommand hosts" -l summary -d 'Add the hosts up, in all and per attribute value'
complete -c offer -n "__fish_offer_using_subcommand hosts" -l json -d 'Print JSON lines even when standard output is a terminal (they are the default when it is not)'
complete -c offer -n "__fish_offer_using_subcommand hosts" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c offer -n "__fish_offer_using_subcommand help; and not __fish_seen_subcommand_from add take-over rebuild remove schedule drain probe undrain hosts help" -f -a "add" -d 'Add or update hosts from records on standard input'
complete -c offer -n "__fish_offer_using_subcommand help; and not __fish_seen_subcommand_from add take-over rebuild remove schedule drain probe undrain hosts help" -f -a "take-over" -d 'Take over the fleet: raise this scheduler\'s epoch'
complete -c offer -n "__fish_offer_using_subcommand help; and not __fish_seen_subcommand_from add take-over rebuild remove schedule drain probe undrain hosts help" -f -a "rebuild" -d 'Rebuild a lost or corrupt state\'s tasks from the hosts'
complete -c offer -n "__fish_offer_using_subcommand help; and not __fish_seen_subcommand_from add take-over rebuild remove schedule drain probe undrain hosts help" -f -a "remove" -d 'Remove hosts from the inventory'
complete -c offer -n "__fish_offer_using_subcommand help; and not __fish_seen_subcommand_from add take-over rebuild remove schedule drain probe undrain hosts help" -f -a "schedule" -d 'Schedule maintenance on hosts'
complete -c offer -n "__fish_offer_using_subcommand help; and not __fish_seen_subcommand_from add take-over rebuild remove schedule drain probe undrain hosts help" -f -a "drain" -d 'Drain hosts for maintenance'
complete -c offer -n "__fish_offer_using_subcommand help; and not __fish_seen_subcommand_from add take-over rebuild remove schedule drain probe undrain hosts help" -f -a "probe" -d 'Say, per job with instances on hosts, whether draining them all at once is safe'
complete -c offer -n "__fish_offer_using_subcommand help; and not __fish_seen_subcommand_from add take-over rebuild remove schedule drain probe undrain hosts help" -f -a "undrain" -d 'End maintenance on hosts'
complete -c offer -n "__fish_offer_using_subcommand help; and not __fish_seen_subcommand_from add take-over rebuild remove schedule drain probe undrain hosts help" -f -a "hosts" -d 'List hosts with their capacity, free capacity, tasks, maintenance and attributes'
complete -c offer -n "__fish_offer_using_subcommand help; and not __fish_seen_subcommand_from add take-over rebuild remove schedule drain probe undrain hosts help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
