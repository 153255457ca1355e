complete --keep-order --exclusive --command launch --arguments "(FORMIC_COMPLETE=fish launch -- (commandline --current-process --tokenize --cut-at-cursor) (commandline --current-token))"
