//! The hosts by how much they have left: the index the placement loop searches.
//!
//! A host sits in one pool (the placer's grouping: in use, fresh, scheduled, ...), in one
//! bucket of the pool, and in one cell of the bucket. The bucket orders the search: it is
//! the placer's key for the host (binpack: its scarcest free resource as a share of the
//! fleet's largest host), and a scan walks the buckets up (fullest first) or down
//! (emptiest first). The cell is a second dimension, so that a host short of one resource
//! is not looked at by instances that need more of it than it has. Ordered by its scarcest
//! resource alone, a host with 1 core and 200 GiB free sits as high as one with 20 cores
//! and 10 GiB: every cpu-heavy instance would check it again and be refused.
//!
//! Binpack's cells say which resource is the host's scarcest (cpus, ram or GPUs) and, in
//! 64 geometric levels, how much it has of the other of cpus and ram. For a host whose scarcest is
//! cpus, the bucket says how many cpus it has; for one whose scarcest is ram, how much ram.
//! So an instance rules out whole cells by bit masks: those of hosts short of cpus below
//! its cpus' bucket, and those whose other resource is at a lower level than its own need.
//! Only the hosts of the boundary cells (the same bucket or level as the need) are checked
//! in vain. spread keys hosts by emptiness against their own size, which bounds nothing
//! absolute, and keeps every host in cell 0.
//!
//! Each bucket also keeps a bound on what any of its hosts has free (in every resource,
//! disk and ports too), so a scan passes over a bucket that cannot take the instance. The
//! bound is raised when a host comes in, left when one goes (still a bound), and made
//! exact when a scan has seen every host of the bucket and none fitted.
//!
//! The lists are linked through the hosts (a host is in one list at a time), so the index
//! costs a few words per host and one per cell, allocated zeroed: cells never used are
//! never touched.

use std::cell::Cell;

/// Buckets per pool.
pub const BUCKETS: usize = 4096;
// `Index::words` has a bit per word of 64 buckets, in one word.
const _: () = assert!(BUCKETS == 64 * 64);

/// Cells per bucket for binpack: 64 levels each for hosts whose scarcest resource is cpus
/// and for those whose scarcest is ram, then one for hosts whose scarcest is another (GPUs,
/// disk).
pub const CELLS: usize = 129;
const LEVELS: usize = 64;
const OTHER_CELL: usize = 2 * LEVELS;

/// What a host has free, in the resources a bucket bounds: reference cpus, ram, disk,
/// gpus, ports.
pub type Room = [u64; 5];

/// Whether `room` is at least `need` in every resource.
pub fn covers(room: &Room, need: &Room) -> bool {
    room.iter().zip(need).all(|(r, n)| r >= n)
}

/// The bucket of a share between 0 and 1.
pub fn bucket_of(share: f64) -> usize {
    ((share * (BUCKETS - 1) as f64) as usize).min(BUCKETS - 1)
}

/// Octaves the levels span, below a whole host.
const OCTAVES: f64 = 12.0;

/// The level of a share: geometric, 64 levels over the 12 octaves below a whole host (a
/// level is 14% more than the one below), so small amounts are told apart as finely as
/// large ones, relative to their size; a cell on the boundary then holds hosts within 14%
/// of the need, whatever its size. Everything at or below 1/4096 is level 0.
fn level_of(share: f64) -> usize {
    let level = (share.log2() + OCTAVES) * (LEVELS as f64 / OCTAVES);
    (level as usize).min(LEVELS - 1)
}

/// A host's cell as binpack keys it, from its free cpus, ram and scarcest other keyed
/// resource as shares of the fleet's largest (1 for a resource that is not keyed).
pub fn cell_of(cpus: f64, ram: f64, other: f64) -> usize {
    if other < cpus.min(ram) {
        OTHER_CELL
    } else if cpus <= ram {
        level_of(ram)
    } else {
        LEVELS + level_of(cpus)
    }
}

/// What a scan looks for: the room an instance needs and, from its cpus and ram as shares
/// of the fleet's largest, the cells that can hold a host with that much.
#[derive(Clone, Copy)]
pub struct Want {
    pub room: Room,
    cpu_bucket: usize,
    ram_bucket: usize,
    cpu_level: usize,
    ram_level: usize,
}

impl Want {
    /// Any host with `room` (spread's cells, and every cell).
    pub fn room(room: Room) -> Want {
        Want {
            room,
            cpu_bucket: 0,
            ram_bucket: 0,
            cpu_level: 0,
            ram_level: 0,
        }
    }

