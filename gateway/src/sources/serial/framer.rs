//! A line framer without I/O: bytes in, complete lines out, memory bounded.
//!
//! - A line ends at `\n` or at `\r`, so LF, CRLF and bare-CR devices all work;
//!   the empty "line" between the `\r` and `\n` of a CRLF (and any blank line)
//!   is skipped.
//! - At most `max_line` bytes are buffered. A line that grows past that is
//!   **discarded up to its terminator**: its first `max_line` bytes are kept
//!   (for the quarantine entry), the rest are counted and dropped, and the line
//!   is reported once, as [`Frame::TooLong`], when its terminator arrives.
//!   The buffer never grows past `max_line`, however long the line.
//! - [`LineFramer::reset`] (after the device is lost) hands back the partial
//!   line, if any: its terminator will never come.

/// What the framer found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    /// One complete line, without its terminator (never empty).
    Line(Vec<u8>),
    /// A line longer than the limit: its first `max_line` bytes and its full length.
    TooLong { prefix: Vec<u8>, len: usize },
}

/// Splits a byte stream into lines; see the module docs.
#[derive(Debug)]
pub struct LineFramer {
    buf: Vec<u8>,
    max_line: usize,
    /// Bytes of the current line beyond `buf` (while discarding an over-long line).
    overflow: usize,
}

impl LineFramer {
    /// A framer that keeps at most `max_line` bytes (at least 1).
    pub fn new(max_line: usize) -> Self {
        let max_line = max_line.max(1);
        LineFramer {
            buf: Vec::with_capacity(max_line.min(4096)),
            max_line,
            overflow: 0,
        }
    }

    /// The limit this framer enforces.
    pub fn max_line(&self) -> usize {
        self.max_line
    }

    /// Bytes currently held (never more than `max_line`).
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Consumes bytes from the front of `input` until one frame is complete,
    /// and returns it; `None` once `input` is empty with no frame complete
    /// (the partial line stays buffered for the next call).
    pub fn next_frame(&mut self, input: &mut &[u8]) -> Option<Frame> {
        loop {
            let data: &[u8] = input;
            let Some(pos) = data.iter().position(|&b| b == b'\n' || b == b'\r') else {
                break;
            };
            let (head, rest) = data.split_at(pos);
            self.take(head);
            *input = &rest[1..];
            if let Some(frame) = self.finish_line() {
                return Some(frame);
            }
        }
        let all = std::mem::take(input);
        self.take(all);
        None
    }

    /// Drops the partial line (the device went away) and returns it, if any.
    pub fn reset(&mut self) -> Option<Frame> {
        self.finish_line()
    }

    fn take(&mut self, bytes: &[u8]) {
        let room = self.max_line - self.buf.len();
        let kept = bytes.len().min(room);
        self.buf.extend_from_slice(&bytes[..kept]);
        self.overflow = self.overflow.saturating_add(bytes.len() - kept);
    }

