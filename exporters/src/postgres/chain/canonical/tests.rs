use super::*;
use crate::postgres::chain::GENESIS_HASH;

fn row() -> ChainRow {
    ChainRow {
        id: uuid::Uuid::nil(),
        seq: 7,
        ts: DateTime::from_timestamp(1_700_000_000, 123_456_000).unwrap_or_default(),
        received_at: DateTime::from_timestamp(1_700_000_001, 0).unwrap_or_default(),
        tenant_id: Some("acme".into()),
        user_id: None,
        session_id: None,
        action: Some("login".into()),
        outcome: Some("success".into()),
        resource_type: None,
        resource_id: None,
        service: None,
        trace_id: None,
        span_id: None,
        attributes: Some("{}".into()),
        taxonomy_valid: Some(true),
        taxonomy_reason: None,
        duration_ms: None,
        name: None,
        error_type: None,
        error_message: None,
        chain_form: None,
        chain_salt: None,
        erasure_id: None,
        erased_digest: None,
        erased_signature: None,
        personal_attributes: None,
    }
}

/// The canonical form of a row without details, as written before schema
/// version 12 (the same code, minus the details), for a fixed row.
fn canonical_v1_without_details(row: &ChainRow) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(ROW_DOMAIN);
    field(&mut out, Some(row.id.as_bytes()));
    field(&mut out, Some(&row.seq.to_be_bytes()));
    field(&mut out, Some(&row.ts.timestamp_micros().to_be_bytes()));
    field(
        &mut out,
        Some(&row.received_at.timestamp_micros().to_be_bytes()),
    );
    for text in [
        &row.tenant_id,
        &row.user_id,
        &row.session_id,
        &row.action,
        &row.outcome,
        &row.resource_type,
        &row.resource_id,
        &row.service,
        &row.trace_id,
        &row.span_id,
        &row.attributes,
    ] {
        field(&mut out, text.as_deref().map(str::as_bytes));
    }
    field(
        &mut out,
        row.taxonomy_valid
            .map(|v| [u8::from(v)])
            .as_ref()
            .map(|b| &b[..]),
    );
    field(&mut out, row.taxonomy_reason.as_deref().map(str::as_bytes));
    out
}

