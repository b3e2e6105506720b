//! The writer's printer of `jsonb::text` (`chain::jsonb_text`) against the real
//! server: for thousands of generated attribute objects, the text PostgreSQL
//! prints for the JSON the `COPY` encoder sends equals the printer's, byte for byte.

use serde_json::{Map, Number, Value};
use tally_exporters::postgres::chain::jsonb_text;
use tally_exporters::postgres::copy::json_text;
use tally_exporters::testing::TestDatabase;

/// xorshift64*: a fixed, dependency-free generator (the same objects every run).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

/// Pieces strings are made of: ASCII, multi-byte UTF-8, every escape class.
const PIECES: &[&str] = &[
    "a",
    "b",
    "z",
    "A",
    "0",
    "9",
    ".",
    "_",
    "-",
    " ",
    "é",
    "ß",
    "中",
    "😀",
    "\u{2028}",
    "\u{7f}",
    "\u{fffd}",
    "\"",
    "\\",
    "/",
    "\n",
    "\r",
    "\t",
    "\u{8}",
    "\u{c}",
    "\u{1}",
    "\u{1f}",
    "\u{0}",
    "\\u0000",
    "user.id",
    "http.route",
];

fn string(rng: &mut Rng, max: u64) -> String {
    let len = rng.below(max + 1);
    (0..len).map(|_| *rng.pick(PIECES)).collect()
}

fn float(rng: &mut Rng) -> f64 {
    const SPECIAL: &[f64] = &[
        0.0,
        -0.0,
        1.0,
        -1.5,
        0.1,
        1e-7,
        1e20,
        1e21,
        1e22,
        123456.789,
        5e-324,
        2.2250738585072014e-308,
        1.7976931348623157e308,
        -1.7976931348623157e308,
        9007199254740993.0,
        0.000001,
        1e15,
        1e16,
        1e17,
    ];
    match rng.below(3) {
        0 => *rng.pick(SPECIAL),
        1 => (rng.next() as i64 as f64) / 10f64.powi(rng.below(12) as i32),
        _ => loop {
            let f = f64::from_bits(rng.next());
            if f.is_finite() {
                break f;
            }
        },
    }
}

fn value(rng: &mut Rng, depth: u32) -> Value {
    let kinds = if depth >= 3 { 6 } else { 8 };
    match rng.below(kinds) {
        0 => Value::Null,
        1 => Value::Bool(rng.below(2) == 0),
        2 => Value::Number(Number::from(rng.next() as i64 >> rng.below(64))),
        3 => Value::Number(Number::from(rng.next())),
        4 => Number::from_f64(float(rng)).map_or(Value::Null, Value::Number),
        5 => Value::String(string(rng, 12)),
        6 => Value::Array((0..rng.below(4)).map(|_| value(rng, depth + 1)).collect()),
        _ => Value::Object(object(rng, depth + 1)),
    }
}

fn object(rng: &mut Rng, depth: u32) -> Map<String, Value> {
    let mut map = Map::new();
    for _ in 0..rng.below(9) {
        // Keys of mixed lengths, some equal up to their length's order.
        let key = string(rng, 6);
        map.insert(key, value(rng, depth));
    }
    map
}

#[tokio::test]
async fn printer_matches_postgresql_jsonb_text() {
    let db = TestDatabase::create().await;
    let client = db.client().await;
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let objects: Vec<Map<String, Value>> = (0..6000).map(|_| object(&mut rng, 0)).collect();
    let mut compared = 0usize;
    let mut refused = 0usize;
    for chunk in objects.chunks(500) {
        let sent: Vec<String> = chunk.iter().map(json_text).collect();
        let rows = client
            .query(
                "SELECT t::jsonb::text FROM unnest($1::text[]) WITH ORDINALITY AS u(t, i) \
                 ORDER BY i",
                &[&sent],
            )
            .await
            .expect("jsonb::text");
        assert_eq!(rows.len(), chunk.len());
        for ((map, sent), row) in chunk.iter().zip(&sent).zip(&rows) {
            let server: String = row.get(0);
            match jsonb_text(map) {
                Some(printed) => {
                    assert_eq!(printed, server, "sent {sent}");
                    compared += 1;
                }
                None => refused += 1,
            }
        }
    }
    // Refused only for keys equal once NUL is scrubbed: rare.
    assert!(compared >= 5900, "compared {compared}, refused {refused}");
}

#[tokio::test]
async fn numbers_keep_postgresql_numeric_text() {
    let db = TestDatabase::create().await;
    let client = db.client().await;
    let mut maps = Vec::new();
    for text in [
        "0",
        "-0",
        "-0.0",
        "1.50",
        "1e-7",
        "1E+20",
        "1.5e1",
        "100e-1",
        "-12.5e-3",
        "1e300",
        "5e-324",
        "123456789012345678901234567890",
    ] {
        let n: Value = serde_json::from_str(text).expect("number");
        let mut map = Map::new();
        map.insert("n".into(), n);
        maps.push(map);
    }
    for map in &maps {
        let sent = json_text(map);
        let server: String = client
            .query_one("SELECT $1::text::jsonb::text", &[&sent])
            .await
            .expect("jsonb::text")
            .get(0);
        assert_eq!(jsonb_text(map).as_deref(), Some(server.as_str()), "{sent}");
    }
}
