//! The record log: the outbox's records and source cursors in append-only
//! segment files (`<outbox>/segments/NNNNNNNNNNNNNNNNNNNN.seg`).
//!
//! Why not sled: each sled flush wrote about 10 KB whatever it carried, so at
//! a typical site rate (one message per commit) the card took 25× the bytes
//! of the readings (BENCHMARKS, "Storage wear"). Here a commit writes its
//! frames once and syncs the segment (`fdatasync`); the page it ends in is the
//! only byte rewritten by the next commit.
//!
//! A segment is a sequence of frames:
//! `len: u32 LE | crc32: u32 LE | kind: u8 | payload (len bytes)`.
//! The CRC covers the segment's id, the kind and the payload, so a frame from
//! another segment does not pass for one of this one. Kinds:
//! - `Snapshot`, the first frame of every segment: the next sequence number
//!   and every source cursor, so older segments can go without losing either;
//! - `Append`: records under consecutive sequence numbers from `first_seq`,
//!   and the cursors written with them (one frame: both or neither);
//! - `Removed`: a range the sink confirmed (or `drop_oldest` evicted);
//! - `CursorRemoved`: a source dropped a cursor.
//!
//! Recovery reads every segment up to the first frame that does not check out
//! (a torn tail; only bytes never acknowledged can be there), then always
//! starts a new segment, so nothing is written after a torn frame. A segment
//! is synced when it is closed, the directory when a segment is created.
//! Segments are deleted oldest first, once none of their records is live; a
//! `Removed` frame lost in a crash only makes the uplink send records again,
//! and the sink drops the duplicates.

use std::collections::{BTreeMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use super::{AppendOutcome, OutboxError, record_cost};

const HEADER: usize = 9;
/// A longer length field can only be a torn or corrupt header.
const MAX_FRAME: usize = 64 << 20;
/// One entry of a segment's sparse seq → offset index per this many bytes.
const INDEX_STRIDE: u64 = 64 * 1024;
/// Bytes read from a segment at a time.
const READ_CHUNK: usize = 256 * 1024;
const SUFFIX: &str = ".seg";
/// A dead segment kept to be reused as the next one: writing over blocks a
/// file already has changes no file-system metadata, so `fdatasync` writes
/// the data alone, without a journal commit per sync.
const SPARE: &str = "spare";

const SNAPSHOT: u8 = 1;
const APPEND: u8 = 2;
const REMOVED: u8 = 3;
const CURSOR_REMOVED: u8 = 4;

/// A decoded frame; slices borrow the read buffer.
enum Frame<'a> {
    Snapshot {
        next_seq: u64,
        cursors: Vec<(&'a [u8], &'a [u8])>,
    },
    Append {
        first_seq: u64,
        records: Vec<&'a [u8]>,
        cursors: Vec<(&'a [u8], &'a [u8])>,
    },
    Removed {
        first: u64,
        last: u64,
    },
    CursorRemoved {
        key: &'a [u8],
    },
}

/// Reads a frame payload front to back; `None` when it ends early.
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = (self.0.get(..n)?, self.0.get(n..)?);
        self.0 = rest;
        Some(head)
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    fn pairs(&mut self) -> Option<Vec<(&'a [u8], &'a [u8])>> {
        let n = self.u32()? as usize;
        let mut out = Vec::with_capacity(n.min(1024));
        for _ in 0..n {
            out.push((self.bytes()?, self.bytes()?));
        }
        Some(out)
    }
}

fn decode(kind: u8, payload: &[u8]) -> Option<Frame<'_>> {
    let mut c = Cursor(payload);
    let frame = match kind {
        SNAPSHOT => Frame::Snapshot {
            next_seq: c.u64()?,
            cursors: c.pairs()?,
        },
        APPEND => {
            let first_seq = c.u64()?;
            let n = c.u32()? as usize;
            let mut records = Vec::with_capacity(n.min(4096));
            for _ in 0..n {
                records.push(c.bytes()?);
            }
            Frame::Append {
                first_seq,
                records,
                cursors: c.pairs()?,
            }
        }
        REMOVED => Frame::Removed {
            first: c.u64()?,
            last: c.u64()?,
        },
        CURSOR_REMOVED => Frame::CursorRemoved { key: c.bytes()? },
        _ => return None,
    };
    c.0.is_empty().then_some(frame)
}

fn crc(segment: u64, kind: u8, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&segment.to_le_bytes());
    h.update(&[kind]);
    h.update(payload);
    h.finalize()
}

/// Appends one frame to `out`.
fn frame(out: &mut Vec<u8>, segment: u64, kind: u8, payload: &[u8]) {
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc(segment, kind, payload).to_le_bytes());
    out.push(kind);
    out.extend_from_slice(payload);
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

