//! Faults scheduled at random from a seed: kill, pause, partition,
//! latency, drop, membership, restart-all. Each event holds for a while and
//! is healed before the next; the events are logged for the report.

use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};
use serde::Serialize;
use tokio::sync::Mutex;

use crate::lab::Lab;
use crate::proxy::LinkFaults;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Fault {
    Kill,
    Pause,
    Partition,
    Latency,
    Drop,
    Membership,
    RestartAll,
}

pub const ALL: &[Fault] = &[
    Fault::Kill,
    Fault::Pause,
    Fault::Partition,
    Fault::Latency,
    Fault::Drop,
    Fault::Membership,
    Fault::RestartAll,
];

impl FromStr for Fault {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "kill" => Fault::Kill,
            "pause" => Fault::Pause,
            "partition" => Fault::Partition,
            "latency" => Fault::Latency,
            "drop" => Fault::Drop,
            "membership" => Fault::Membership,
            "restart-all" => Fault::RestartAll,
            other => return Err(format!("unknown nemesis {other:?}")),
        })
    }
}

/// `"partition,kill"`, `"all"` or `"none"`.
pub fn parse_list(s: &str) -> Result<Vec<Fault>, String> {
    match s {
        "all" => Ok(ALL.to_vec()),
        "none" | "" => Ok(Vec::new()),
        list => list.split(',').map(|f| f.trim().parse()).collect(),
    }
}

