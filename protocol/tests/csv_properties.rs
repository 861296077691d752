//! Property tests of the CSV form: it never panics, and what `encode` writes
//! `decode` reads back exactly.

use proptest::prelude::*;
use protocol::{DecodeContext, DecodeError, DecodeLimits, PayloadFormat, Reading, Timestamp, csv};

/// Names CSV can carry: no `,` or `"`, no control characters, no surrounding blanks.
fn csv_name() -> impl Strategy<Value = String> {
    "[^\\p{Cc},\" \t]([^\\p{Cc},\"]{0,30}[^\\p{Cc},\" \t])?"
}

fn csv_reading() -> impl Strategy<Value = Reading> {
    (
        csv_name(),
        csv_name(),
        any::<i64>(),
        any::<f64>().prop_filter("finite", |v| v.is_finite()),
    )
        .prop_map(|(d, c, ts, v)| Reading::new(d, c, Timestamp(ts), v).expect("valid"))
}

fn ctx() -> DecodeContext<'static> {
    DecodeContext::new(Timestamp(1_700_000_000_123_456_789)).with_device(Some("dflt"))
}

/// Lines built from CSV-ish pieces, so the decoder's deeper paths are reached.
fn csv_ish() -> impl Strategy<Value = String> {
    let field = prop_oneof![
        Just(String::new()),
        "[a-z0-9_-]{1,6}",
        any::<f64>().prop_map(|v| v.to_string()),
        any::<i64>().prop_map(|v| v.to_string()),
        "-?[0-9]{1,13}\\.[0-9]{0,11}",
        Just("2026-01-01T00:00:00.5+02:00".to_owned()),
        Just("\"".to_owned()),
        Just("device".to_owned()),
        ".{0,4}",
    ];
    proptest::collection::vec(
        (
            proptest::collection::vec(field, 0..6),
            prop_oneof![Just("\n"), Just("\r\n"), Just("")],
        ),
        0..8,
    )
    .prop_map(|lines| {
        lines
            .into_iter()
            .map(|(fields, end)| fields.join(",") + end)
            .collect()
    })
}

proptest! {
    #[test]
    fn csv_decode_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = csv::decode(&bytes, &ctx(), &DecodeLimits::default());
    }

    #[test]
    fn csv_decode_never_panics_on_csv_like_text(text in csv_ish()) {
        let limits = DecodeLimits { max_bytes: 4096, max_records: 5, max_depth: 8 };
        match PayloadFormat::Csv.decode(text.as_bytes(), &ctx(), &limits) {
            Ok(readings) => {
                prop_assert!(!readings.is_empty() && readings.len() <= 5);
                for r in &readings {
                    prop_assert!(r.validate().is_ok());
                }
            }
            Err(e) => prop_assert!(!e.reason_code().is_empty()),
        }
    }

    #[test]
    fn csv_round_trips_device_channel_time_and_value_exactly(
        readings in proptest::collection::vec(csv_reading(), 1..20)
    ) {
        let text = csv::encode(&readings).expect("encodable");
        let back = csv::decode(text.as_bytes(), &ctx(), &DecodeLimits::default());
        prop_assert_eq!(back.as_ref().map(Vec::len), Ok(readings.len()), "{}", text);
        for (sent, got) in readings.iter().zip(back.unwrap_or_default()) {
            prop_assert_eq!(&sent.device, &got.device);
            prop_assert_eq!(&sent.channel, &got.channel);
            prop_assert_eq!(sent.ts, got.ts);
            prop_assert_eq!(sent.value.to_bits(), got.value.to_bits(), "{} vs {}", sent.value, got.value);
        }
    }
}

#[test]
fn csv_is_never_guessed_by_auto() {
    assert_eq!(
        PayloadFormat::Auto.decode(b"d,c,1,1700000000", &ctx(), &DecodeLimits::default()),
        Err(DecodeError::UnknownFormat)
    );
}