fn put_pairs<'a>(out: &mut Vec<u8>, pairs: impl ExactSizeIterator<Item = (&'a [u8], &'a [u8])>) {
    out.extend_from_slice(&(pairs.len() as u32).to_le_bytes());
    for (k, v) in pairs {
        put_bytes(out, k);
        put_bytes(out, v);
    }
}

fn append_payload(first_seq: u64, records: &[Vec<u8>], cursors: &[(&str, &[u8])]) -> Vec<u8> {
    let len: usize = records.iter().map(|r| 4 + r.len()).sum::<usize>()
        + cursors
            .iter()
            .map(|(k, v)| 8 + k.len() + v.len())
            .sum::<usize>();
    let mut p = Vec::with_capacity(16 + len);
    p.extend_from_slice(&first_seq.to_le_bytes());
    p.extend_from_slice(&(records.len() as u32).to_le_bytes());
    for r in records {
        put_bytes(&mut p, r);
    }
    put_pairs(&mut p, cursors.iter().map(|(k, v)| (k.as_bytes(), *v)));
    p
}

/// Calls `f` with each valid frame of `file` in `start..end` and its offset,
/// until `f` says stop or a frame does not check out; returns the offset
/// after the last frame read.
fn scan(
    file: &File,
    segment: u64,
    start: u64,
    end: u64,
    mut f: impl FnMut(u64, Frame<'_>) -> bool,
) -> io::Result<u64> {
    let mut buf: Vec<u8> = Vec::new();
    let mut buf_at = start;
    let mut pos = start;
    // Makes buf hold file bytes pos..pos+n (false when the segment ends first).
    let fill = |buf: &mut Vec<u8>, buf_at: &mut u64, pos: u64, n: usize| -> io::Result<bool> {
        if pos + n as u64 > end {
            return Ok(false);
        }
        if pos >= *buf_at && pos + n as u64 <= *buf_at + buf.len() as u64 {
            return Ok(true);
        }
        let len = (n.max(READ_CHUNK) as u64).min(end - pos) as usize;
        buf.resize(len, 0);
        file.read_exact_at(buf, pos)?;
        *buf_at = pos;
        Ok(true)
    };
    while fill(&mut buf, &mut buf_at, pos, HEADER)? {
        let h = &buf[(pos - buf_at) as usize..][..HEADER];
        let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize;
        let sum = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
        let kind = h[8];
        if len > MAX_FRAME || !fill(&mut buf, &mut buf_at, pos, HEADER + len)? {
            break;
        }
        let payload = &buf[(pos - buf_at) as usize + HEADER..][..len];
        if crc(segment, kind, payload) != sum {
            break;
        }
        let Some(frame) = decode(kind, payload) else {
            break;
        };
        let at = pos;
        pos += (HEADER + len) as u64;
        if !f(at, frame) {
            break;
        }
    }
    Ok(pos)
}

/// Disjoint inclusive seq ranges that were removed, start → end.
#[derive(Debug, Default)]
struct RangeSet(BTreeMap<u64, u64>);

impl RangeSet {
    fn contains(&self, seq: u64) -> bool {
        self.0
            .range(..=seq)
            .next_back()
            .is_some_and(|(_, &end)| end >= seq)
    }

    fn insert(&mut self, mut first: u64, mut last: u64) {
        // Merge with every range that overlaps or touches first..=last.
        if let Some((&s, &e)) = self.0.range(..=first).next_back()
            && e.saturating_add(1) >= first
        {
            first = s;
            last = last.max(e);
        }
        let touching: Vec<u64> = self
            .0
            .range(first..=last.saturating_add(1))
            .map(|(&s, _)| s)
            .collect();
        for s in touching {
            if let Some(e) = self.0.remove(&s) {
                last = last.max(e);
            }
        }
        self.0.insert(first, last);
    }

    /// Forgets everything below `seq`.
    fn prune_below(&mut self, seq: u64) {
        let below: Vec<(u64, u64)> = self.0.range(..seq).map(|(&s, &e)| (s, e)).collect();
        for (s, e) in below {
            self.0.remove(&s);
            if e >= seq {
                self.0.insert(seq, e);
            }
        }
    }
}

#[derive(Debug)]
struct Segment {
    id: u64,
    file: Arc<File>,
    /// Bytes of valid frames.
    len: u64,
    /// Bytes of its snapshot: a segment that holds only that is never closed.
    base: u64,
    /// No record in this segment has a lower seq.
    first_seq: u64,
    /// Records in this segment that were not removed.
    live: u64,
    /// Sparse (first seq of an append frame, its offset), ascending.
    index: Vec<(u64, u64)>,
}

impl Segment {
    fn note_append(&mut self, first_seq: u64, count: u64, offset: u64) {
        if count == 0 {
            return;
        }
        self.first_seq = self.first_seq.min(first_seq);
        if self
            .index
            .last()
            .is_none_or(|&(_, at)| offset >= at + INDEX_STRIDE)
        {
            self.index.push((first_seq, offset));
        }
    }

    /// Where to start reading for records from `seq` on.
    fn offset_for(&self, seq: u64) -> u64 {
        match self.index.partition_point(|&(s, _)| s <= seq) {
            0 => 0,
            i => self.index[i - 1].1,
        }
    }
}

#[derive(Debug)]
struct State {
    /// Oldest first; the last one is written to. Never empty once open.
    segments: VecDeque<Segment>,
    next_segment: u64,
    next_seq: u64,
    records: u64,
    bytes: u64,
    removed: RangeSet,
    cursors: BTreeMap<String, Vec<u8>>,
    /// Write generation, and the generation the last sync covered.
    written: u64,
    synced: u64,
    /// A dead segment file waits under [`SPARE`] to be reused.
    has_spare: bool,
}

/// See the module docs. Methods block on file I/O.
#[derive(Debug)]
pub(super) struct RecordLog {
    dir: PathBuf,
    /// A segment closes once it holds about this many bytes.
    segment_bytes: u64,
    state: Mutex<State>,
}

/// What a sync made durable.
pub(super) struct Synced {
    /// Every record below this seq is durable.
    pub next_seq: u64,
}

fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:020}{SUFFIX}"))
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