    fn finish_line(&mut self) -> Option<Frame> {
        if self.buf.is_empty() && self.overflow == 0 {
            return None;
        }
        let line = std::mem::replace(&mut self.buf, Vec::with_capacity(self.max_line.min(4096)));
        let overflow = std::mem::take(&mut self.overflow);
        Some(if overflow == 0 {
            Frame::Line(line)
        } else {
            Frame::TooLong {
                len: line.len().saturating_add(overflow),
                prefix: line,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn frames(framer: &mut LineFramer, chunks: &[&[u8]]) -> Vec<Frame> {
        let mut out = Vec::new();
        for chunk in chunks {
            let mut input = *chunk;
            while let Some(f) = framer.next_frame(&mut input) {
                out.push(f);
            }
            assert!(input.is_empty());
        }
        out
    }

    fn line(s: &str) -> Frame {
        Frame::Line(s.as_bytes().to_vec())
    }

    #[test]
    fn lf_crlf_and_cr_all_end_lines_and_blank_lines_are_skipped() {
        let mut f = LineFramer::new(64);
        let out = frames(&mut f, &[b"a,1\nb,2\r\nc,3\rd,4\n\n\r\n\r\re,5"]);
        assert_eq!(
            out,
            vec![line("a,1"), line("b,2"), line("c,3"), line("d,4")]
        );
        assert_eq!(f.buffered(), 3, "e,5 waits for its terminator");
        assert_eq!(f.reset(), Some(line("e,5")));
        assert_eq!(f.reset(), None);
    }

    #[test]
    fn a_line_split_across_reads_is_joined() {
        let mut f = LineFramer::new(64);
        let out = frames(&mut f, &[b"tempe", b"rature,4", b"1.2", b"\r", b"\nx,1\n"]);
        assert_eq!(out, vec![line("temperature,41.2"), line("x,1")]);
    }

    #[test]
    fn an_over_long_line_is_dropped_to_its_newline_and_reported_once_with_its_length() {
        let mut f = LineFramer::new(8);
        let out = frames(
            &mut f,
            &[b"ok,1\n0123456789", b"abcdef", b"ghij\nok,2\n12345678\n"],
        );
        assert_eq!(
            out,
            vec![
                line("ok,1"),
                Frame::TooLong {
                    prefix: b"01234567".to_vec(),
                    len: 20
                },
                line("ok,2"),
                line("12345678"),
            ]
        );
        assert!(f.buffered() == 0);
    }

    proptest! {
        /// Arbitrary bytes split at arbitrary points: never panics, never holds
        /// more than the bound, and gives the same frames as one big read.
        #[test]
        fn arbitrary_bytes_and_splits_give_the_same_bounded_frames(
            data in proptest::collection::vec(
                prop_oneof![Just(b'\n'), Just(b'\r'), any::<u8>(), Just(b'a')], 0..2000),
            cuts in proptest::collection::vec(0usize..2000, 0..20),
            max in 1usize..64,
        ) {
            let mut whole = LineFramer::new(max);
            let expected = frames(&mut whole, &[&data]);
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(data.len())).collect();
            cuts.sort_unstable();
            let mut pieces: Vec<&[u8]> = Vec::new();
            let mut start = 0;
            for c in cuts {
                pieces.push(&data[start..c]);
                start = c;
            }
            pieces.push(&data[start..]);
            let mut split = LineFramer::new(max);
            let mut got = Vec::new();
            for piece in pieces {
                let mut input = piece;
                while let Some(fr) = split.next_frame(&mut input) {
                    got.push(fr);
                }
                prop_assert!(split.buffered() <= max);
            }
            prop_assert_eq!(&got, &expected);
            prop_assert_eq!(split.reset(), whole.reset());
            for fr in &got {
                match fr {
                    Frame::Line(l) => {
                        prop_assert!(!l.is_empty() && l.len() <= max);
                        prop_assert!(!l.contains(&b'\n') && !l.contains(&b'\r'));
                    }
                    Frame::TooLong { prefix, len } => {
                        prop_assert_eq!(prefix.len(), max);
                        prop_assert!(*len > max);
                    }
                }
            }
            // Every non-terminator byte is accounted for exactly once.
            let content = data.iter().filter(|&&b| b != b'\n' && b != b'\r').count();
            let accounted: usize = got.iter().map(|fr| match fr {
                Frame::Line(l) => l.len(),
                Frame::TooLong { len, .. } => *len,
            }).sum::<usize>() + whole_rest_len(&data);
            prop_assert_eq!(accounted, content);
        }
    }

    /// Bytes after the last terminator (the partial line left buffered).
    fn whole_rest_len(data: &[u8]) -> usize {
        let tail = data
            .iter()
            .rposition(|&b| b == b'\n' || b == b'\r')
            .map_or(data, |p| &data[p + 1..]);
        tail.len()
    }
}