    /// A host with `room`, whose cpus and ram are `cpus` and `ram` of the largest host.
    pub fn shares(room: Room, cpus: f64, ram: f64) -> Want {
        Want {
            room,
            cpu_bucket: bucket_of(cpus),
            ram_bucket: bucket_of(ram),
            cpu_level: level_of(cpus),
            ram_level: level_of(ram),
        }
    }

    /// The cells of bucket `b` whose hosts may have the room: hosts short of cpus only in
    /// a bucket at or above the cpus' own, with ram at or above the ram's level; hosts
    /// short of ram likewise; hosts short of GPUs always (their bucket says nothing of
    /// cpus or ram).
    fn cells(&self, b: usize) -> [u64; 3] {
        let from = |bucket: usize, level: usize| {
            if b >= bucket {
                !0u64 << level
            } else {
                0
            }
        };
        [
            from(self.cpu_bucket, self.ram_level),
            from(self.ram_bucket, self.cpu_level),
            !0,
        ]
    }
}

/// Where a host is in the index.
#[derive(Clone, Copy, Default, PartialEq, Eq)]
pub struct Slot {
    pub bucket: u16,
    pub cell: u8,
}

/// One bucket of a pool: what a scan reads of it before its hosts, in one cache line (a
/// scan passes over most buckets, and two arrays were two cache misses a bucket).
#[derive(Clone, Default)]
#[repr(align(64))]
struct Bucket {
    /// Which cells hold hosts.
    filled: [u64; 3],
    /// At least what any of its hosts has free.
    bound: Cell<Room>,
}

/// The pools of hosts, each in buckets of cells; see the module's comment.
pub struct Index {
    cells: usize,
    /// Per pool, bucket and cell: the first host of its list, plus one (0: none).
    head: Vec<u32>,
    /// Per pool and bucket.
    buckets: Vec<Bucket>,
    /// Per pool: which buckets hold hosts, a bit each.
    nonempty: Vec<u64>,
    /// Per pool: which words of `nonempty` are not 0, a bit each, so that finding the next
    /// bucket with hosts reads two words, not up to 64 (BUCKETS is 64 × 64).
    words: Vec<u64>,
    /// Per host, plus one (0: none): the next and previous host of its list.
    next: Vec<u32>,
    prev: Vec<u32>,
}

impl Index {
    pub fn new(pools: usize, cells: usize, hosts: usize) -> Index {
        Index {
            cells,
            head: vec![0; pools * BUCKETS * cells],
            buckets: vec![Bucket::default(); pools * BUCKETS],
            nonempty: vec![0; pools * BUCKETS / 64],
            words: vec![0; pools],
            next: vec![0; hosts],
            prev: vec![0; hosts],
        }
    }

    fn list(&self, pool: usize, b: usize, cell: usize) -> usize {
        (pool * BUCKETS + b) * self.cells + cell
    }

    pub fn insert(&mut self, pool: usize, at: Slot, h: u32, room: Room) {
        let (b, cell) = (at.bucket as usize, at.cell as usize);
        let list = self.list(pool, b, cell);
        let first = self.head[list];
        self.next[h as usize] = first;
        self.prev[h as usize] = 0;
        if first != 0 {
            self.prev[first as usize - 1] = h + 1;
        }
        self.head[list] = h + 1;
        let pb = pool * BUCKETS + b;
        self.buckets[pb].filled[cell / 64] |= 1 << (cell % 64);
        self.nonempty[pb / 64] |= 1 << (pb % 64);
        self.words[pool] |= 1 << (b / 64);
        self.raise(pool, b, room);
    }

    /// Raises bucket `b`'s bound to cover `room`.
    pub fn raise(&mut self, pool: usize, b: usize, room: Room) {
        let bound = self.buckets[pool * BUCKETS + b].bound.get_mut();
        for (x, r) in bound.iter_mut().zip(room) {
            *x = (*x).max(r);
        }
    }

    pub fn remove(&mut self, pool: usize, at: Slot, h: u32) {
        let (b, cell) = (at.bucket as usize, at.cell as usize);
        let list = self.list(pool, b, cell);
        let (prev, next) = (self.prev[h as usize], self.next[h as usize]);
        match prev {
            0 => self.head[list] = next,
            p => self.next[p as usize - 1] = next,
        }
        if next != 0 {
            self.prev[next as usize - 1] = prev;
        }
        if self.head[list] != 0 {
            return;
        }
        let pb = pool * BUCKETS + b;
        let bucket = &mut self.buckets[pb];
        bucket.filled[cell / 64] &= !(1 << (cell % 64));
        if bucket.filled == [0; 3] {
            self.nonempty[pb / 64] &= !(1 << (pb % 64));
            if self.nonempty[pb / 64] == 0 {
                self.words[pool] &= !(1 << (b / 64));
            }
            bucket.bound.set([0; 5]);
        }
    }

