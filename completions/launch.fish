complete -c launch -l state -d 'The cluster\'s state file [default: /var/lib/formic/state for root, else $XDG_STATE_HOME/formic/state or ~/.local/state/formic/state]' -r -F
complete -c launch -l parallel -d 'Hosts worked at once' -r
complete -c launch -l grace -d 'Seconds a stopped task gets between SIGTERM and SIGKILL (at most an hour)' -r
complete -c launch -l wait -d 'How long to wait for the supervisors to report their tasks running (at most an hour)' -r
complete -c launch -l pass-env -d 'Variables of launch\'s own environment that tasks also get (repeatable)' -r
complete -c launch -l uid-range -d 'The uids (and gids of the same numbers) that tasks of jobs naming no user get, one of its own per task, when launch runs as root; no account may use them' -r
complete -c launch -l log-group -d 'The operators\' group that may read every task\'s logs (beside the task\'s own user)' -r
complete -c launch -l json -d 'Print JSON lines even when standard output is a terminal (they are the default when it is not)'
complete -c launch -l allow-root -d 'Let tasks run as root (when their job names root, or names no user and launch runs as root); otherwise such a job runs as nobody'
complete -c launch -s h -l help -d 'Print help (see more with \'--help\')'
complete -c launch -s V -l version -d 'Print version'
