//! Block1 reassembly (RFC 7959 §2.5, atomic requests): the blocks of one large
//! POST are collected per key (the caller's: endpoint, path and Request-Tag)
//! until the last one arrives.
//!
//! Bounds: at most `max_transfers` transfers at once, each at most
//! `max_bytes` long. A transfer idle for `timeout` is dropped. When the table
//! is full, a new transfer is refused (the caller answers 5.03); transfers
//! under way are never evicted for a newcomer.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

use protocol::PayloadFormat;

/// One Block1 option, decoded: block number, more flag, size exponent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Block {
    pub num: u32,
    pub more: bool,
    /// 0..=6: the block size is `16 << szx` (7 is reserved).
    pub szx: u8,
}

impl Block {
    pub fn size(self) -> usize {
        16usize << self.szx.min(6)
    }

    /// Decodes an option value (0 to 3 bytes, RFC 7959 §2.2).
    pub fn decode(value: &[u8]) -> Result<Block, &'static str> {
        if value.len() > 3 {
            return Err("the Block1 option is longer than 3 bytes");
        }
        let v = value.iter().fold(0u32, |acc, b| (acc << 8) | u32::from(*b));
        let szx = (v & 0x7) as u8;
        if szx == 7 {
            return Err("Block1 size exponent 7 is reserved");
        }
        Ok(Block {
            num: v >> 4,
            more: v & 0x8 != 0,
            szx,
        })
    }

    /// Encodes the option value (shortest form).
    pub fn encode(self) -> Vec<u8> {
        let v = (self.num << 4) | (u32::from(self.more) << 3) | u32::from(self.szx & 0x7);
        let bytes = v.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        bytes[skip..].to_vec()
    }
}

/// What became of one block.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Stored; ask for the next block (2.31 Continue).
    Continue,
    /// A block already stored came again (a new Message ID): answer 2.31 again.
    Repeated,
    /// The last block: the whole payload, with the first block's format and device.
    Complete {
        payload: Vec<u8>,
        format: PayloadFormat,
        device: Option<String>,
    },
    /// 4.08 Request Entity Incomplete: a block out of order, or no transfer
    /// (it was never started, timed out or was dropped).
    Incomplete,
    /// 4.13: the payload passed `max_bytes`; the transfer is dropped.
    TooLarge,
    /// 4.00: a non-final block whose size is not the block size.
    BadSize,
    /// 5.03: no room for another transfer.
    Full,
}

#[derive(Debug)]
struct Transfer {
    data: Vec<u8>,
    format: PayloadFormat,
    device: Option<String>,
    /// Where the last stored block started (to recognise its repetition).
    last_offset: usize,
    touched: Instant,
}

#[derive(Debug)]
pub struct Reassembly<K> {
    transfers: HashMap<K, Transfer>,
    max_transfers: usize,
    max_bytes: usize,
    timeout: Duration,
}

impl<K: Clone + Eq + Hash> Reassembly<K> {
    pub fn new(max_transfers: usize, max_bytes: usize, timeout: Duration) -> Self {
        Reassembly {
            transfers: HashMap::new(),
            max_transfers: max_transfers.max(1),
            max_bytes,
            timeout,
        }
    }

    pub fn len(&self) -> usize {
        self.transfers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.transfers.is_empty()
    }

    /// Bytes held in all transfers.
    pub fn bytes(&self) -> usize {
        self.transfers.values().map(|t| t.data.len()).sum()
    }

    /// Drops transfers idle for longer than the timeout.
    pub fn purge(&mut self, now: Instant) {
        let timeout = self.timeout;
        self.transfers
            .retain(|_, t| now.saturating_duration_since(t.touched) < timeout);
    }