    /// The hosts of `pool` that `fits`, from bucket `b` upward (fullest first).
    pub fn scan_up<'a>(
        &'a self,
        pool: usize,
        b: usize,
        want: &'a Want,
        room: &'a dyn Fn(u32) -> Room,
        fits: &'a dyn Fn(u32) -> bool,
    ) -> impl Iterator<Item = u32> + 'a {
        let mut next = Some(b);
        let buckets = std::iter::from_fn(move || {
            let nb = self.next_up(pool, next?)?;
            next = (nb + 1 < BUCKETS).then_some(nb + 1);
            Some(nb)
        });
        self.fitting(pool, buckets, want, room, fits)
            .map(|(_, h)| h)
    }

    /// The hosts of `pool` that `fits`, from the top bucket down to bucket `lowest`
    /// (emptiest first).
    pub fn scan_down<'a>(
        &'a self,
        pool: usize,
        lowest: usize,
        want: &'a Want,
        room: &'a dyn Fn(u32) -> Room,
        fits: &'a dyn Fn(u32) -> bool,
    ) -> impl Iterator<Item = u32> + 'a {
        self.fitting(pool, self.down_from_top(pool, lowest), want, room, fits)
            .map(|(_, h)| h)
    }

    /// The hosts of `pool` that `fits`, emptiest first, each with its bucket (which the
    /// caller would otherwise read from a table by host: a cache miss).
    pub fn emptiest<'a>(
        &'a self,
        pool: usize,
        want: &'a Want,
        room: &'a dyn Fn(u32) -> Room,
        fits: &'a dyn Fn(u32) -> bool,
    ) -> impl Iterator<Item = (usize, u32)> + 'a {
        self.fitting(pool, self.down_from_top(pool, 0), want, room, fits)
    }

    /// The non-empty buckets of `pool`, from the top down to bucket `lowest`.
    fn down_from_top(&self, pool: usize, lowest: usize) -> impl Iterator<Item = usize> + '_ {
        let mut next = Some(BUCKETS - 1);
        std::iter::from_fn(move || {
            let nb = self.next_down(pool, next?).filter(|&nb| nb >= lowest)?;
            next = nb.checked_sub(1);
            Some(nb)
        })
    }

    /// The hosts of `buckets`, in order, that `fits`, each with its bucket, looking only in
    /// the cells `want` leaves and passing over a bucket whose bound is short. A bucket
    /// whose every host was seen without a fit gets its bound made exact on the way.
    fn fitting<'a>(
        &'a self,
        pool: usize,
        buckets: impl Iterator<Item = usize> + 'a,
        want: &'a Want,
        room: &'a dyn Fn(u32) -> Room,
        fits: &'a dyn Fn(u32) -> bool,
    ) -> impl Iterator<Item = (usize, u32)> + 'a {
        buckets.flat_map(move |b| {
            let pb = pool * BUCKETS + b;
            let bucket = &self.buckets[pb];
            let filled = bucket.filled;
            let wanted = want.cells(b);
            let mut cells = [0u64; 3];
            for (c, (f, w)) in cells.iter_mut().zip(filled.iter().zip(wanted)) {
                *c = f & w;
            }
            if !covers(&bucket.bound.get(), &want.room) {
                cells = [0; 3];
            }
            // Only a bucket seen whole, with no host fitting, gets its bound made exact.
            let whole = cells == filled;
            let mut fitted = false;
            let mut cursor = 0u32;
            std::iter::from_fn(move || loop {
                if cursor == 0 {
                    let Some(cell) = take_lowest(&mut cells) else {
                        if whole && !fitted {
                            bucket.bound.set(self.most_free(pb, filled, room));
                        }
                        return None;
                    };
                    cursor = self.head[pb * self.cells + cell];
                    continue;
                }
                let h = cursor - 1;
                cursor = self.next[h as usize];
                if fits(h) {
                    fitted = true;
                    return Some((b, h));
                }
            })
        })
    }

    /// The most any host of bucket `pb` (its cells `filled`) has free, in each resource.
    /// Asked only of a bucket just seen whole without a fit, whose hosts are in the cache:
    /// keeping the most while scanning cost every scan, and most end at their first host.
    fn most_free(&self, pb: usize, filled: [u64; 3], room: &dyn Fn(u32) -> Room) -> Room {
        let mut most = [0u64; 5];
        let mut cells = filled;
        while let Some(cell) = take_lowest(&mut cells) {
            let mut cursor = self.head[pb * self.cells + cell];
            while cursor != 0 {
                for (x, r) in most.iter_mut().zip(room(cursor - 1)) {
                    *x = (*x).max(r);
                }
                cursor = self.next[cursor as usize - 1];
            }
        }
        most
    }

    /// The first non-empty bucket of `pool` at or above `b`.
    fn next_up(&self, pool: usize, b: usize) -> Option<usize> {
        let words = &self.nonempty[pool * BUCKETS / 64..(pool + 1) * BUCKETS / 64];
        let w = b / 64;
        let here = words[w] & (!0u64 << (b % 64));
        if here != 0 {
            return Some(w * 64 + here.trailing_zeros() as usize);
        }
        let above = self.words[pool] & (!0u64).checked_shl(w as u32 + 1).unwrap_or(0);
        if above == 0 {
            return None;
        }
        let w = above.trailing_zeros() as usize;
        Some(w * 64 + words[w].trailing_zeros() as usize)
    }

    /// The top non-empty bucket of `pool`: no host of it is in a higher one.
    pub fn top(&self, pool: usize) -> Option<usize> {
        self.next_down(pool, BUCKETS - 1)
    }

    /// The first non-empty bucket of `pool` at or below `b`.
    fn next_down(&self, pool: usize, b: usize) -> Option<usize> {
        let words = &self.nonempty[pool * BUCKETS / 64..(pool + 1) * BUCKETS / 64];
        let w = b / 64;
        let here = words[w] & (!0u64 >> (63 - b % 64));
        if here != 0 {
            return Some(w * 64 + 63 - here.leading_zeros() as usize);
        }
        let below = self.words[pool] & ((1u64 << w) - 1);
        if below == 0 {
            return None;
        }
        let w = 63 - below.leading_zeros() as usize;
        Some(w * 64 + 63 - words[w].leading_zeros() as usize)
    }
}

