//! An amount of each resource pack counts, for the sums and comparisons made around the
//! placement loop: quotas and what each role uses of them, the demand of what is missing
//! against what the offers hold, the fleet's largest host, the room a preemption makes. The
//! loop itself reads the fleet's columns (`fleet`) and each class's own fields (`place`),
//! in the narrower widths the offers allow.

use std::ops::{Add, AddAssign};

use crate::job;

/// cpus in millicores (reference millicores, unless the value says it counts a host's
/// physical ones), memory and disk in MB, whole GPUs. Ports are counted apart: no quota or
/// bound counts them, and a host's are numbers to hand out, not only an amount.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Resources {
    pub cpus: u64,
    pub ram_mb: u64,
    pub disk_mb: u64,
    pub gpus: u64,
}

impl Resources {
    /// What one instance of a job asks for.
    pub fn of(r: &job::Resources) -> Resources {
        Resources {
            cpus: r.cpus as u64,
            ram_mb: r.ram_mb,
            disk_mb: r.disk_mb,
            gpus: r.gpus as u64,
        }
    }

    /// `n` times as much.
    pub fn times(self, n: u64) -> Resources {
        Resources {
            cpus: self.cpus * n,
            ram_mb: self.ram_mb * n,
            disk_mb: self.disk_mb * n,
            gpus: self.gpus * n,
        }
    }

    /// Whether this is no more than `room` in every resource.
    pub fn fits_in(self, room: Resources) -> bool {
        self.cpus <= room.cpus
            && self.ram_mb <= room.ram_mb
            && self.disk_mb <= room.disk_mb
            && self.gpus <= room.gpus
    }

    /// What is left of this once `other` is taken, none below zero.
    pub fn less(self, other: Resources) -> Resources {
        let (a, b) = (self.to_array(), other.to_array());
        Resources::from_array(std::array::from_fn(|k| a[k].saturating_sub(b[k])))
    }

    /// The amounts in the order cpus, ram_mb, disk_mb, gpus: for what is done alike to each.
    pub fn to_array(self) -> [u64; 4] {
        [self.cpus, self.ram_mb, self.disk_mb, self.gpus]
    }

    pub fn from_array([cpus, ram_mb, disk_mb, gpus]: [u64; 4]) -> Resources {
        Resources {
            cpus,
            ram_mb,
            disk_mb,
            gpus,
        }
    }
}

impl Add for Resources {
    type Output = Resources;

    fn add(self, other: Resources) -> Resources {
        Resources {
            cpus: self.cpus + other.cpus,
            ram_mb: self.ram_mb + other.ram_mb,
            disk_mb: self.disk_mb + other.disk_mb,
            gpus: self.gpus + other.gpus,
        }
    }
}

impl AddAssign for Resources {
    fn add_assign(&mut self, other: Resources) {
        *self = *self + other;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fits_only_with_room_in_every_resource() {
        let room = Resources {
            cpus: 4000,
            ram_mb: 8192,
            disk_mb: 100,
            gpus: 1,
        };
        assert!(room.fits_in(room));
        assert!(Resources::default().fits_in(room));
        for i in 0..4 {
            let one = std::array::from_fn(|k| (k == i) as u64);
            let more = room + Resources::from_array(one);
            assert!(!more.fits_in(room), "{more:?}");
        }
    }

    #[test]
    fn the_array_is_in_field_order() {
        let r = Resources {
            cpus: 1,
            ram_mb: 2,
            disk_mb: 3,
            gpus: 4,
        };
        assert_eq!(r.to_array(), [1, 2, 3, 4]);
        assert_eq!(Resources::from_array(r.to_array()), r);
        assert_eq!(r.times(3), r + r + r);
    }
}
