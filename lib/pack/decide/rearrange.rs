//! The last step of a small binpack pass: its work searched for an arrangement that opens
//! fewer hosts or leaves nothing pending (`arrange`), and that arrangement applied.

use std::cell::Cell;
use std::collections::HashMap;

use super::{Decision, Run};
use crate::pack::arrange::{self, Model, Room};

/// The search is for small passes: at most this many instances to arrange, on at most
/// this many hosts (hosts not in use that are alike count once per instance).
const ITEMS_MAX: usize = 64;
const HOSTS_MAX: usize = 64;

/// A model of the pass for `arrange`: what it searches, the decisions its items stand for
/// (ascending), and the fleet's host behind each of its hosts.
struct Arrangement {
    model: Model,
    decisions: Vec<usize>,
    hosts: Vec<usize>,
}

impl Run<'_> {
    /// Searches the pass's arrangements and applies a better one, while `budget` (hosts
    /// asked) lasts. Not where the pass preempted, met GPU jobs or limits per attribute
    /// value, or left pending an instance the search may not place (a quota): moving work
    /// there changes what those decided.
    pub(super) fn rearrange(&mut self, budget: &Cell<usize>) {
        let Some(a) = self.arrangement() else {
            return;
        };
        let index_of: HashMap<usize, usize> =
            a.hosts.iter().enumerate().map(|(i, &h)| (h, i)).collect();
        let now: Option<Vec<usize>> = a
            .decisions
            .iter()
            .map(|&d| match self.decisions[d] {
                Decision::Place { host, .. } => Some(index_of[&(host as usize)]),
                _ => None,
            })
            .collect();
        let opened = now.map(|at| a.model.opened(&at));
        if let Some(at) = arrange::improve(&a.model, opened, budget) {
            let to: Vec<usize> = at.iter().map(|&i| a.hosts[i]).collect();
            self.arrange_as(&a.decisions, &to);
        }
    }

    fn arrangement(&self) -> Option<Arrangement> {
        let (jobs, f) = (self.jobs, &*self.fleet);
        if self.per_gpu.is_some() {
            return None;
        }
        let mut decisions = Vec::new();
        for (d, decision) in self.decisions.iter().enumerate() {
            match *decision {
                Decision::Preempt { .. } => return None,
                Decision::Place { .. } => decisions.push(d),
                Decision::Pending { job, instance, .. }
                    if self.stuck[job] == Some("")
                        && !self.throttled.contains_key(&(job, instance)) =>
                {
                    if self.role_quota[self.role_of[job]].is_some() {
                        return None;
                    }
                    decisions.push(d);
                }
                _ => {}
            }
            if decisions.len() > ITEMS_MAX {
                return None;
            }
        }
        if decisions.is_empty() || self.in_use.iter().filter(|&&u| u).count() > HOSTS_MAX {
            return None;
        }
        // The jobs of the items, numbered in the model.
        let mut model_job: HashMap<usize, usize> = HashMap::new();
        let mut job_of = Vec::new();
        let mut items = Vec::new();
        // Per host: the pass's work on it, given back.
        let mut given = vec![[0u64; 4]; f.len()];
        let mut holds = vec![false; f.len()];
        // Items of each model job on each host.
        let mut placed_on: HashMap<(usize, usize), u32> = HashMap::new();
        for &d in &decisions {
            let (Decision::Place { job, .. } | Decision::Pending { job, .. }) = self.decisions[d]
            else {
                continue;
            };
            let class = self.classes[job].as_ref()?;
            if class.limits_per_value() {
                return None;
            }
            let m = *model_job.entry(job).or_insert_with(|| {
                job_of.push(job);
                job_of.len() - 1
            });
            items.push(m);
            if let Decision::Place {
                host,
                cpus,
                ref ports,
                ..
            } = self.decisions[d]
            {
                *placed_on.entry((m, host as usize)).or_insert(0) += 1;
                let r = &jobs[job].resources;
                let g = &mut given[host as usize];
                g[0] += cpus as u64;
                g[1] += r.ram_mb;
                g[2] += r.disk_mb;
                g[3] += ports.len() as u64;
                holds[host as usize] = true;
            }
        }
        let classes: Vec<_> = job_of.iter().map(|&j| self.classes[j].as_ref()).collect();
        let classes: Vec<_> = classes.into_iter().collect::<Option<_>>()?;
        // Hosts: every one in use, each that holds work of the pass, and of the others as
        // many alike as there are items.
        let mut hosts = Vec::new();
        let mut model_hosts = Vec::new();
        let mut kinds: HashMap<(Room, u64, Vec<bool>), (usize, usize)> = HashMap::new();
        for h in (0..f.len()).filter(|&h| !f.scheduled[h]) {
            let admits: Vec<bool> = classes.iter().map(|c| c.admits(f, h)).collect();
            if !admits.contains(&true) {
                continue;
            }
            let free = [
                f.free[h].cpus as u64 + given[h][0],
                f.free[h].ram_mb + given[h][1],
                f.free[h].disk_mb + given[h][2],
                f.free[h].ports as u64 + given[h][3],
            ];
            let factor = f.free[h].cpu_factor;
            let next = kinds.len();
            let kind = kinds
                .entry((free, factor.to_bits(), admits))
                .or_insert((next, 0));
            if !self.in_use[h] && !holds[h] && kind.1 >= items.len() {
                continue;
            }
            kind.1 += 1;
            model_hosts.push(arrange::Host {
                free,
                cpu_factor: factor,
                in_use: self.in_use[h],
                kind: kind.0,
            });
            hosts.push(h);
            if hosts.len() > HOSTS_MAX {
                return None;
            }
        }
        let model_jobs = classes
            .iter()
            .enumerate()
            .map(|(m, class)| {
                let need = class.need();
                let held =
                    |h: usize| class.on_host(h) - placed_on.get(&(m, h)).copied().unwrap_or(0);
                arrange::Job {
                    need: [
                        need.cpus,
                        need.ram_mb,
                        need.disk_mb,
                        class.ports_need() as u64,
                    ],
                    physical: hosts
                        .iter()
                        .map(|&h| f.physical(h, need.cpus as u32) as u64)
                        .collect(),
                    admits: hosts.iter().map(|&h| class.admits(f, h)).collect(),
                    per_host: class.per_host_limit(),
                    held: hosts.iter().map(|&h| held(h)).collect(),
                }
            })
            .collect();
        Some(Arrangement {
            model: Model {
                hosts: model_hosts,
                jobs: model_jobs,
                items,
            },
            decisions,
            hosts,
        })
    }

    /// Puts the work of `decisions` on hosts `to` (one each): every placement among them
    /// is taken back, then each placed again in the order of the records, so the records
    /// replay as they did (each host's room only shrinks along them).
    fn arrange_as(&mut self, decisions: &[usize], to: &[usize]) {
        let mut touched = Vec::new();
        for &d in decisions {
            if let Decision::Place { host, .. } = self.decisions[d] {
                self.vacate(d);
                touched.push(host as usize);
            }
        }
        for (&d, &h) in decisions.iter().zip(to) {
            match self.decisions[d] {
                Decision::Place { .. } => self.settle(d, h),
                _ => self.place_pending(d, h),
            }
        }
        for h in touched {
            if self.hosts_used[h] == 0 && !self.in_use[h] {
                self.placer.refresh(self.fleet, h);
            } else {
                self.placer.update(self.fleet, h);
            }
        }
        self.unstick_placed();
    }
}
