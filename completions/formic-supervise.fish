complete -c formic-supervise -s h -l help -d 'Print help (see more with \'--help\')'
complete -c formic-supervise -s V -l version -d 'Print version'
