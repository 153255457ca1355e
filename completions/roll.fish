complete --keep-order --exclusive --command roll --arguments "(FORMIC_COMPLETE=fish roll -- (commandline --current-process --tokenize --cut-at-cursor) (commandline --current-token))"