    /// Feeds one block. `format` and `device` are taken from block 0.
    pub fn feed(
        &mut self,
        key: &K,
        block: Block,
        payload: &[u8],
        format: PayloadFormat,
        device: Option<String>,
        now: Instant,
    ) -> Step {
        self.purge(now);
        let size = block.size();
        if block.more && payload.len() != size {
            self.transfers.remove(key);
            return Step::BadSize;
        }
        let Some(offset) = usize::try_from(block.num)
            .ok()
            .and_then(|n| n.checked_mul(size))
        else {
            self.transfers.remove(key);
            return Step::TooLarge;
        };
        if block.num == 0 {
            if !self.transfers.contains_key(key) && self.transfers.len() >= self.max_transfers {
                return Step::Full;
            }
            if payload.len() > self.max_bytes {
                self.transfers.remove(key);
                return Step::TooLarge;
            }
            if !block.more {
                self.transfers.remove(key);
                return Step::Complete {
                    payload: payload.to_vec(),
                    format,
                    device,
                };
            }
            self.transfers.insert(
                key.clone(),
                Transfer {
                    data: payload.to_vec(),
                    format,
                    device,
                    last_offset: 0,
                    touched: now,
                },
            );
            return Step::Continue;
        }
        let Some(t) = self.transfers.get_mut(key) else {
            return Step::Incomplete;
        };
        if offset == t.last_offset && t.data.len() == offset + payload.len() && block.more {
            t.touched = now;
            return Step::Repeated;
        }
        if offset != t.data.len() {
            self.transfers.remove(key);
            return Step::Incomplete;
        }
        if offset.saturating_add(payload.len()) > self.max_bytes {
            self.transfers.remove(key);
            return Step::TooLarge;
        }
        t.data.extend_from_slice(payload);
        t.last_offset = offset;
        t.touched = now;
        if block.more {
            return Step::Continue;
        }
        match self.transfers.remove(key) {
            Some(t) => Step::Complete {
                payload: t.data,
                format: t.format,
                device: t.device,
            },
            None => Step::Incomplete,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const F: PayloadFormat = PayloadFormat::SenmlJson;

    fn b(num: u32, more: bool, szx: u8) -> Block {
        Block { num, more, szx }
    }

    #[test]
    fn block_options_round_trip_and_szx_7_is_refused() {
        for block in [
            b(0, true, 2),
            b(1, false, 6),
            b(4095, true, 0),
            b(1 << 19, false, 3),
        ] {
            assert_eq!(Block::decode(&block.encode()), Ok(block));
        }
        assert_eq!(Block::decode(&[]), Ok(b(0, false, 0)));
        assert_eq!(b(0, false, 0).encode(), Vec::<u8>::new());
        assert_eq!(b(1, true, 2).encode(), vec![0x1a]);
        assert!(Block::decode(&[0x07]).is_err());
        assert!(Block::decode(&[1, 2, 3, 4]).is_err());
        assert_eq!(b(0, true, 6).size(), 1024);
    }

    #[test]
    fn blocks_in_order_reassemble_the_payload() {
        let t = Instant::now();
        let mut r: Reassembly<u8> = Reassembly::new(4, 1000, Duration::from_secs(60));
        assert_eq!(
            r.feed(&1, b(0, true, 0), &[1; 16], F, Some("d".into()), t),
            Step::Continue
        );
        assert_eq!(
            r.feed(&1, b(1, true, 0), &[2; 16], PayloadFormat::Json, None, t),
            Step::Continue
        );
        assert_eq!(r.bytes(), 32);
        let done = r.feed(&1, b(2, false, 0), &[3; 5], PayloadFormat::Json, None, t);
        let mut want = vec![1; 16];
        want.extend([2; 16]);
        want.extend([3; 5]);
        assert_eq!(
            done,
            Step::Complete {
                payload: want,
                format: F,
                device: Some("d".into())
            },
            "format and device come from block 0"
        );
        assert!(r.is_empty());
    }

    #[test]
    fn a_repeated_block_is_recognised_and_a_gap_is_incomplete() {
        let t = Instant::now();
        let mut r: Reassembly<u8> = Reassembly::new(4, 1000, Duration::from_secs(60));
        r.feed(&1, b(0, true, 0), &[1; 16], F, None, t);
        r.feed(&1, b(1, true, 0), &[2; 16], F, None, t);
        assert_eq!(
            r.feed(&1, b(1, true, 0), &[2; 16], F, None, t),
            Step::Repeated
        );
        assert_eq!(r.bytes(), 32, "not appended twice");
        assert_eq!(
            r.feed(&1, b(3, true, 0), &[4; 16], F, None, t),
            Step::Incomplete
        );
        assert!(r.is_empty(), "a gap drops the transfer");
        assert_eq!(
            r.feed(&1, b(1, false, 0), &[2; 3], F, None, t),
            Step::Incomplete
        );
    }

    #[test]
    fn the_size_limit_gives_too_large_and_drops_the_transfer() {
        let t = Instant::now();
        let mut r: Reassembly<u8> = Reassembly::new(4, 40, Duration::from_secs(60));
        r.feed(&1, b(0, true, 0), &[0; 16], F, None, t);
        r.feed(&1, b(1, true, 0), &[0; 16], F, None, t);
        assert_eq!(
            r.feed(&1, b(2, true, 0), &[0; 16], F, None, t),
            Step::TooLarge
        );
        assert!(r.is_empty());
        assert_eq!(
            r.feed(&2, b(0, false, 6), &[0; 41], F, None, t),
            Step::TooLarge
        );
        // A huge block number cannot overflow or allocate.
        assert_eq!(
            r.feed(&3, b(u32::MAX >> 4, false, 6), &[0; 1], F, None, t),
            Step::Incomplete
        );
    }

    #[test]
    fn a_wrong_block_size_is_refused() {
        let t = Instant::now();
        let mut r: Reassembly<u8> = Reassembly::new(4, 1000, Duration::from_secs(60));
        assert_eq!(
            r.feed(&1, b(0, true, 1), &[0; 16], F, None, t),
            Step::BadSize
        );
        assert!(r.is_empty());
    }

    #[test]
    fn transfers_are_bounded_and_time_out() {
        let t = Instant::now();
        let mut r: Reassembly<u8> = Reassembly::new(2, 1000, Duration::from_secs(60));
        assert_eq!(
            r.feed(&1, b(0, true, 0), &[0; 16], F, None, t),
            Step::Continue
        );
        assert_eq!(
            r.feed(&2, b(0, true, 0), &[0; 16], F, None, t),
            Step::Continue
        );
        assert_eq!(r.feed(&3, b(0, true, 0), &[0; 16], F, None, t), Step::Full);
        assert_eq!(r.len(), 2, "the transfers under way are kept");
        // Restarting a known transfer is allowed even when full.
        assert_eq!(
            r.feed(&1, b(0, true, 0), &[9; 16], F, None, t),
            Step::Continue
        );
        let later = t + Duration::from_secs(61);
        assert_eq!(
            r.feed(&3, b(0, true, 0), &[0; 16], F, None, later),
            Step::Continue,
            "the idle ones timed out"
        );
        assert_eq!(r.len(), 1);
        assert_eq!(
            r.feed(&1, b(1, true, 0), &[0; 16], F, None, later),
            Step::Incomplete
        );
    }
}
