complete --keep-order --exclusive --command formic-host --arguments "(FORMIC_COMPLETE=fish formic-host -- (commandline --current-process --tokenize --cut-at-cursor) (commandline --current-token))"
