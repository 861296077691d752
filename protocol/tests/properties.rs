//! Property tests: round trips of every codec, and no decoder panics on any input.

use proptest::prelude::*;
use protocol::batch::{BatchLimits, OutboxItem, OutboxRecord, UplinkBatch};
use protocol::{
    DecodeContext, DecodeLimits, PayloadFormat, Quality, Reading, Timestamp, plain, senml,
};

/// A valid device or channel name: 1..=32 non-control characters (at most 128 bytes).
fn name() -> impl Strategy<Value = String> {
    "[^\\p{Cc}]{1,32}"
}

fn finite() -> impl Strategy<Value = f64> {
    any::<f64>().prop_filter("finite", |v| v.is_finite())
}

/// Any valid reading: any instant, any finite value, any quality bits.
fn any_reading() -> impl Strategy<Value = Reading> {
    (
        name(),
        name(),
        any::<i64>(),
        finite(),
        proptest::option::of("[^\\p{Cc}]{1,8}"),
        any::<Option<u64>>(),
        any::<u16>(),
    )
        .prop_map(|(device, channel, ts, value, unit, seq, bits)| Reading {
            device,
            channel,
            ts: Timestamp(ts),
            value,
            unit,
            seq,
            quality: Quality::from_bits_retain(bits),
        })
}

fn any_batch() -> impl Strategy<Value = UplinkBatch> {
    (
        "[a-z0-9-]{1,16}",
        0..u64::MAX / 2,
        proptest::collection::vec((any_reading(), 1..1_000u64), 1..20),
    )
        .prop_map(|(gateway, start, items)| {
            let mut seq = start;
            let records = items
                .into_iter()
                .map(|(r, gap)| {
                    seq += gap;
                    OutboxRecord {
                        seq,
                        item: OutboxItem::Reading(r),
                    }
                })
                .collect();
            UplinkBatch::new(gateway, records).expect("strictly increasing, non-empty")
        })
}

/// Readings SenML can carry: names without `/` or `:` (the device/channel split),
/// millisecond timestamps between 1e9 and 4e9 seconds.
fn senml_reading() -> impl Strategy<Value = Reading> {
    (
        prop::sample::select(vec!["pump-1", "pump-2", "urn.dev.x", "tank_3"]),
        "[A-Za-z0-9_.-]{1,24}",
        1_000_000_000_000i64..4_000_000_000_000,
        finite(),
        proptest::option::of("[A-Za-z%/]{1,8}"),
    )
        .prop_map(|(device, channel, ms, value, unit)| {
            let mut r =
                Reading::new(device, channel, Timestamp::from_millis(ms), value).expect("valid");
            r.unit = unit;
            r
        })
}

fn ctx() -> DecodeContext<'static> {
    DecodeContext::new(Timestamp(1_700_000_000_123_456_789))
}

fn assert_senml_round_trip(sent: &[Reading], got: &[Reading]) -> Result<(), TestCaseError> {
    prop_assert_eq!(sent.len(), got.len());
    for (s, g) in sent.iter().zip(got) {
        prop_assert_eq!(&s.device, &g.device);
        prop_assert_eq!(&s.channel, &g.channel);
        prop_assert_eq!(
            s.value.to_bits(),
            g.value.to_bits(),
            "value {} came back as {}",
            s.value,
            g.value
        );
        prop_assert_eq!(&s.unit, &g.unit);
        prop_assert!(
            (s.ts.0 - g.ts.0).abs() <= 1_000,
            "ts {} came back as {}",
            s.ts.0,
            g.ts.0
        );
        prop_assert_eq!(g.quality, Quality::empty());
    }
    Ok(())
}

#[derive(Clone, Debug)]
enum Mutation {
    Flip(usize, u8),
    Truncate(usize),
    Insert(usize, u8),
}

fn mutations() -> impl Strategy<Value = Vec<Mutation>> {
    proptest::collection::vec(
        prop_oneof![
            (any::<usize>(), 1..=255u8).prop_map(|(i, x)| Mutation::Flip(i, x)),
            any::<usize>().prop_map(Mutation::Truncate),
            (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Insert(i, b)),
        ],
        1..4,
    )
}