pub fn name_of(faults: &[Fault]) -> String {
    if faults.is_empty() {
        return "none".into();
    }
    if faults.len() == ALL.len() {
        return "all".into();
    }
    faults
        .iter()
        .map(|f| {
            serde_json::to_value(f)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default()
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// One fault as it happened.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    pub fault: Fault,
    pub detail: String,
    /// Nanoseconds since the test started.
    pub start: u64,
    pub end: u64,
}

/// Runs faults until `until`, then heals everything.
pub async fn run(
    lab: Arc<Mutex<Lab>>,
    faults: Vec<Fault>,
    seed: u64,
    started: Instant,
    until: Instant,
) -> Vec<Event> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut events = Vec::new();
    if faults.is_empty() {
        return events;
    }
    let admin = match lab.lock().await.client(Duration::from_secs(5)) {
        Ok(c) => c,
        Err(_) => return events,
    };
    loop {
        let quiet = Duration::from_millis(rng.random_range(1000..3000));
        if Instant::now() + quiet >= until {
            break;
        }
        tokio::time::sleep(quiet).await;
        let fault = *faults.choose(&mut rng).expect("non-empty");
        let hold = Duration::from_millis(rng.random_range(2000..5000))
            .min(until.saturating_duration_since(Instant::now()));
        let start = started.elapsed().as_nanos() as u64;
        let detail = apply(&lab, &admin, fault, hold, &mut rng).await;
        events.push(Event {
            fault,
            detail,
            start,
            end: started.elapsed().as_nanos() as u64,
        });
    }
    let _ = lab.lock().await.heal_all();
    events
}

/// Applies one fault, holds it for `hold`, heals it; says what it did.
async fn apply(
    lab: &Arc<Mutex<Lab>>,
    admin: &streamshield_client::Client,
    fault: Fault,
    hold: Duration,
    rng: &mut StdRng,
) -> String {
    let (ids, leader) = {
        let l = lab.lock().await;
        (l.ids().to_vec(), l.leader(admin).await)
    };
    let pick = |rng: &mut StdRng| *ids.choose(rng).expect("nodes");
    let detail = match fault {
        Fault::Kill => {
            let victim = if rng.random_bool(0.5) {
                leader.unwrap_or_else(|| pick(rng))
            } else {
                pick(rng)
            };
            let _ = lab.lock().await.kill(victim);
            tokio::time::sleep(hold).await;
            let _ = lab.lock().await.ensure_running(victim);
            format!("kill -9 node {victim}, restart after {hold:?}")
        }
        Fault::Pause => {
            let victim = if rng.random_bool(0.5) {
                leader.unwrap_or_else(|| pick(rng))
            } else {
                pick(rng)
            };
            lab.lock().await.pause(victim, true);
            tokio::time::sleep(hold).await;
            lab.lock().await.pause(victim, false);
            // Whether it led tells a needed election from a spurious one.
            let role = if Some(victim) == leader {
                " (the leader)"
            } else {
                ""
            };
            format!("SIGSTOP node {victim}{role} for {hold:?}")
        }
        Fault::Partition => {
            let mut shuffled = ids.clone();
            shuffled.shuffle(rng);
            let (groups, what): (Vec<Vec<u64>>, String) = match rng.random_range(0..5) {
                0 => {
                    let half = shuffled.len() / 2;
                    (
                        vec![shuffled[..half].to_vec(), shuffled[half..].to_vec()],
                        "random halves".into(),
                    )
                }
                1 => {
                    let l = leader.unwrap_or(shuffled[0]);
                    let rest = ids.iter().copied().filter(|i| *i != l).collect();
                    (vec![vec![l], rest], format!("isolated leader {l}"))
                }
                2 => {
                    // Ring: each node keeps only its two neighbours.
                    let l = lab.lock().await;
                    let n = shuffled.len();
                    for (i, a) in shuffled.iter().enumerate() {
                        for (j, b) in shuffled.iter().enumerate() {
                            let d = (i + n - j) % n;
                            if a != b && d != 1 && d != n - 1 {
                                l.set_link(
                                    *a,
                                    *b,
                                    LinkFaults {
                                        blocked: true,
                                        ..Default::default()
                                    },
                                );
                            }
                        }
                    }
                    drop(l);
                    (Vec::new(), format!("majority ring {shuffled:?}"))
                }
                3 => {
                    // Bridge: two halves that only one node talks to.
                    let l = lab.lock().await;
                    let bridge = shuffled[0];
                    let rest = &shuffled[1..];
                    let (a, b) = rest.split_at(rest.len() / 2);
                    for x in a {
                        for y in b {
                            l.set_link(
                                *x,
                                *y,
                                LinkFaults {
                                    blocked: true,
                                    ..Default::default()
                                },
                            );
                            l.set_link(
                                *y,
                                *x,
                                LinkFaults {
                                    blocked: true,
                                    ..Default::default()
                                },
                            );
                        }
                    }
                    drop(l);
                    (
                        Vec::new(),
                        format!("bridge {bridge} between {a:?} and {b:?}"),
                    )
                }
                _ => {
                    // One-way: the leader cannot send, but still receives.
                    let l = lab.lock().await;
                    let from = leader.unwrap_or(shuffled[0]);
                    for to in ids.iter().filter(|i| **i != from) {
                        l.set_link(
                            from,
                            *to,
                            LinkFaults {
                                blocked: true,
                                ..Default::default()
                            },
                        );
                    }
                    drop(l);
                    (Vec::new(), format!("one-way: node {from} cannot send"))
                }
            };
            if !groups.is_empty() {
                lab.lock().await.partition(&groups);
            }
            tokio::time::sleep(hold).await;
            lab.lock().await.heal_links();
            format!("partition ({what}) for {hold:?}")
        }
        Fault::Latency => {
            let delay = Duration::from_millis(rng.random_range(20..150));
            let l = lab.lock().await;
            for (from, to) in l.node_links() {
                l.set_link(
                    from,
                    to,
                    LinkFaults {
                        blocked: false,
                        delay,
                    },
                );
            }
            drop(l);
            tokio::time::sleep(hold).await;
            lab.lock().await.heal_links();
            format!("{delay:?} latency on every node link for {hold:?}")
        }
        Fault::Drop => {
            let l = lab.lock().await;
            let mut dropped = Vec::new();
            for (from, to) in l.node_links() {
                if rng.random_bool(0.3) {
                    l.set_link(
                        from,
                        to,
                        LinkFaults {
                            blocked: true,
                            ..Default::default()
                        },
                    );
                    dropped.push(format!("{from}->{to}"));
                }
            }
            drop(l);
            tokio::time::sleep(hold).await;
            lab.lock().await.heal_links();
            format!("dropped links [{}] for {hold:?}", dropped.join(" "))
        }
        Fault::Membership => {
            let voters = lab.lock().await.voters(admin).await.unwrap_or_default();
            let candidates: Vec<u64> = voters
                .iter()
                .copied()
                .filter(|v| Some(*v) != leader)
                .collect();
            match candidates.choose(rng).copied() {
                Some(victim) if voters.len() > 2 => {
                    let rest: Vec<u64> = voters.iter().copied().filter(|v| *v != victim).collect();
                    let removed = admin.change_membership(rest, false).await;
                    // Half the time the node is replaced: its disk wiped,
                    // it comes back empty and must catch up from scratch.
                    let replaced = removed.is_ok() && rng.random_bool(0.5);
                    if replaced {
                        let _ = lab.lock().await.wipe(victim);
                    }
                    tokio::time::sleep(hold).await;
                    let addr = lab.lock().await.addr(victim);
                    let back = match admin.add_learner(victim, &addr, true).await {
                        Ok(_) => admin
                            .change_membership(voters.clone(), false)
                            .await
                            .map(|_| ()),
                        Err(e) => Err(e),
                    };
                    format!(
                        "removed node {victim} ({}), {}re-added after {hold:?} ({})",
                        removed.map_or_else(|e| e.to_string(), |_| "ok".into()),
                        if replaced { "wiped, " } else { "" },
                        back.map_or_else(|e| e.to_string(), |_| "ok".into())
                    )
                }
                _ => {
                    tokio::time::sleep(hold).await;
                    "membership: no removable voter".into()
                }
            }
        }
        Fault::RestartAll => {
            let mut l = lab.lock().await;
            for id in &ids {
                let _ = l.kill(*id);
            }
            for id in &ids {
                let _ = l.ensure_running(*id);
            }
            drop(l);
            tokio::time::sleep(hold).await;
            "kill -9 and restart of every node".into()
        }
    };
    detail
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_parse_and_print() {
        assert_eq!(
            parse_list("partition,kill").unwrap(),
            vec![Fault::Partition, Fault::Kill]
        );
        assert_eq!(parse_list("all").unwrap().len(), ALL.len());
        assert!(parse_list("none").unwrap().is_empty());
        assert!(parse_list("partition,bogus").is_err());
        assert_eq!(name_of(&[Fault::Partition, Fault::Kill]), "partition,kill");
        assert_eq!(name_of(ALL), "all");
    }
}
