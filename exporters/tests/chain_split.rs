//! The chainer's Rust split of a v3 row's attributes against a real PostgreSQL:
//! for many generated attribute texts and `personal_keys`, `split_attributes`
//! gives byte for byte the texts of
//! `(a - tally_personal_keys(a, k))::text` and `tally_personal_attributes(a, k)::text`,
//! and the fixed personal set in Rust answers like `tally_is_personal_key`.

use tally_exporters::postgres::personal::{
    is_fixed_personal_key, split_attributes, FIXED_PERSONAL_KEYS,
};
use tally_exporters::testing::TestDatabase;

/// A small deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
}

/// Keys: the fixed set, `enduser.` and near misses, escapes, unicode, keys that
/// sort differently by bytes and by length, and the empty key.
const KEYS: &[&str] = &[
    "user.id",
    "user.email",
    "session.id",
    "client.address",
    "http.client_ip",
    "enduser.id",
    "enduser.",
    "enduser.\n",
    "enduser",
    "Enduser.id",
    "enduser_id",
    "xenduser.id",
    "user.idx",
    "user.i",
    "USER.ID",
    " user.id",
    "user_id",
    "doc.owner",
    "edge.viewer",
    "a",
    "b",
    "aa",
    "ab",
    "z",
    "Z",
    "zz",
    "é",
    "日本",
    "\u{1F600}",
    "k\"q",
    "back\\slash",
    "ctl\u{1}x",
    "tab\tkey",
    "new\nline",
    "del\u{7f}",
    "sep\u{2028}",
    "a, \"b\": 1",
    "}",
    "",
    "count",
    "model",
];

const NUMBERS: &[&str] = &[
    "1.0",
    "1e3",
    "-0",
    "0",
    "-1.5e-7",
    "1E+2",
    "0.10",
    "123456789012345678901234567890",
    "3.14159265358979323846",
    "-42",
];

const STRINGS: &[&str] = &[
    "",
    "plain",
    "with \"quotes\"",
    "back\\slash\\",
    "\\",
    "ctl \u{0} never",
    "ctl \u{1}\u{1f}",
    "\n\r\t\u{8}\u{c}",
    "é ü 日本 \u{1F600}",
    "}, \"x\": {",
    "[1, 2]",
    "a, b",
    "\u{2028}\u{2029}",
    "/slash/",
];

fn string(rng: &mut Rng) -> String {
    // serde_json escapes what JSON needs; PostgreSQL re-escapes in its own way.
    let s = rng.pick(STRINGS).replace('\u{0}', "0");
    serde_json::to_string(&s).unwrap_or_default()
}

fn value(rng: &mut Rng, depth: usize) -> String {
    let kinds = if depth >= 3 { 5 } else { 8 };
    match rng.below(kinds) {
        0 | 1 => rng.pick(NUMBERS).to_owned(),
        2 => string(rng),
        3 => rng.pick(&["true", "false", "null"]).to_owned(),
        4 => rng.pick(&["{}", "[]", "[{}]", "{\"a\": []}"]).to_owned(),
        5 | 6 => object(rng, depth + 1),
        _ => {
            let n = rng.below(4);
            let items: Vec<String> = (0..n).map(|_| value(rng, depth + 1)).collect();
            format!("[{}]", items.join(","))
        }
    }
}

fn key(rng: &mut Rng) -> String {
    let k = rng.pick(KEYS);
    // Sometimes spelled with \u escapes in the input: the same key to PostgreSQL.
    if rng.below(6) == 0 {
        let mut out = String::from("\"");
        for c in k.chars() {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{unit:04X}"));
            }
        }
        out.push('"');
        out
    } else {
        serde_json::to_string(k).unwrap_or_default()
    }
}

fn object(rng: &mut Rng, depth: usize) -> String {
    let n = if depth == 0 {
        rng.below(12)
    } else {
        rng.below(4)
    };
    // Duplicate keys are allowed in the input (jsonb keeps the last).
    let pairs: Vec<String> = (0..n)
        .map(|_| format!("{}:{}", key(rng), value(rng, depth)))
        .collect();
    format!("{{{}}}", pairs.join(" ,"))
}

fn personal_keys(rng: &mut Rng) -> Option<Vec<String>> {
    match rng.below(4) {
        0 => None,
        1 => Some(Vec::new()),
        _ => Some(
            (0..1 + rng.below(4))
                .map(|_| {
                    if rng.below(5) == 0 {
                        "absent.key".to_owned()
                    } else {
                        rng.pick(KEYS).to_owned()
                    }
                })
                .collect(),
        ),
    }
}