fn mutate(mut bytes: Vec<u8>, ms: &[Mutation]) -> Vec<u8> {
    for m in ms {
        match *m {
            Mutation::Flip(i, x) if !bytes.is_empty() => {
                let i = i % bytes.len();
                bytes[i] ^= x;
            }
            Mutation::Truncate(i) => bytes.truncate(i % (bytes.len() + 1)),
            Mutation::Insert(i, b) => bytes.insert(i % (bytes.len() + 1), b),
            Mutation::Flip(..) => {}
        }
    }
    bytes
}

/// Runs every payload decoder; each must return, and whatever it accepts must be valid.
fn decode_everything(bytes: &[u8]) -> Result<(), TestCaseError> {
    let limits = DecodeLimits::default();
    let ctx = ctx().with_device(Some("dflt"));
    // Errors are typed by construction; what is accepted must also be valid.
    for readings in [
        senml::decode_json(bytes, &ctx, &limits),
        senml::decode_cbor(bytes, &ctx, &limits),
        plain::decode(bytes, &ctx, &limits),
        PayloadFormat::Auto.decode(bytes, &ctx, &limits),
    ]
    .into_iter()
    .flatten()
    {
        prop_assert!(!readings.is_empty());
        prop_assert!(readings.len() <= limits.max_records);
        for r in &readings {
            prop_assert!(r.validate().is_ok(), "{r:?}");
        }
    }
    if let Ok(batch) = UplinkBatch::decode(bytes, &BatchLimits::default()) {
        prop_assert!(batch.records.windows(2).all(|w| w[0].seq < w[1].seq));
    }
    Ok(())
}

proptest! {
    #[test]
    fn an_uplink_batch_survives_encode_and_decode_unchanged(batch in any_batch(), level in 1..=5i32) {
        let body = batch.encode(level).expect("encodes");
        let back = UplinkBatch::decode(&body, &BatchLimits::default()).expect("decodes");
        prop_assert_eq!(back, batch);
    }

    #[test]
    fn senml_json_round_trips_values_exactly_and_times_within_a_microsecond(
        readings in proptest::collection::vec(senml_reading(), 1..20)
    ) {
        let bytes = senml::encode_json(&readings);
        let got = senml::decode_json(&bytes, &ctx(), &DecodeLimits::default()).expect("decodes");
        assert_senml_round_trip(&readings, &got)?;
    }

    #[test]
    fn senml_cbor_round_trips_values_exactly_and_times_within_a_microsecond(
        readings in proptest::collection::vec(senml_reading(), 1..20)
    ) {
        let bytes = senml::encode_cbor(&readings);
        let got = senml::decode_cbor(&bytes, &ctx(), &DecodeLimits::default()).expect("decodes");
        assert_senml_round_trip(&readings, &got)?;
        prop_assert_eq!(PayloadFormat::detect(&bytes), Ok(PayloadFormat::SenmlCbor));
    }

    #[test]
    fn no_decoder_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        decode_everything(&bytes)?;
    }

    #[test]
    fn no_decoder_panics_on_mutated_valid_payloads(
        readings in proptest::collection::vec(senml_reading(), 1..6),
        ms in mutations(),
    ) {
        let plain_json = serde_json::to_vec(&serde_json::json!({
            "device": readings[0].device,
            "ts": readings[0].ts.as_secs_f64(),
            "seq": 3,
            readings[0].channel.clone(): readings[0].value,
            "units": {"x": "Cel"},
        }))
        .expect("serialises");
        let records = readings
            .iter()
            .enumerate()
            .map(|(i, r)| OutboxRecord { seq: i as u64 + 1, item: OutboxItem::Reading(r.clone()) })
            .collect();
        let batch = UplinkBatch::new("gw", records).expect("valid");
        let mut batch_cbor = Vec::new();
        ciborium::into_writer(&batch, &mut batch_cbor).expect("serialises");
        for valid in [
            senml::encode_json(&readings),
            senml::encode_cbor(&readings),
            plain_json,
            batch.encode(3).expect("encodes"),
        ] {
            decode_everything(&mutate(valid, &ms))?;
        }
        // Mutate the batch's CBOR before compression so the CBOR decoder sees it.
        let body = zstd::bulk::compress(&mutate(batch_cbor, &ms), 1).expect("compresses");
        decode_everything(&body)?;
    }
}
