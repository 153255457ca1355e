complete --keep-order --exclusive --command job --arguments "(FORMIC_COMPLETE=fish job -- (commandline --current-process --tokenize --cut-at-cursor) (commandline --current-token))"
