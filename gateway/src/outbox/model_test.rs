//! A model-based test of the record log: random runs of append / sync /
//! remove / read / evict / reopen / crash against a plain reference model.
//!
//! A crash keeps a random prefix of what was written to the active segment
//! since it was last synced (what a power cut may leave); a reopen keeps
//! everything (what kill -9 leaves: the page cache survives).

use std::collections::BTreeMap;
use std::path::PathBuf;

use proptest::prelude::*;

use super::log::RecordLog;
use super::{OutboxError, record_cost};

const SEGMENT_BYTES: u64 = 600;
const CAP: u64 = 1_500;
const KEYS: [&str; 2] = ["a", "b"];

#[derive(Clone, Debug)]
enum Op {
    /// Records of these lengths, and maybe a cursor value for a key.
    Append(Vec<u8>, Option<(usize, u8)>),
    /// Append under `drop_oldest` with a small cap.
    AppendEvicting(u8),
    Sync,
    /// Remove live records from the `a`-th to the `a + n`-th (wrapping).
    Remove(usize, usize),
    Read(usize, usize),
    Reopen,
    /// A power cut: keep `keep` ‰ of the unsynced tail.
    Crash(u16),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (proptest::collection::vec(0u8..40, 0..6), proptest::option::of((0..KEYS.len(), any::<u8>())))
            .prop_map(|(r, c)| Op::Append(r, c)),
        1 => (0u8..40).prop_map(Op::AppendEvicting),
        2 => Just(Op::Sync),
        2 => (0usize..64, 0usize..8).prop_map(|(a, n)| Op::Remove(a, n)),
        1 => (0usize..64, 1usize..10).prop_map(|(a, n)| Op::Read(a, n)),
        1 => Just(Op::Reopen),
        1 => (0u16..=1000).prop_map(Op::Crash),
    ]
}

/// What the log must hold.
#[derive(Default)]
struct Model {
    next_seq: u64,
    /// `next_seq` at the last sync.
    synced_next: u64,
    /// What a read returns now.
    live: BTreeMap<u64, Vec<u8>>,
    /// Live at the last sync: a crash may not lose these unless a later,
    /// unsynced removal took them (then they may come back or not).
    durable: BTreeMap<u64, Vec<u8>>,
    /// Every record handed a seq (its bytes under that seq, for good).
    ever: BTreeMap<u64, Vec<u8>>,
    cursors: BTreeMap<String, u8>,
    /// Per key: the value at the last sync, and values written since.
    cursor_candidates: BTreeMap<String, Vec<Option<u8>>>,
}

impl Model {
    /// Everything live now survives a crash; cursors are their current values.
    fn mark_synced(&mut self) {
        self.durable = self.live.clone();
        self.cursor_candidates = self
            .cursors
            .iter()
            .map(|(k, v)| (k.clone(), vec![Some(*v)]))
            .collect();
    }
}

fn bytes(seq: u64, len: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (seq as u8).wrapping_mul(31).wrapping_add(i))
        .collect()
}

fn all(log: &RecordLog) -> BTreeMap<u64, Vec<u8>> {
    log.read(0, u64::MAX, usize::MAX, u64::MAX)
        .unwrap()
        .into_iter()
        .collect()
}

fn check_counts(log: &RecordLog, live: &BTreeMap<u64, Vec<u8>>) {
    let (n, cost, _) = log.counts();
    assert_eq!(n, live.len() as u64, "record count");
    let expected: u64 = live.values().map(|v| record_cost(v.len())).sum();
    assert_eq!(cost, expected, "byte count");
}