/// Rows of every form, with every field set or NULL in turn.
fn rows_of_every_form() -> Vec<(&'static str, ChainRow)> {
    let mut full = row();
    full.id = uuid::Uuid::from_u128(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef);
    full.seq = -3;
    full.user_id = Some("alice".into());
    full.session_id = Some("s-1".into());
    full.resource_type = Some("doc".into());
    full.resource_id = Some("d-9".into());
    full.service = Some("billing".into());
    full.trace_id = Some("0af7651916cd43dd8448eb211c80319c".into());
    full.span_id = Some("b7ad6b7169203331".into());
    full.attributes = Some(r#"{"a": 1}"#.into());
    full.taxonomy_valid = Some(false);
    full.taxonomy_reason = Some("unknown action".into());
    let mut details = full.clone();
    details.duration_ms = Some(12.5);
    details.name = Some("GET /".into());
    details.error_type = Some("timeout".into());
    details.error_message = Some("timed out".into());
    let mut v3 = details.clone();
    v3.chain_form = Some(CHAIN_FORM_V3);
    v3.chain_salt = Some(vec![9; 16]);
    v3.personal_attributes = Some(r#"{"user.email": "a@x"}"#.into());
    let mut v3_bare = row();
    v3_bare.chain_form = Some(CHAIN_FORM_V3);
    let mut erased = v3.clone();
    erased.erased_digest = Some(vec![5; 32]);
    erased.erasure_id = Some(uuid::Uuid::from_u128(1));
    let mut unknown = v3.clone();
    unknown.chain_form = Some(4);
    vec![
        ("v1 sparse", row()),
        ("v1 full", full),
        ("v2", details),
        ("v3", v3),
        ("v3 sparse", v3_bare),
        ("v3 erased", erased),
        ("unknown form", unknown),
    ]
}

fn truncation(chained: bool) -> TruncationRecord {
    TruncationRecord {
        table: "activity_events".into(),
        tenant: "acme".into(),
        day: NaiveDate::from_ymd_opt(2026, 12, 6).unwrap_or_default(),
        rows: 12,
        min_seq: chained.then_some(3),
        max_seq: chained.then_some(14),
        chained_rows: if chained { 10 } else { 0 },
        last_chained_seq: chained.then_some(12),
        last_chained_hash: chained.then(|| vec![7; 32]),
        dropped_at: DateTime::from_timestamp(1_765_000_000, 5_000).unwrap_or_default(),
    }
}

/// The stored forms are a format: rows hashed years ago must verify with
/// this code. These digests were computed by the encoders as they stood
/// before their head and tail were folded into shared helpers (commit
/// b744aae); any change to the bytes of a form fails here.
#[test]
fn canonical_forms_keep_their_bytes() {
    let expected = [
        (
            "v1 sparse",
            "6875c246a4a3a1fd7cbed42161d74c0c9ecc255fb21142e382a1836d31d7f507",
        ),
        (
            "v1 full",
            "713d701965d737586efaec4c75e80aad1cb831d5365121c818e5a697f3482814",
        ),
        (
            "v2",
            "6ee031d43d4264175464119cfbc6ac9a9a75f93c47c3af694f4266ca5c2d4055",
        ),
        (
            "v3",
            "70b8d2cdce5afa705395bd414b9769571fd1a63ef01c815e4e436c45eb674c77",
        ),
        (
            "v3 sparse",
            "79b389e2761585ec20693ba17e8f99babb71354fba15215c3b8a54a7ec41b484",
        ),
        (
            "v3 erased",
            "e6bf9affccb5ef22fc655464a602a5ae5c7a0bc836f7160d797fcabf9ae39565",
        ),
        (
            "unknown form",
            "8538adbc890a7039efe1ab47c04d3204868942ddc99c6f425ea80ac7a6a87a69",
        ),
    ];
    let forms = rows_of_every_form();
    assert_eq!(forms.len(), expected.len());
    for ((name, row), (expected_name, digest)) in forms.iter().zip(expected) {
        assert_eq!(*name, expected_name);
        assert_eq!(hex(&Sha256::digest(row.canonical())), digest, "{name}");
    }
    let truncations = [
        (
            false,
            "fd88396bebaa296a53bdb02147185591759514a787efe134ea67e66f51552323",
        ),
        (
            true,
            "0bbab01aba55684319d771ef830cc883f577ac2b674ed1d8c3ab76524c1909ba",
        ),
    ];
    for (chained, digest) in truncations {
        let message = truncation(chained).message();
        assert_eq!(hex(&Sha256::digest(message)), digest, "chained {chained}");
    }
}

#[test]
fn rows_without_details_keep_their_earlier_form_and_details_are_covered() {
    let old = row();
    assert_eq!(old.canonical(), canonical_v1_without_details(&old));
    let base = old.canonical();
    assert!(base.starts_with(b"tally-activity-v1"));
    let mut with = Vec::new();
    for change in 0..4 {
        let mut r = row();
        match change {
            0 => r.duration_ms = Some(12.5),
            1 => r.name = Some("GET /".into()),
            2 => r.error_type = Some("timeout".into()),
            _ => r.error_message = Some("timed out".into()),
        }
        let form = r.canonical();
        assert!(form.starts_with(b"tally-activity-v2"));
        assert_ne!(form, base, "detail {change} is hashed");
        assert!(!with.contains(&form), "detail {change} is its own field");
        with.push(form);
    }
    let mut a = row();
    a.name = Some("ab".into());
    a.error_type = Some("c".into());
    let mut b = row();
    b.name = Some("a".into());
    b.error_type = Some("bc".into());
    assert_ne!(a.canonical(), b.canonical());
}

#[test]
fn v3_hashes_personal_fields_only_through_the_salted_digest() {
    let mut v3 = row();
    v3.chain_form = Some(CHAIN_FORM_V3);
    v3.chain_salt = Some(vec![9; 16]);
    v3.user_id = Some("alice".into());
    v3.session_id = Some("s-1".into());
    v3.personal_attributes = Some(r#"{"user.email": "a@x"}"#.into());
    let form = v3.canonical();
    assert!(form.starts_with(b"tally-activity-v3"));
    assert_ne!(form, row().canonical());
    for needle in [&b"alice"[..], b"s-1", b"a@x"] {
        assert!(!form.windows(needle.len()).any(|w| w == needle));
    }
    // Each personal field and the salt change the digest.
    let mut changed = Vec::new();
    for change in 0..4 {
        let mut r = v3.clone();
        match change {
            0 => r.user_id = Some("bob".into()),
            1 => r.session_id = None,
            2 => r.personal_attributes = None,
            _ => r.chain_salt = Some(vec![8; 16]),
        }
        assert_ne!(r.canonical(), form, "change {change}");
        changed.push(r.personal_digest());
    }
    changed.dedup();
    assert_eq!(changed.len(), 4);
    // Erased: the kept digest stands for the values, which are gone.
    let mut erased = v3.clone();
    erased.erased_digest = Some(v3.personal_digest().to_vec());
    erased.erasure_id = Some(uuid::Uuid::from_u128(1));
    erased.user_id = Some("erased:0123".into());
    erased.session_id = None;
    erased.personal_attributes = None;
    erased.chain_salt = None;
    assert_eq!(erased.canonical(), form);
    erased.erased_digest = Some(vec![0; 32]);
    assert_ne!(erased.canonical(), form);
    // An unknown form never matches a v3 one.
    let mut unknown = v3.clone();
    unknown.chain_form = Some(4);
    assert_ne!(unknown.canonical(), form);
}

#[test]
fn canonical_form_distinguishes_null_empty_and_field_boundaries() {
    let base = row().canonical();
    let mut empty_user = row();
    empty_user.user_id = Some(String::new());
    assert_ne!(base, empty_user.canonical());
    let mut a = row();
    a.user_id = Some("ab".into());
    a.session_id = Some("c".into());
    let mut b = row();
    b.user_id = Some("a".into());
    b.session_id = Some("bc".into());
    assert_ne!(a.canonical(), b.canonical());
    let mut flag = row();
    flag.taxonomy_valid = Some(false);
    assert_ne!(base, flag.canonical());
    assert_eq!(base, row().canonical());
}

#[test]
fn hash_depends_on_the_previous_hash() {
    let canonical = row().canonical();
    let first = row_hash(&GENESIS_HASH, &canonical);
    assert_ne!(first, row_hash(&first, &canonical));
    assert_eq!(first, row_hash(&GENESIS_HASH, &canonical));
}

#[test]
fn key_ids_are_16_hex_digits() {
    let key = SigningKey::from_bytes(&[7; 32]);
    let id = key_id(&key.verifying_key());
    assert_eq!(id.len(), 16);
    assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
    assert!(signing_key_from_seed(&[1; 31]).is_err());
    let seed_b64 = "KioqKioqKioqKioqKioqKioqKioqKioqKioqKioqKio=";
    let from_b64 = signing_key_from_config(seed_b64).map(|k| k.to_bytes());
    assert_eq!(from_b64.ok(), Some([42; 32]));
    let from_hex = signing_key_from_config(&"2a".repeat(32)).map(|k| k.to_bytes());
    assert_eq!(from_hex.ok(), Some([42; 32]));
    assert!(signing_key_from_config("not a key").is_err());
    assert!(signing_key_from_config("AAAA").is_err());
}

#[test]
fn fill_head_sets_seq_and_received_at_of_a_v3_form() {
    let mut v3 = row();
    v3.chain_form = Some(CHAIN_FORM_V3);
    v3.chain_salt = Some(vec![3; 16]);
    let mut blank = v3.clone();
    blank.seq = 0;
    blank.received_at = DateTime::UNIX_EPOCH;
    let mut form = blank.canonical();
    assert!(fill_head(&mut form, v3.seq, v3.received_at));
    assert_eq!(form, v3.canonical());
    // Not a v3 form: left alone.
    let mut v1 = row().canonical();
    let before = v1.clone();
    assert!(!fill_head(&mut v1, 1, v3.received_at));
    assert_eq!(v1, before);
}
