//! Moves an outbox written before the record log (sled keys `r` + first seq
//! → a segment of records, `c:` + key → a source cursor, `m:next_seq`) into
//! the log, under the same sequence numbers: records the sink may already
//! hold must keep their `(gateway, epoch, seq)` so it drops them as duplicates.
//!
//! Crash-safe by order: the log is synced before sled's keys are deleted, and
//! only records at or above the log's next sequence number are moved, so a
//! move cut short is finished by the next open without copying anything twice.

use super::OutboxError;
use super::log::RecordLog;

const RECORD_PREFIX: u8 = b'r';
const NEXT_SEQ_KEY: &[u8] = b"m:next_seq";
const CHECKPOINT_PREFIX: &[u8] = b"c:";

/// The records of a segment value (`count: u32 BE`, then per record
/// `len: u32 BE` + bytes); `None` if it is malformed.
fn segment_items(value: &[u8]) -> Option<Vec<&[u8]>> {
    let count = u32::from_be_bytes(value.get(..4)?.try_into().ok()?) as usize;
    let mut items = Vec::with_capacity(count.min(4096));
    let mut rest = value.get(4..)?;
    for _ in 0..count {
        let len = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize;
        items.push(rest.get(4..4 + len)?);
        rest = &rest[4 + len..];
    }
    rest.is_empty().then_some(items)
}

/// Moves what `tree` holds into `log`; returns how many records moved.
pub(super) fn from_sled_segments(tree: &sled::Tree, log: &RecordLog) -> Result<u64, OutboxError> {
    let mut old_keys = Vec::new();
    let mut moved = 0u64;
    for kv in tree.scan_prefix([RECORD_PREFIX]) {
        let (key, value) = kv?;
        old_keys.push(key.clone());
        let Some(first) = key
            .get(1..9)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map(u64::from_be_bytes)
        else {
            continue;
        };
        let items = segment_items(&value).ok_or_else(|| OutboxError::Corrupt {
            seq: first,
            detail: "malformed segment in the old outbox".into(),
        })?;
        let (_, _, next) = log.counts();
        let skip = next.saturating_sub(first).min(items.len() as u64) as usize;
        if skip < items.len() {
            let records: Vec<Vec<u8>> = items[skip..].iter().map(|i| i.to_vec()).collect();
            log.import(first + skip as u64, &records, &[])?;
            moved += records.len() as u64;
        }
    }
    let mut cursors = Vec::new();
    for kv in tree.scan_prefix(CHECKPOINT_PREFIX) {
        let (key, value) = kv?;
        old_keys.push(key.clone());
        if let Ok(name) = std::str::from_utf8(&key[CHECKPOINT_PREFIX.len()..])
            && log.cursor(name).is_none()
        {
            cursors.push((name.to_owned(), value.to_vec()));
        }
    }
    let (_, _, next) = log.counts();
    let stored_next = tree
        .get(NEXT_SEQ_KEY)?
        .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
        .map_or(0, u64::from_be_bytes);
    if !cursors.is_empty() || stored_next > next {
        // Written last: with the next seq raised, every record is in.
        let pairs: Vec<(&str, &[u8])> = cursors
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_slice()))
            .collect();
        log.import(stored_next.max(next), &[], &pairs)?;
    }
    if old_keys.is_empty() {
        return Ok(0);
    }
    log.sync()?;
    let mut batch = sled::Batch::default();
    for key in old_keys {
        batch.remove(key);
    }
    tree.apply_batch(batch)?;
    // Not strictly needed (a second move copies nothing), but it keeps a
    // cursor a source removes later from coming back from sled.
    tree.flush()?;
    tracing::info!(records = moved, "Moved the outbox into its record log.");
    Ok(moved)
}

#[cfg(test)]
mod tests {
    use bytesize::ByteSize;

    use super::*;
    use crate::config::StorageConfig;
    use crate::outbox::Outbox;

    /// A segment value of the old layout.
    fn segment(items: &[&[u8]]) -> Vec<u8> {
        let mut out = (items.len() as u32).to_be_bytes().to_vec();
        for i in items {
            out.extend_from_slice(&(i.len() as u32).to_be_bytes());
            out.extend_from_slice(i);
        }
        out
    }

    fn record(i: i64) -> Vec<u8> {
        let r = protocol::Reading::new("d", "c", protocol::Timestamp(i), i as f64).unwrap();
        Outbox::encode(&[r]).unwrap().remove(0)
    }

    fn open(dir: &std::path::Path) -> Outbox {
        let cfg = StorageConfig {
            max_outbox_bytes: ByteSize::mib(1),
            cache_capacity: ByteSize::mib(1),
            ..StorageConfig::default()
        };
        // sled releases its lock a moment after the last handle is dropped.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match Outbox::open(dir, &cfg) {
                Err(OutboxError::Locked { .. }) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(20))
                }
                r => return r.unwrap(),
            }
        }
    }

    #[test]
    fn an_old_sled_outbox_moves_into_the_log_under_the_same_seqs_once() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b, c, d) = (record(1), record(2), record(3), record(4));
        {
            let db = sled::open(dir.path()).unwrap();
            let tree = db.open_tree("outbox").unwrap();
            // Seqs 5..=6 and 9..=10 wait (7 and 8 were uploaded), 11 is next.
            tree.insert(b"r\0\0\0\0\0\0\0\x05", segment(&[&a, &b]))
                .unwrap();
            tree.insert(b"r\0\0\0\0\0\0\0\x09", segment(&[&c, &d]))
                .unwrap();
            tree.insert(NEXT_SEQ_KEY, &11u64.to_be_bytes()).unwrap();
            tree.insert(b"c:file:a", b"42".as_slice()).unwrap();
            tree.insert(b"m:epoch", &77u64.to_be_bytes()).unwrap();
            db.flush().unwrap();
        }
        let expect = |ob: &Outbox| {
            let got: Vec<(u64, Vec<u8>)> = ob
                .read_batch(0, usize::MAX, u64::MAX)
                .unwrap()
                .into_iter()
                .map(|r| {
                    let mut buf = Vec::new();
                    ciborium::into_writer(&r.item, &mut buf).unwrap();
                    (r.seq, buf)
                })
                .collect();
            assert_eq!(
                got,
                vec![
                    (5, a.clone()),
                    (6, b.clone()),
                    (9, c.clone()),
                    (10, d.clone())
                ]
            );
            assert_eq!(ob.next_seq(), 11);
            assert_eq!(ob.depth(), 4);
            assert_eq!(ob.checkpoint("file:a").unwrap(), Some(b"42".to_vec()));
            assert_eq!(ob.epoch(), 77);
        };
        let ob = open(dir.path());
        expect(&ob);
        drop(ob);
        // A second open finds nothing left to move and copies nothing twice.
        let ob = open(dir.path());
        expect(&ob);
        let seqs = ob.append_encoded(&[record(5)]).unwrap().seqs.unwrap();
        assert_eq!(seqs, (11, 11));
    }

    #[test]
    fn malformed_old_segments_are_refused_not_guessed() {
        assert!(segment_items(&segment(&[b"ab", b""])).is_some());
        let good = segment(&[b"abc"]);
        assert!(
            segment_items(&good[..good.len() - 1]).is_none(),
            "truncated"
        );
        assert!(
            segment_items(&[good.as_slice(), b"x"].concat()).is_none(),
            "trailing bytes"
        );
        assert!(segment_items(&[0xff, 0xff, 0xff, 0xff]).is_none());
    }
}