/// The lowest cell set in `cells`, cleared.
fn take_lowest(cells: &mut [u64; 3]) -> Option<usize> {
    for (i, word) in cells.iter_mut().enumerate() {
        if *word != 0 {
            let bit = word.trailing_zeros() as usize;
            *word &= *word - 1;
            return Some(i * 64 + bit);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scan, up or down, finds every host that fits, whatever cells the hosts sit in and
    /// however they moved: the masks and the trees rule out only hosts that cannot fit.
    #[test]
    fn the_cells_rule_out_only_hosts_that_cannot_fit() {
        let (scale_cpus, scale_ram) = (96_000u64, 768 * 1024u64);
        let mut draw = crate::pack::draws(7);
        let share = |r: &Room| {
            (
                r[0] as f64 / scale_cpus as f64,
                r[1] as f64 / scale_ram as f64,
            )
        };
        let slot = |r: &Room| {
            let (c, m) = share(r);
            Slot {
                bucket: bucket_of(c.min(m)) as u16,
                cell: cell_of(c, m, 1.0) as u8,
            }
        };
        // Hosts of every size, many nearly full in one resource or both.
        let mut hosts: Vec<Room> = (0..3000)
            .map(|i| {
                let full = |n: u64, d: &mut dyn FnMut(u64) -> u64| match i % 3 {
                    0 => d(n + 1),
                    _ => d(n / 64 + 1),
                };
                [
                    full(scale_cpus, &mut draw),
                    full(scale_ram, &mut draw),
                    0,
                    0,
                    0,
                ]
            })
            .collect();
        let mut index = Index::new(1, CELLS, hosts.len());
        for (h, r) in hosts.iter().enumerate() {
            index.insert(0, slot(r), h as u32, *r);
        }
        for round in 0..2 {
            for _ in 0..300 {
                let need: Room = [draw(scale_cpus / 4), draw(scale_ram / 4), 0, 0, 0];
                let (c, m) = share(&need);
                let want = Want::shares(need, c, m);
                let room = |h: u32| hosts[h as usize];
                let fits = |h: u32| covers(&hosts[h as usize], &need);
                let expected: Vec<u32> = (0..hosts.len() as u32).filter(|&h| fits(h)).collect();
                let lowest = bucket_of(c.min(m));
                for down in [false, true] {
                    let mut found: Vec<u32> = match down {
                        false => index.scan_up(0, lowest, &want, &room, &fits).collect(),
                        true => index.scan_down(0, lowest, &want, &room, &fits).collect(),
                    };
                    found.sort_unstable();
                    assert_eq!(found, expected, "round {round}, need {need:?}, down {down}");
                }
            }
            // Hosts take room and give it back: every third moves.
            for h in (0..hosts.len()).step_by(3) {
                index.remove(0, slot(&hosts[h]), h as u32);
                hosts[h] = [draw(scale_cpus + 1), draw(scale_ram / 8 + 1), 0, 0, 0];
                index.insert(0, slot(&hosts[h]), h as u32, hosts[h]);
            }
        }
    }
}
