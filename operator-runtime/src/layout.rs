//! Where keys, partitions and tasks meet.
//!
//! Every stream of a job has the same number of partitions, and partition
//! `p` holds exactly the keys of a contiguous range of key groups. Task `t`
//! of `n` reads a contiguous range of partitions and so owns a contiguous
//! range of key groups: the keys it reads are the keys whose state it
//! owns. A rescale changes only which task owns which range; the state
//! stays where it is, stored by key group.

use std::ops::Range;

use streamshield_client::key_group;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub key_groups: u32,
    pub partitions: u32,
}

impl Layout {
    /// `key_groups >= partitions >= 1`, so that every partition has a key
    /// group (checked by the job configuration).
    pub fn new(key_groups: u32, partitions: u32) -> Self {
        Self {
            key_groups,
            partitions,
        }
    }

    pub fn partition_of_group(&self, group: u32) -> u32 {
        (u64::from(group) * u64::from(self.partitions) / u64::from(self.key_groups)) as u32
    }

    pub fn partition_of_key(&self, key: &[u8]) -> u32 {
        self.partition_of_group(u32::from(key_group(key, self.key_groups)))
    }

    /// The first key group of partition `p` (`p == partitions` gives the
    /// end of the last one).
    fn first_group(&self, p: u32) -> u32 {
        let (kg, n) = (u64::from(self.key_groups), u64::from(self.partitions));
        (u64::from(p) * kg).div_ceil(n) as u32
    }

    pub fn groups_of_partition(&self, p: u32) -> Range<u32> {
        self.first_group(p)..self.first_group(p + 1)
    }

    /// The partitions of task `task` of `tasks` (`tasks <= partitions`).
    pub fn partitions_of_task(&self, task: u32, tasks: u32) -> Range<u32> {
        let (p, n) = (u64::from(self.partitions), u64::from(tasks.max(1)));
        (u64::from(task) * p / n) as u32..(u64::from(task + 1) * p / n) as u32
    }

    pub fn groups_of_task(&self, task: u32, tasks: u32) -> Range<u32> {
        let ps = self.partitions_of_task(task, tasks);
        self.first_group(ps.start)..self.first_group(ps.end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tasks_keys_are_exactly_those_of_its_partitions() {
        for (kg, parts) in [(128, 12), (12, 12), (100, 7), (64, 1)] {
            let l = Layout::new(kg, parts);
            for tasks in [1, 2, 3, 4, 6, parts] {
                if tasks > parts {
                    continue;
                }
                let mut covered = 0;
                for t in 0..tasks {
                    let groups = l.groups_of_task(t, tasks);
                    assert!(!groups.is_empty(), "{kg}/{parts}: task {t} of {tasks}");
                    assert_eq!(groups.start, covered, "ranges are contiguous");
                    covered = groups.end;
                    for g in groups {
                        assert!(l
                            .partitions_of_task(t, tasks)
                            .contains(&l.partition_of_group(g)));
                    }
                }
                assert_eq!(covered, kg, "every key group has an owner");
            }
            for p in 0..parts {
                for g in l.groups_of_partition(p) {
                    assert_eq!(l.partition_of_group(g), p);
                }
            }
        }
    }

    #[test]
    fn keys_land_in_the_partition_of_their_group() {
        let l = Layout::new(128, 12);
        for i in 0..1000u32 {
            let key = format!("user-{i}");
            let g = u32::from(key_group(key.as_bytes(), 128));
            assert!(l
                .groups_of_partition(l.partition_of_key(key.as_bytes()))
                .contains(&g));
        }
    }
}
