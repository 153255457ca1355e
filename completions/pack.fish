complete -c pack -l state -d 'Read what already runs from this state file and place only what is missing' -r -F
complete -c pack -l strategy -d 'binpack: fewest hosts, least stranded capacity; spread: even load across hosts' -r -f -a "binpack\t''
spread\t''"
complete -c pack -l spread-by -d 'With --strategy spread: the failure domains to spread each job across, largest first (attribute names); hosts lacking one count as one domain' -r
complete -c pack -l quota -d 'Quotas per role (JSON lines: {"role":"www","cpus":64,"ram_mb":262144,"disk_mb":0}); production instances beyond their role\'s quota stay pending' -r -F
complete -c pack -l explain -d 'Print, per host, every reason TASK (role/env/name/instance) cannot go there, or its score, instead of the decisions' -r
complete -c pack -l prune -d 'With --state: kill the instances of jobs that no job file names'
complete -c pack -l preempt-within-tier -d 'An instance that fits nowhere may also stop instances of its own tier and role with a lower priority (Aurora\'s rule), not only production stopping preemptible work'
complete -c pack -l check -d 'Only check the job files (every job spec, every field, templates and port names) and exit: 0 when all are good, 65 with one line per problem otherwise; reads no offers and no state'
complete -c pack -l stats -d 'Print one JSON object of counts and timings on standard error'
complete -c pack -l json -d 'Print JSON lines even when standard output is a terminal (they are the default when it is not)'
complete -c pack -s h -l help -d 'Print help (see more with \'--help\')'
complete -c pack -s V -l version -d 'Print version'
