#!/usr/bin/env python3
"""The exact fewest hosts for small placement problems, with OR-Tools CP-SAT.

benches/pack.rs writes the problems and compares pack and first-fit decreasing with the
answers. Reads JSON lines on stdin (or from the file named as the argument), one problem each:

  {"id": 0, "hosts": [[cpus_milli, ram_mb], ...],
   "jobs": [[instances, cpus_milli, ram_mb, one_per_host], ...], "seconds": 10}

and prints one JSON line per problem:

  {"id": 0, "status": "OPTIMAL", "hosts": 7, "bound": 7, "seconds": 0.4}

status is CP-SAT's: OPTIMAL (hosts is the minimum), FEASIBLE (the time limit ran out: hosts
is the best found and bound the best proven lower bound), INFEASIBLE (not everything fits).

The model counts instances per job and host rather than placing each instance: the
instances of a job are identical, so this has the same optima with far fewer variables.
"""

import json
import sys
import time

from ortools.sat.python import cp_model


def solve(problem):
    hosts = problem["hosts"]
    jobs = problem["jobs"]
    m = cp_model.CpModel()
    used = [m.new_bool_var(f"used{h}") for h in range(len(hosts))]
    # count[j][h]: instances of job j on host h (at most one under host:1).
    count = [
        [m.new_int_var(0, 1 if one else n, f"n{j}_{h}") for h in range(len(hosts))]
        for j, (n, _, _, one) in enumerate(jobs)
    ]
    for j, (n, _, _, _) in enumerate(jobs):
        m.add(sum(count[j]) == n)
    for r in (0, 1):  # cpus, ram
        for h, cap in enumerate(hosts):
            m.add(sum(job[1 + r] * count[j][h] for j, job in enumerate(jobs)) <= cap[r] * used[h])
        # Redundant, for a stronger bound: the hosts used hold the whole demand.
        demand = sum(job[0] * job[1 + r] for job in jobs)
        m.add(sum(cap[r] * used[h] for h, cap in enumerate(hosts)) >= demand)
    # Hosts of the same shape are interchangeable: use them in order.
    for a in range(len(hosts)):
        for b in range(a + 1, len(hosts)):
            if hosts[b] == hosts[a]:
                m.add(used[a] >= used[b])
                break
    m.minimize(sum(used))

    solver = cp_model.CpSolver()
    solver.parameters.max_time_in_seconds = float(problem.get("seconds", 10))
    solver.parameters.num_workers = 2
    start = time.monotonic()
    status = solver.solve(m)
    found = status in (cp_model.OPTIMAL, cp_model.FEASIBLE)
    return {
        "id": problem["id"],
        "status": solver.status_name(status),
        "hosts": round(solver.objective_value) if found else None,
        "bound": round(solver.best_objective_bound) if found else None,
        "seconds": round(time.monotonic() - start, 3),
    }


def main():
    source = open(sys.argv[1]) if len(sys.argv) > 1 else sys.stdin
    for line in source:
        if line.strip():
            print(json.dumps(solve(json.loads(line))), flush=True)


if __name__ == "__main__":
    main()
