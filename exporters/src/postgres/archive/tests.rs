use super::*;

#[test]
fn manifest_signature_covers_every_field() {
    let key = SigningKey::from_bytes(&[9; 32]);
    let mut manifest = Manifest {
        format: ARCHIVE_FORMAT.into(),
        table: "activity_events".into(),
        partition: "activity_events_p20260105".into(),
        day: "2026-01-05".into(),
        scope: "partition".into(),
        data_file: "activity_events_p20260105.ndjson".into(),
        data_format: "ndjson".into(),
        rows: 3,
        min_seq: Some(1),
        max_seq: Some(3),
        tenants: vec![TenantRows {
            tenant: "acme".into(),
            rows: 3,
        }],
        bytes: 10,
        sha256: "00".into(),
        chained_rows: 3,
        links_digest: Some("11".into()),
        created_at: "2026-01-06T00:00:00.000000Z".into(),
        key_id: None,
        signature: None,
    };
    manifest.sign(&key);
    let mut problems = Vec::new();
    check_signature(&manifest, &[key.verifying_key()], &mut problems);
    assert!(problems.is_empty(), "{problems:?}");
    let mut altered = manifest.clone();
    altered.rows = 4;
    check_signature(&altered, &[key.verifying_key()], &mut problems);
    assert_eq!(problems.len(), 1, "{problems:?}");
    let other = SigningKey::from_bytes(&[8; 32]);
    let mut problems = Vec::new();
    check_signature(&manifest, &[other.verifying_key()], &mut problems);
    assert!(problems[0].contains("not the trusted"), "{problems:?}");
}

#[test]
fn doubles_as_row_to_json_prints_them() {
    let d: Double = serde_json::from_str("12.5").expect("number");
    assert_eq!(d.value(), Some(12.5));
    let d: Double = serde_json::from_str("\"NaN\"").expect("text");
    assert!(d.value().is_some_and(f64::is_nan));
    let d: Double = serde_json::from_str("\"x\"").expect("text");
    assert_eq!(d.value(), None);
}
