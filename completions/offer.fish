complete --keep-order --exclusive --command offer --arguments "(FORMIC_COMPLETE=fish offer -- (commandline --current-process --tokenize --cut-at-cursor) (commandline --current-token))"