fn run(ops: Vec<Op>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log");
    let mut log = Some(RecordLog::open(&path, SEGMENT_BYTES).unwrap());
    let mut m = Model {
        next_seq: 1,
        synced_next: 1,
        ..Model::default()
    };
    // The active segment and its length at the last explicit sync.
    let mut synced_at: Option<(PathBuf, u64)> = None;
    for op in ops {
        let l = log.as_ref().unwrap();
        match op {
            Op::Append(lens, cursor) => {
                let records: Vec<Vec<u8>> = lens
                    .iter()
                    .enumerate()
                    .map(|(i, &n)| bytes(m.next_seq + i as u64, n))
                    .collect();
                let value;
                let cursors: Vec<(&str, &[u8])> = match cursor {
                    Some((k, v)) => {
                        value = [v];
                        vec![(KEYS[k], &value[..])]
                    }
                    None => Vec::new(),
                };
                match l.append(&records, &cursors, u64::MAX, false) {
                    Ok(out) => {
                        let n = records.len() as u64;
                        assert_eq!(out.seqs, (n > 0).then(|| (m.next_seq, m.next_seq + n - 1)));
                        for r in records {
                            m.live.insert(m.next_seq, r.clone());
                            m.ever.insert(m.next_seq, r);
                            m.next_seq += 1;
                        }
                        if let Some((k, v)) = cursor {
                            m.cursors.insert(KEYS[k].into(), v);
                            m.cursor_candidates
                                .entry(KEYS[k].into())
                                .or_insert_with(|| vec![None])
                                .push(Some(v));
                        }
                    }
                    Err(e) => panic!("append: {e}"),
                }
            }
            Op::AppendEvicting(len) => {
                let record = bytes(m.next_seq, len);
                match l.append(std::slice::from_ref(&record), &[], CAP, true) {
                    Ok(out) => {
                        // The oldest live records went, as many as needed.
                        let mut used: u64 = m.live.values().map(|v| record_cost(v.len())).sum();
                        let mut dropped = 0;
                        while used + record_cost(record.len()) > CAP {
                            let (_, v) = m.live.pop_first().unwrap();
                            used -= record_cost(v.len());
                            dropped += 1;
                        }
                        assert_eq!(out.dropped, dropped);
                        m.live.insert(m.next_seq, record.clone());
                        m.ever.insert(m.next_seq, record);
                        m.next_seq += 1;
                    }
                    Err(OutboxError::TooBigForOutbox { .. }) => unreachable!(),
                    Err(e) => panic!("append: {e}"),
                }
            }
            Op::Sync => {
                l.sync().unwrap();
                m.synced_next = m.next_seq;
                m.mark_synced();
                let (active, len, _) = l.active_segment();
                synced_at = Some((active, len));
            }
            Op::Remove(a, n) => {
                let keys: Vec<u64> = m.live.keys().copied().collect();
                if keys.is_empty() {
                    continue;
                }
                let i = a % keys.len();
                let (first, last) = (keys[i], keys[(i + n).min(keys.len() - 1)]);
                let expected = m.live.range(first..=last).count() as u64;
                assert_eq!(l.remove(first, last).unwrap(), expected);
                let gone: Vec<u64> = m.live.range(first..=last).map(|(k, _)| *k).collect();
                for k in gone {
                    m.live.remove(&k);
                }
            }
            Op::Read(a, max) => {
                let from = a as u64 % (m.next_seq + 1);
                let got = l.read(from, u64::MAX, max, u64::MAX).unwrap();
                let want: Vec<(u64, Vec<u8>)> = m
                    .live
                    .range(from..)
                    .take(max)
                    .map(|(k, v)| (*k, v.clone()))
                    .collect();
                assert_eq!(got, want, "read from {from}, max {max}");
            }
            Op::Reopen => {
                drop(log.take());
                let l = RecordLog::open(&path, SEGMENT_BYTES).unwrap();
                assert_eq!(all(&l), m.live, "after a reopen");
                assert_eq!(l.counts().2, m.next_seq);
                for k in KEYS {
                    assert_eq!(l.cursor(k), m.cursors.get(k).map(|v| vec![*v]));
                }
                // Everything read back from disk is durable now.
                l.sync().unwrap();
                m.synced_next = m.next_seq;
                m.mark_synced();
                synced_at = None;
                log = Some(l);
            }
            Op::Crash(keep) => {
                let (active, len, base) = l.active_segment();
                drop(log.take());
                let synced = match &synced_at {
                    Some((p, n)) if *p == active => *n,
                    // Created by a roll, which synced its snapshot.
                    _ => base,
                };
                let cut = synced + (len - synced) * u64::from(keep) / 1000;
                let file = std::fs::OpenOptions::new()
                    .write(true)
                    .open(&active)
                    .unwrap();
                if keep % 2 == 0 {
                    file.set_len(cut).unwrap();
                } else {
                    // The unsynced pages hold old bytes, not the new ones.
                    use std::os::unix::fs::FileExt;
                    let junk: Vec<u8> = (cut..len).map(|i| (i * 7 + 3) as u8).collect();
                    file.write_all_at(&junk, cut).unwrap();
                }
                let l = RecordLog::open(&path, SEGMENT_BYTES).unwrap();
                let got = all(&l);
                for (seq, v) in &got {
                    assert_eq!(m.ever.get(seq), Some(v), "seq {seq} holds what was written");
                    assert!(
                        m.live.contains_key(seq)
                            || m.durable.contains_key(seq)
                            || *seq >= m.synced_next,
                        "seq {seq} came back although its removal was synced"
                    );
                }
                for (seq, v) in &m.durable {
                    if m.live.contains_key(seq) {
                        assert_eq!(got.get(seq), Some(v), "synced seq {seq} was lost");
                    }
                }
                let next = l.counts().2;
                assert!(
                    got.keys().all(|s| *s < next)
                        && next >= m.durable.keys().last().map_or(1, |s| s + 1),
                    "next seq {next} below a kept record"
                );
                for k in KEYS {
                    let now = l.cursor(k).map(|v| v[0]);
                    let allowed = m
                        .cursor_candidates
                        .get(k)
                        .cloned()
                        .unwrap_or_else(|| vec![None]);
                    assert!(
                        allowed.contains(&now),
                        "cursor {k}: {now:?} not in {allowed:?}"
                    );
                }
                check_counts(&l, &got);
                // The crash's outcome is the new truth; lost unsynced seqs may
                // be handed out again (nothing durable or uploaded had them).
                m.live = got;
                m.next_seq = next;
                m.ever.retain(|s, _| *s < next);
                m.synced_next = next;
                m.cursors = KEYS
                    .iter()
                    .filter_map(|k| Some(((*k).to_owned(), l.cursor(k)?[0])))
                    .collect();
                l.sync().unwrap();
                m.mark_synced();
                synced_at = None;
                log = Some(l);
            }
        }
        check_counts(log.as_ref().unwrap(), &m.live);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn the_log_matches_a_plain_model_through_crashes(ops in proptest::collection::vec(op(), 1..120)) {
        run(ops);
    }
}
