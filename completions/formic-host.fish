complete -c formic-host -s h -l help -d 'Print help (see more with \'--help\')'
complete -c formic-host -s V -l version -d 'Print version'