impl RecordLog {
    /// Opens (or creates) the log in `dir` and starts a new segment.
    pub(super) fn open(dir: &Path, segment_bytes: u64) -> Result<Self, OutboxError> {
        std::fs::create_dir_all(dir)?;
        let mut ids: Vec<u64> = std::fs::read_dir(dir)?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name();
                name.to_str()?.strip_suffix(SUFFIX)?.parse().ok()
            })
            .collect();
        ids.sort_unstable();
        let mut state = State {
            segments: VecDeque::new(),
            next_segment: ids.last().map_or(1, |l| l + 1),
            next_seq: 1,
            records: 0,
            bytes: 0,
            removed: RangeSet::default(),
            cursors: BTreeMap::new(),
            written: 0,
            synced: 0,
            has_spare: dir.join(SPARE).exists(),
        };
        // Pass 1: valid lengths, removals, cursors, the next seq, the index.
        for id in ids {
            let path = segment_path(dir, id);
            let file = OpenOptions::new().read(true).open(&path)?;
            let file_len = file.metadata()?.len();
            let mut seg = Segment {
                id,
                file: Arc::new(file),
                len: 0,
                base: 0,
                first_seq: u64::MAX,
                live: 0,
                index: Vec::new(),
            };
            let st = &mut state;
            let len = scan(&seg.file.clone(), id, 0, file_len, |at, f| {
                match f {
                    Frame::Snapshot { next_seq, cursors } => {
                        // Records after it have seqs from here on.
                        seg.first_seq = seg.first_seq.min(next_seq);
                        st.next_seq = st.next_seq.max(next_seq);
                        st.cursors = own_pairs(&cursors);
                    }
                    Frame::Append {
                        first_seq,
                        records,
                        cursors,
                    } => {
                        let n = records.len() as u64;
                        st.next_seq = st.next_seq.max(first_seq + n);
                        seg.note_append(first_seq, n, at);
                        st.cursors.extend(own_pairs(&cursors));
                    }
                    Frame::Removed { first, last } => st.removed.insert(first, last),
                    Frame::CursorRemoved { key } => {
                        st.cursors.remove(&*String::from_utf8_lossy(key));
                    }
                }
                true
            })?;
            if len < file_len {
                // Old bytes of a reused file, or a write a crash cut short:
                // either way nothing acknowledged (synced) is there.
                tracing::debug!(
                    segment = %path.display(),
                    ignored_bytes = file_len - len,
                    "Outbox log segment read up to its first frame that does not check out."
                );
            }
            seg.len = len;
            if seg.first_seq == u64::MAX {
                // Not even its snapshot survived: it holds nothing.
                seg.first_seq = state.next_seq;
            }
            state.segments.push_back(seg);
        }
        // Pass 2: what is live, now that every removal is known.
        for seg in state.segments.iter_mut() {
            let (removed, mut live, mut bytes) = (&state.removed, 0u64, 0u64);
            scan(&seg.file, seg.id, 0, seg.len, |_, f| {
                if let Frame::Append {
                    first_seq, records, ..
                } = f
                {
                    for (i, r) in records.iter().enumerate() {
                        if !removed.contains(first_seq + i as u64) {
                            live += 1;
                            bytes += record_cost(r.len());
                        }
                    }
                }
                true
            })?;
            seg.live = live;
            state.records += live;
            state.bytes += bytes;
        }
        let log = RecordLog {
            dir: dir.to_owned(),
            segment_bytes,
            state: Mutex::new(state),
        };
        {
            let mut st = log.lock();
            log.roll(&mut st)?;
            log.delete_dead_segments(&mut st);
        }
        Ok(log)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic mid-update leaves plain numbers and maps; still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Closes the active segment (synced) and starts a new one with a snapshot.
    fn roll(&self, st: &mut State) -> Result<(), OutboxError> {
        if let Some(active) = st.segments.back() {
            active.file.sync_data()?;
        }
        let id = st.next_segment;
        let path = segment_path(&self.dir, id);
        let reused = st.has_spare && std::fs::rename(self.dir.join(SPARE), &path).is_ok();
        st.has_spare = false;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(!reused)
            .open(&path)?;
        let mut payload = st.next_seq.to_le_bytes().to_vec();
        put_pairs(
            &mut payload,
            st.cursors.iter().map(|(k, v)| (k.as_bytes(), v.as_slice())),
        );
        let mut buf = Vec::with_capacity(HEADER + payload.len());
        frame(&mut buf, id, SNAPSHOT, &payload);
        file.write_all_at(&buf, 0)?;
        file.sync_data()?;
        sync_dir(&self.dir)?;
        st.next_segment = id + 1;
        st.segments.push_back(Segment {
            id,
            file: Arc::new(file),
            len: buf.len() as u64,
            base: buf.len() as u64,
            first_seq: st.next_seq,
            live: 0,
            index: Vec::new(),
        });
        Ok(())
    }

    /// Writes frames (built by `build` for the active segment's id) at the end
    /// of the active segment, closing it first when it is full. Returns the
    /// offset they were written at.
    fn write(&self, st: &mut State, build: impl Fn(u64, &mut Vec<u8>)) -> Result<u64, OutboxError> {
        let mut buf = Vec::new();
        let active = st.segments.back().map_or(0, |s| s.id);
        build(active, &mut buf);
        let full = st
            .segments
            .back()
            .is_none_or(|s| s.len + buf.len() as u64 > self.segment_bytes && s.len > s.base);
        if full {
            self.roll(st)?;
            buf.clear();
            build(st.segments.back().map_or(0, |s| s.id), &mut buf);
        }
        let Some(seg) = st.segments.back_mut() else {
            return Err(OutboxError::Io(io::Error::other("no active segment")));
        };
        let at = seg.len;
        seg.file.write_all_at(&buf, at)?;
        seg.len += buf.len() as u64;
        st.written += 1;
        Ok(at)
    }

    /// Appends records under the next sequence numbers, and `cursors`, in one
    /// frame. When they do not fit under `cap`: `evict` removes the oldest
    /// live records first (in the same write), otherwise nothing is written.
    pub(super) fn append(
        &self,
        records: &[Vec<u8>],
        cursors: &[(&str, &[u8])],
        cap: u64,
        evict: bool,
    ) -> Result<AppendOutcome, OutboxError> {
        let needed: u64 = records.iter().map(|r| record_cost(r.len())).sum();
        if needed > cap {
            return Err(OutboxError::TooBigForOutbox { needed, cap });
        }
        let mut st = self.lock();
        let mut evicted = Vec::new();
        let mut dropped = 0u64;
        if st.bytes + needed > cap {
            if !evict {
                return Err(OutboxError::Full {
                    used: st.bytes,
                    cap,
                    needed,
                });
            }
            let excess = st.bytes + needed - cap;
            (evicted, dropped) = self.oldest_live(&st, excess)?;
        }
        let first_seq = st.next_seq;
        let payload = append_payload(first_seq, records, cursors);
        let at = self.write(&mut st, |seg, buf| {
            frame(buf, seg, APPEND, &payload);
            for &(first, last) in &evicted {
                frame(buf, seg, REMOVED, &removed_payload(first, last));
            }
        })?;
        let n = records.len() as u64;
        note_append(&mut st, first_seq, records, cursors, at);
        for &(first, last) in &evicted {
            self.mark_removed(&mut st, first, last)?;
        }
        self.delete_dead_segments(&mut st);
        Ok(AppendOutcome {
            seqs: (n > 0).then(|| (first_seq, first_seq + n - 1)),
            dropped,
        })
    }

    /// Appends records under the sequence numbers they already have (moving an
    /// older outbox here). `first_seq` must be at least the log's next seq.
    pub(super) fn import(
        &self,
        first_seq: u64,
        records: &[Vec<u8>],
        cursors: &[(&str, &[u8])],
    ) -> Result<(), OutboxError> {
        let mut st = self.lock();
        if first_seq < st.next_seq {
            return Err(OutboxError::Corrupt {
                seq: first_seq,
                detail: format!("imported below the next sequence number {}", st.next_seq),
            });
        }
        let payload = append_payload(first_seq, records, cursors);
        let at = self.write(&mut st, |seg, buf| frame(buf, seg, APPEND, &payload))?;
        note_append(&mut st, first_seq, records, cursors, at);
        Ok(())
    }

    /// Makes every write so far durable: one `fdatasync` of the active
    /// segment (older ones were synced when they closed), skipped when
    /// nothing was written since the last one.
    pub(super) fn sync(&self) -> Result<Synced, OutboxError> {
        let (file, generation, next_seq) = {
            let st = self.lock();
            let next_seq = st.next_seq;
            if st.written == st.synced {
                return Ok(Synced { next_seq });
            }
            let file = st.segments.back().map(|s| s.file.clone());
            (file, st.written, next_seq)
        };
        // Outside the lock: appends go on while the disk works.
        if let Some(file) = file {
            file.sync_data()?;
        }
        let mut st = self.lock();
        st.synced = st.synced.max(generation);
        Ok(Synced { next_seq })
    }

    /// The live records with seq in `from..end`, in order: up to
    /// `max_records` and about `max_bytes` (at least one if any).
    pub(super) fn read(
        &self,
        from: u64,
        end: u64,
        max_records: usize,
        max_bytes: u64,
    ) -> Result<Vec<(u64, Vec<u8>)>, OutboxError> {
        let mut out = Vec::new();
        let mut bytes = 0u64;
        let st = self.lock();
        for seg in &st.segments {
            if seg.live == 0 {
                continue;
            }
            let mut done = false;
            scan(&seg.file, seg.id, seg.offset_for(from), seg.len, |_, f| {
                let Frame::Append {
                    first_seq, records, ..
                } = f
                else {
                    return true;
                };
                for (i, r) in records.iter().enumerate() {
                    let seq = first_seq + i as u64;
                    if seq < from || st.removed.contains(seq) {
                        continue;
                    }
                    let cost = record_cost(r.len());
                    if seq >= end
                        || (!out.is_empty()
                            && (out.len() >= max_records || bytes + cost > max_bytes))
                    {
                        done = true;
                        return false;
                    }
                    bytes += cost;
                    out.push((seq, r.to_vec()));
                }
                true
            })?;
            if done {
                break;
            }
        }
        Ok(out)
    }

    /// Removes records `first..=last` (those still live) and returns how many.
    pub(super) fn remove(&self, first: u64, last: u64) -> Result<u64, OutboxError> {
        if first > last {
            return Ok(0);
        }
        let mut st = self.lock();
        let n = self.mark_removed(&mut st, first, last)?;
        if n > 0 {
            self.write(&mut st, |seg, buf| {
                frame(buf, seg, REMOVED, &removed_payload(first, last))
            })?;
            self.delete_dead_segments(&mut st);
        }
        Ok(n)
    }

    /// Counts live records in `first..=last` out of the counters and marks
    /// them removed (in memory; the caller writes the frame).
    fn mark_removed(&self, st: &mut State, first: u64, last: u64) -> Result<u64, OutboxError> {
        let (mut n, mut freed) = (0u64, 0u64);
        let State {
            segments, removed, ..
        } = st;
        for seg in segments.iter_mut() {
            if seg.live == 0 || seg.first_seq > last {
                continue;
            }
            let mut gone = 0u64;
            scan(&seg.file, seg.id, seg.offset_for(first), seg.len, |_, f| {
                if let Frame::Append {
                    first_seq, records, ..
                } = f
                {
                    if first_seq > last {
                        return false;
                    }
                    for (j, r) in records.iter().enumerate() {
                        let seq = first_seq + j as u64;
                        if (first..=last).contains(&seq) && !removed.contains(seq) {
                            gone += 1;
                            freed += record_cost(r.len());
                        }
                    }
                }
                true
            })?;
            seg.live -= gone.min(seg.live);
            n += gone;
        }
        removed.insert(first, last);
        st.records = st.records.saturating_sub(n);
        st.bytes = st.bytes.saturating_sub(freed);
        Ok(n)
    }

    /// The oldest live records whose cost adds up to at least `excess`, as
    /// seq ranges, and how many they are.
    fn oldest_live(&self, st: &State, excess: u64) -> Result<(Vec<(u64, u64)>, u64), OutboxError> {
        let mut ranges: Vec<(u64, u64)> = Vec::new();
        let (mut n, mut freed) = (0u64, 0u64);
        for seg in &st.segments {
            if freed >= excess {
                break;
            }
            if seg.live == 0 {
                continue;
            }
            scan(&seg.file, seg.id, 0, seg.len, |_, f| {
                if let Frame::Append {
                    first_seq, records, ..
                } = f
                {
                    for (j, r) in records.iter().enumerate() {
                        if freed >= excess {
                            return false;
                        }
                        let seq = first_seq + j as u64;
                        if st.removed.contains(seq) {
                            continue;
                        }
                        n += 1;
                        freed += record_cost(r.len());
                        match ranges.last_mut() {
                            Some((_, last)) if *last + 1 == seq => *last = seq,
                            _ => ranges.push((seq, seq)),
                        }
                    }
                }
                true
            })?;
        }
        Ok((ranges, n))
    }

    /// Deletes closed segments from the front while none of their records is
    /// live. Not synced: a deletion lost in a crash only brings back records
    /// whose removal is recorded in later segments, or that are sent again.
    fn delete_dead_segments(&self, st: &mut State) {
        while st.segments.len() > 1 && st.segments.front().is_some_and(|s| s.live == 0) {
            let Some(seg) = st.segments.pop_front() else {
                break;
            };
            let path = segment_path(&self.dir, seg.id);
            if !st.has_spare && std::fs::rename(&path, self.dir.join(SPARE)).is_ok() {
                st.has_spare = true;
                continue;
            }
            if let Err(e) = std::fs::remove_file(&path) {
                tracing::warn!(error = %e, segment = seg.id, "Cannot delete an outbox log segment; it is retried after a restart.");
            }
        }
        if let Some(front) = st.segments.front() {
            let first = front.first_seq;
            st.removed.prune_below(first);
        }
    }

    /// Stores the source cursor removal (durable with the next sync).
    pub(super) fn remove_cursor(&self, key: &str) -> Result<(), OutboxError> {
        let mut st = self.lock();
        if st.cursors.remove(key).is_some() {
            let mut payload = Vec::new();
            put_bytes(&mut payload, key.as_bytes());
            self.write(&mut st, |seg, buf| {
                frame(buf, seg, CURSOR_REMOVED, &payload)
            })?;
        }
        Ok(())
    }

    pub(super) fn cursor(&self, key: &str) -> Option<Vec<u8>> {
        self.lock().cursors.get(key).cloned()
    }

    /// Cursors whose key starts with `prefix`, in key order.
    pub(super) fn cursors(&self, prefix: &str) -> Vec<(String, Vec<u8>)> {
        self.lock()
            .cursors
            .range(prefix.to_owned()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// (live records, their cost, next seq).
    pub(super) fn counts(&self) -> (u64, u64, u64) {
        let st = self.lock();
        (st.records, st.bytes, st.next_seq)
    }

    /// The active segment's path, valid length and snapshot length.
    #[cfg(test)]
    pub(super) fn active_segment(&self) -> (PathBuf, u64, u64) {
        let st = self.lock();
        let seg = st
            .segments
            .back()
            .expect("an open log has an active segment");
        (segment_path(&self.dir, seg.id), seg.len, seg.base)
    }

    /// Segment files, and bytes of valid frames in them.
    pub(super) fn footprint(&self) -> (usize, u64) {
        let st = self.lock();
        (st.segments.len(), st.segments.iter().map(|s| s.len).sum())
    }
}

/// Counts an append frame written at `at` of the active segment.
fn note_append(
    st: &mut State,
    first_seq: u64,
    records: &[Vec<u8>],
    cursors: &[(&str, &[u8])],
    at: u64,
) {
    let n = records.len() as u64;
    if let Some(seg) = st.segments.back_mut() {
        seg.note_append(first_seq, n, at);
        seg.live += n;
    }
    st.next_seq = first_seq + n;
    st.records += n;
    st.bytes += records.iter().map(|r| record_cost(r.len())).sum::<u64>();
    for (k, v) in cursors {
        st.cursors.insert((*k).to_owned(), v.to_vec());
    }
}

fn removed_payload(first: u64, last: u64) -> Vec<u8> {
    let mut p = first.to_le_bytes().to_vec();
    p.extend_from_slice(&last.to_le_bytes());
    p
}

fn own_pairs(pairs: &[(&[u8], &[u8])]) -> BTreeMap<String, Vec<u8>> {
    pairs
        .iter()
        .map(|(k, v)| (String::from_utf8_lossy(k).into_owned(), v.to_vec()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(i: u64) -> Vec<u8> {
        format!("record {i:05}").into_bytes()
    }

    fn seg_files(dir: &Path) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "seg"))
            .collect();
        v.sort();
        v
    }

    fn all(log: &RecordLog) -> Vec<(u64, Vec<u8>)> {
        log.read(0, u64::MAX, usize::MAX, u64::MAX).unwrap()
    }

    #[test]
    fn range_set_merges_touching_ranges_and_prunes_below_a_point() {
        let mut s = RangeSet::default();
        s.insert(5, 7);
        s.insert(10, 12);
        s.insert(8, 9); // touches both
        assert_eq!(s.0.iter().collect::<Vec<_>>(), vec![(&5, &12)]);
        s.insert(20, 20);
        s.insert(1, 30); // swallows everything
        assert_eq!(s.0.iter().collect::<Vec<_>>(), vec![(&1, &30)]);
        assert!(s.contains(1) && s.contains(30) && !s.contains(31) && !s.contains(0));
        s.prune_below(10);
        assert_eq!(s.0.iter().collect::<Vec<_>>(), vec![(&10, &30)]);
        s.prune_below(31);
        assert!(s.0.is_empty());
    }

    #[test]
    fn every_cut_of_the_unsynced_tail_keeps_the_whole_frames_before_it() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        let mut ends = Vec::new(); // (file length after the frame, records so far)
        {
            let log = RecordLog::open(&src, 1 << 20).unwrap();
            let file = seg_files(&src).pop().unwrap();
            for i in 0..6u64 {
                let records: Vec<Vec<u8>> = (0..3).map(|j| rec(i * 3 + j)).collect();
                log.append(&records, &[("c", b"v")], u64::MAX, false)
                    .unwrap();
                ends.push((std::fs::metadata(&file).unwrap().len(), (i + 1) * 3));
            }
            log.sync().unwrap();
        }
        let file = seg_files(&src).pop().unwrap();
        let full = std::fs::read(&file).unwrap();
        let start = ends[0].0 - 1;
        for cut in start..=full.len() as u64 {
            let dst = dir.path().join(format!("cut{cut}"));
            std::fs::create_dir(&dst).unwrap();
            std::fs::write(dst.join(file.file_name().unwrap()), &full[..cut as usize]).unwrap();
            let log = RecordLog::open(&dst, 1 << 20).unwrap();
            let whole = ends.iter().rfind(|(end, _)| *end <= cut);
            let n = whole.map_or(0, |&(_, n)| n);
            let got = all(&log);
            assert_eq!(got.len() as u64, n, "cut at {cut}");
            assert_eq!(got, (0..n).map(|i| (i + 1, rec(i))).collect::<Vec<_>>());
            assert_eq!(log.counts(), (n, n * record_cost(12), n + 1));
            // New writes go to a new segment, never after the torn bytes.
            let out = log.append(&[rec(99)], &[], u64::MAX, false).unwrap();
            assert_eq!(out.seqs, Some((n + 1, n + 1)));
            log.sync().unwrap();
            drop(log);
            let log = RecordLog::open(&dst, 1 << 20).unwrap();
            assert_eq!(all(&log).len() as u64, n + 1, "cut at {cut}, reopened");
        }
    }

    #[test]
    fn a_flipped_bit_ends_the_segment_at_that_frame() {
        let dir = tempfile::tempdir().unwrap();
        let middle;
        {
            let log = RecordLog::open(dir.path(), 1 << 20).unwrap();
            let file = seg_files(dir.path()).pop().unwrap();
            log.append(&[rec(0)], &[], u64::MAX, false).unwrap();
            middle = std::fs::metadata(&file).unwrap().len() + HEADER as u64 + 2;
            log.append(&[rec(1)], &[], u64::MAX, false).unwrap();
            log.append(&[rec(2)], &[], u64::MAX, false).unwrap();
            log.sync().unwrap();
        }
        let file = seg_files(dir.path()).pop().unwrap();
        let mut bytes = std::fs::read(&file).unwrap();
        bytes[middle as usize] ^= 0x10;
        std::fs::write(&file, bytes).unwrap();
        let log = RecordLog::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(all(&log), vec![(1, rec(0))]);
    }

    #[test]
    fn a_frame_from_another_segment_does_not_pass_for_one_of_this_one() {
        let dir = tempfile::tempdir().unwrap();
        {
            let log = RecordLog::open(dir.path(), 1 << 20).unwrap();
            log.append(&[rec(0)], &[], u64::MAX, false).unwrap();
            log.sync().unwrap();
        }
        // The same bytes under a later segment id: every CRC fails.
        let file = seg_files(dir.path()).pop().unwrap();
        std::fs::rename(&file, segment_path(dir.path(), 7)).unwrap();
        let log = RecordLog::open(dir.path(), 1 << 20).unwrap();
        assert!(all(&log).is_empty());
        assert_eq!(log.counts(), (0, 0, 1));
    }

    #[test]
    fn segments_roll_and_go_once_their_records_are_removed_and_cursors_stay() {
        let dir = tempfile::tempdir().unwrap();
        let log = RecordLog::open(dir.path(), 1024).unwrap();
        for i in 0..200u64 {
            let key = format!("k{}", i % 3);
            log.append(&[rec(i)], &[(&key, &i.to_le_bytes())], u64::MAX, false)
                .unwrap();
        }
        log.sync().unwrap();
        let before = seg_files(dir.path()).len();
        assert!(before > 5, "{before} segments");
        assert_eq!(log.remove(1, 190).unwrap(), 190);
        assert_eq!(log.remove(1, 190).unwrap(), 0, "removing twice counts once");
        let after = seg_files(dir.path()).len();
        assert!(after <= 2, "{after} segments left of {before}");
        assert!(
            dir.path().join(SPARE).exists(),
            "a dead segment is kept for reuse"
        );
        assert_eq!(log.counts(), (10, 10 * record_cost(12), 201));
        log.sync().unwrap();
        drop(log);
        let log = RecordLog::open(dir.path(), 1024).unwrap();
        assert_eq!(log.counts(), (10, 10 * record_cost(12), 201));
        assert_eq!(
            all(&log),
            (190..200).map(|i| (i + 1, rec(i))).collect::<Vec<_>>()
        );
        // The newest cursor of each key survived the deleted segments.
        assert_eq!(log.cursor("k0"), Some(198u64.to_le_bytes().to_vec()));
        assert_eq!(log.cursor("k1"), Some(199u64.to_le_bytes().to_vec()));
        assert_eq!(log.cursor("k2"), Some(197u64.to_le_bytes().to_vec()));
        log.remove_cursor("k1").unwrap();
        log.sync().unwrap();
        drop(log);
        let log = RecordLog::open(dir.path(), 1024).unwrap();
        assert_eq!(log.cursors("k").len(), 2);
        assert_eq!(log.cursor("k1"), None);
    }

    #[test]
    fn a_dead_segment_is_reused_and_written_over_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let log = RecordLog::open(dir.path(), 1024).unwrap();
        let mut seq = 1;
        // Fill and empty segments until a spare has been taken into use.
        let reused = loop {
            log.append(&[rec(seq)], &[], u64::MAX, false).unwrap();
            log.remove(seq, seq).unwrap();
            seq += 1;
            let (path, len, _) = log.active_segment();
            let on_disk = std::fs::metadata(&path).unwrap().len();
            if on_disk > len {
                break (path, on_disk);
            }
            assert!(seq < 1000, "no segment was reused");
        };
        // Appends within the old size change neither the size nor the reads.
        log.append(&[rec(5000)], &[], u64::MAX, false).unwrap();
        log.sync().unwrap();
        let (path, _, _) = log.active_segment();
        assert_eq!(path, reused.0);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), reused.1);
        drop(log);
        let log = RecordLog::open(dir.path(), 1024).unwrap();
        assert_eq!(all(&log), vec![(seq, rec(5000))]);
    }

    #[test]
    fn eviction_removes_the_oldest_records_and_survives_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let cap = 10 * record_cost(12);
        let log = RecordLog::open(dir.path(), 1024).unwrap();
        let mut dropped = 0;
        for i in 0..25u64 {
            dropped += log.append(&[rec(i)], &[], cap, true).unwrap().dropped;
        }
        assert_eq!(dropped, 15);
        assert!(matches!(
            log.append(&[rec(0)], &[], cap, false),
            Err(OutboxError::Full { .. })
        ));
        assert!(matches!(
            log.append(&vec![rec(0); 11], &[], cap, true),
            Err(OutboxError::TooBigForOutbox { .. })
        ));
        log.sync().unwrap();
        drop(log);
        let log = RecordLog::open(dir.path(), 1024).unwrap();
        assert_eq!(
            all(&log),
            (15..25).map(|i| (i + 1, rec(i))).collect::<Vec<_>>()
        );
        assert_eq!(log.counts().1, cap);
    }
}
