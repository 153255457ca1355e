complete --keep-order --exclusive --command announce --arguments "(FORMIC_COMPLETE=fish announce -- (commandline --current-process --tokenize --cut-at-cursor) (commandline --current-token))"
