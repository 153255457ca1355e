complete --keep-order --exclusive --command reap --arguments "(FORMIC_COMPLETE=fish reap -- (commandline --current-process --tokenize --cut-at-cursor) (commandline --current-token))"
