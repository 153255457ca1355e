complete --keep-order --exclusive --command pack --arguments "(FORMIC_COMPLETE=fish pack -- (commandline --current-process --tokenize --cut-at-cursor) (commandline --current-token))"
