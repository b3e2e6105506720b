use super::*;

fn v(watermark: i64, generation: i64, high: i64) -> Version {
    Version {
        watermark,
        generation,
        high,
    }
}

#[test]
fn a_cache_is_extended_only_for_its_watermark_and_generation() {
    assert_eq!(step(None, v(10, 0, 20)), Step::Rebuild);
    assert_eq!(
        step(Some(v(10, 0, 15)), v(10, 0, 20)),
        Step::Extend { from: 15 }
    );
    assert_eq!(
        step(Some(v(10, 0, 20)), v(10, 0, 20)),
        Step::Extend { from: 20 }
    );
    assert_eq!(step(Some(v(10, 0, 25)), v(10, 0, 20)), Step::Skip);
    assert_eq!(step(Some(v(10, 0, 15)), v(12, 0, 20)), Step::Rebuild);
    assert_eq!(step(Some(v(10, 0, 15)), v(10, 1, 20)), Step::Rebuild);
    assert_eq!(
        step(Some(v(10, 0, 15)), v(10, 0, 10 + MAX_TAIL_SEQS + 1)),
        Step::TooLong
    );
}

#[test]
fn costs_round_trip_exactly() {
    for (text, units) in [
        ("0", 0i128),
        ("0.0000000001", 1),
        ("12.5", 125_000_000_000),
        ("-3.0000000002", -30_000_000_002),
        ("123456789012.1234567890", 1_234_567_890_121_234_567_890),
    ] {
        assert_eq!(parse_cost(text), Some(units), "{text}");
    }
    assert_eq!(format_cost(125_000_000_000), "12.5000000000");
    assert_eq!(format_cost(-30_000_000_002), "-3.0000000002");
    assert_eq!(format_cost(1), "0.0000000001");
    assert_eq!(parse_cost("1.00000000001"), None);
    assert_eq!(parse_cost("1e5"), None);
    assert_eq!(parse_cost(""), None);
}
