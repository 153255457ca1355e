# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_announce_global_optspecs
    string join \n state= dir= zk= zk-digest-file= session-timeout= follow json h/help V/version
end

function __fish_announce_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_announce_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_announce_using_subcommand
    set -l cmd (__fish_announce_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c announce -n "__fish_announce_needs_command" -l state -d 'The cluster\'s state file [default: /var/lib/formic/state for root, else $XDG_STATE_HOME/formic/state or ~/.local/state/formic/state]' -r -F
complete -c announce -n "__fish_announce_needs_command" -l dir -d 'Serverset directory tree [default: serversets/ beside the state file]' -r -F
complete -c announce -n "__fish_announce_needs_command" -l zk -d 'ZooKeeper ensemble instead of files: HOST:PORT[,HOST:PORT...][/CHROOT]' -r
complete -c announce -n "__fish_announce_needs_command" -l zk-digest-file -d 'Authenticate to ZooKeeper with the digest USER:PASSWORD read from this file (mode 0600 or stricter), and create members readable by all, writable only by that user' -r -F
complete -c announce -n "__fish_announce_needs_command" -l session-timeout -d 'ZooKeeper session timeout: members of an announcer that died vanish after this long' -r
complete -c announce -n "__fish_announce_needs_command" -l follow -d 'Keep going: follow the state and keep the serversets in step (with --zk, this is the announcer that holds the members; one per state file)'
complete -c announce -n "__fish_announce_needs_command" -l json -d 'Print JSON lines even when standard output is a terminal (they are the default when it is not)'
complete -c announce -n "__fish_announce_needs_command" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c announce -n "__fish_announce_needs_command" -s V -l version -d 'Print version'
complete -c announce -n "__fish_announce_needs_command" -f -a "resolve" -d 'Print the live endpoints of a serverset: JSON lines {"type":"endpoint",...}, or host:port lines with --plain. Exits 1 when there are none'
complete -c announce -n "__fish_announce_needs_command" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c announce -n "__fish_announce_using_subcommand resolve" -l state -d 'The cluster\'s state file [default: /var/lib/formic/state for root, else $XDG_STATE_HOME/formic/state or ~/.local/state/formic/state]' -r -F
complete -c announce -n "__fish_announce_using_subcommand resolve" -l dir -d 'Serverset directory tree [default: serversets/ beside the state file]' -r -F
complete -c announce -n "__fish_announce_using_subcommand resolve" -l zk -d 'ZooKeeper ensemble instead of files: HOST:PORT[,HOST:PORT...][/CHROOT]' -r
complete -c announce -n "__fish_announce_using_subcommand resolve" -l zk-digest-file -d 'Authenticate to ZooKeeper with the digest USER:PASSWORD read from this file (mode 0600 or stricter), and create members readable by all, writable only by that user' -r -F
complete -c announce -n "__fish_announce_using_subcommand resolve" -l session-timeout -d 'ZooKeeper session timeout: members of an announcer that died vanish after this long' -r
complete -c announce -n "__fish_announce_using_subcommand resolve" -l plain -d 'Print host:port of each member\'s service endpoint, one per line'
complete -c announce -n "__fish_announce_using_subcommand resolve" -l json -d 'Print JSON lines even when standard output is a terminal (they are the default when it is not)'
complete -c announce -n "__fish_announce_using_subcommand resolve" -s h -l help -d 'Print help'
complete -c announce -n "__fish_announce_using_subcommand help; and not __fish_seen_subcommand_from resolve help" -f -a "resolve" -d 'Print the live endpoints of a serverset: JSON lines {"type":"endpoint",...}, or host:port lines with --plain. Exits 1 when there are none'
complete -c announce -n "__fish_announce_using_subcommand help; and not __fish_seen_subcommand_from resolve help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