#[tokio::test]
async fn the_rust_split_equals_the_sql_functions_byte_for_byte() {
    let db = TestDatabase::migrated().await;
    let client = db.client().await;
    let mut rng = Rng(0x7a11_c4a1_5eed_0021);
    let mut inputs: Vec<String> = vec![
        "{}".into(),
        "[]".into(),
        "[{\"user.id\": 1}]".into(),
        "{\"user.id\": \"u\"}".into(),
        "{\"a\": 1, \"user.id\": \"u\", \"enduser.x\": {\"user.id\": 2}}".into(),
    ];
    let mut keys: Vec<Option<Vec<String>>> = vec![None; inputs.len()];
    for _ in 0..3000 {
        inputs.push(object(&mut rng, 0));
        keys.push(personal_keys(&mut rng));
    }
    // The keys travel as JSON arrays (an array of arrays cannot be ragged).
    let keys_json: Vec<Option<String>> = keys
        .iter()
        .map(|k| {
            k.as_ref()
                .map(|k| serde_json::to_string(k).unwrap_or_default())
        })
        .collect();
    let rows = client
        .query(
            "SELECT a::text, k, (a - tally_personal_keys(a, k))::text, \
                 tally_personal_attributes(a, k)::text \
             FROM (SELECT i, a::jsonb AS a, \
                       CASE WHEN kj IS NOT NULL \
                           THEN ARRAY(SELECT jsonb_array_elements_text(kj::jsonb)) END AS k \
                   FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS u(a, kj, i)) AS s \
             ORDER BY i",
            &[&inputs, &keys_json],
        )
        .await
        .expect("sql split");
    assert_eq!(rows.len(), inputs.len());
    let mut with_personal = 0;
    let mut with_public = 0;
    for row in &rows {
        let text: String = row.get(0);
        let k: Option<Vec<Option<String>>> = row.get(1);
        let public: String = row.get(2);
        let personal: Option<String> = row.get(3);
        let split = split_attributes(text.clone(), k.as_deref().unwrap_or(&[]))
            .unwrap_or_else(|e| panic!("{e}: {text}"));
        assert_eq!(split.public, public, "public part of {text} with {k:?}");
        assert_eq!(
            split.personal, personal,
            "personal part of {text} with {k:?}"
        );
        with_personal += usize::from(personal.is_some());
        with_public += usize::from(public.len() > 2 && personal.is_some());
    }
    // The generator reaches both cases often.
    assert!(with_personal > 1000, "{with_personal}");
    assert!(with_public > 500, "{with_public}");
}

#[tokio::test]
async fn the_fixed_set_answers_like_tally_is_personal_key() {
    let db = TestDatabase::migrated().await;
    let client = db.client().await;
    let mut keys: Vec<&str> = FIXED_PERSONAL_KEYS.to_vec();
    keys.extend_from_slice(KEYS);
    keys.extend_from_slice(&[
        "enduser.%",
        "enduserX",
        "enduser%",
        "enduser._",
        "ENDUSER.id",
        "user.id ",
        "user",
        "session",
        "session.previous_id",
        "session_id",
        "client.ip.v4",
        "net.peer.ip",
        "net_peer_ip",
    ]);
    for key in FIXED_PERSONAL_KEYS {
        keys.push(&key[1..]);
        keys.push(&key[..key.len() - 1]);
    }
    let near: Vec<String> = FIXED_PERSONAL_KEYS
        .iter()
        .flat_map(|k| [format!("{k}.x"), format!("x{k}"), k.to_uppercase()])
        .collect();
    keys.extend(near.iter().map(String::as_str));
    let rows = client
        .query(
            "SELECT k, tally_is_personal_key(k) FROM unnest($1::text[]) AS k",
            &[&keys],
        )
        .await
        .expect("sql");
    assert_eq!(rows.len(), keys.len());
    let mut personal = 0;
    for row in rows {
        let key: String = row.get(0);
        let sql: bool = row.get(1);
        assert_eq!(is_fixed_personal_key(&key), sql, "{key:?}");
        personal += usize::from(sql);
    }
    assert!(personal > FIXED_PERSONAL_KEYS.len(), "{personal}");
}
