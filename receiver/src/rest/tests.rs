use super::*;

fn now() -> DateTime<Utc> {
    DateTime::from_timestamp(1_800_000_000, 0).unwrap_or_default()
}

fn attr<'a>(item: &'a Item, key: &str) -> Option<&'a any_value::Value> {
    item.attributes
        .iter()
        .rev()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| v.value.as_ref())
}

#[test]
fn items_become_the_attributes_the_classifier_reads() {
    let item = Item::parse(
            json!({
                "action": "doc.upload", "user_id": "u1", "tenant_id": "t1",
                "outcome": "failure", "ts": "2026-01-02T03:04:05Z",
                "attributes": {"size": 3, "user.id": "spoofed"},
                "tokens": {"provider": "openai", "model": "gpt-4o", "input_tokens": 10, "output_tokens": 2}
            }),
            now(),
            "",
        )
        .expect("valid item");
    assert_eq!(item.ts.to_rfc3339(), "2026-01-02T03:04:05+00:00");
    assert!(item.has_tokens && item.user_given);
    assert_eq!(
        attr(&item, "user.id"),
        Some(&any_value::Value::StringValue("u1".into()))
    );
    assert_eq!(attr(&item, "size"), Some(&any_value::Value::IntValue(3)));
    assert_eq!(
        attr(&item, "gen_ai.usage.input_tokens"),
        Some(&any_value::Value::IntValue(10))
    );
    let record = item.into_record(true);
    assert_eq!(record.attributes[0].key, EVENT_ID_ATTRIBUTE);
    assert_eq!(record.attributes[1].key, ASSERTED_BY);
}

#[test]
fn malformed_items_say_why() {
    for (item, needle) in [
        (json!({}), "action: required"),
        (json!({"action": 3}), "action: must be a string"),
        (json!({"action": "a", "id": "x"}), "id: must be a UUID"),
        (json!({"action": "a", "ts": "yesterday"}), "ts:"),
        (
            json!({"action": "a", "ts": "1969-12-31T00:00:00Z"}),
            "after 1970",
        ),
        (json!({"action": "a", "outcome": "maybe"}), "outcome:"),
        (json!({"action": "a", "trace_id": "zz"}), "trace_id:"),
        (json!({"action": "a", "colour": 1}), "unknown field"),
        (
            json!({"action": "a", "attributes": {"tally.x": 1}}),
            "reserved",
        ),
        (
            json!({"action": "a", "tokens": {"input_tokens": 1}}),
            "tokens.model",
        ),
        (
            json!({"action": "a", "tokens": {"model": "m", "input_tokens": -1}}),
            "0 or more",
        ),
        (json!([1]), "not a JSON object"),
    ] {
        let error = Item::parse(item.clone(), now(), "")
            .expect_err("malformed")
            .0;
        assert!(error.contains(needle), "{item}: {error}");
    }
}

#[test]
fn ids_are_given_or_derived_from_content_time_and_tenant() {
    let given = "0190a5c8-7f3e-7a1b-9c2d-1234567890ab";
    let item = Item::parse(json!({"action": "a", "id": given}), now(), "").expect("valid");
    assert_eq!(item.id.to_string(), given);
    // A v7 id without ts: the id's own time.
    assert_eq!(item.ts.timestamp(), 0x0190_a5c8_7f3e / 1000);
    let a = json!({"action": "a", "ts": 1_700_000_000_000_i64, "attributes": {"x": 1, "y": 2}});
    let b = json!({"attributes": {"y": 2, "x": 1}, "ts": "2023-11-14T22:13:20Z", "action": "a"});
    let id = |v: &Value, scope| Item::parse(v.clone(), now(), scope).expect("valid").id;
    assert_eq!(id(&a, "t"), id(&b, "t"));
    assert_ne!(id(&a, "t"), id(&a, "u"));
    assert_ne!(id(&a, "t"), id(&json!({"action": "a"}), "t"));
}

#[test]
fn bodies_of_each_format() {
    let one = parse_body(BodyFormat::Json, br#"{"action":"a"}"#).expect("object");
    assert_eq!(one.len(), 1);
    let many = parse_body(BodyFormat::Json, br#"[{"action":"a"},2]"#).expect("array");
    assert_eq!(many.len(), 2);
    assert!(parse_body(BodyFormat::Json, b"{nope").is_err());
    assert!(parse_body(BodyFormat::Json, b"3").is_err());
    let lines = parse_body(
        BodyFormat::Ndjson,
        b"{\"action\":\"a\"}\n\nnope\n{\"action\":\"b\"}\n",
    )
    .expect("ndjson");
    assert_eq!(lines.len(), 3);
    assert!(lines[1].is_err());
    assert!(parse_body(BodyFormat::Ndjson, b"nope\nnope").is_err());
}

#[test]
fn the_limiter_refuses_an_empty_bucket_with_a_wait() {
    let limiter = EventsLimiter::new(&tally_config::EventsRateLimit {
        per_second: 1.0,
        burst: 5,
    });
    assert!(limiter.admit(None).is_ok());
    limiter.charge(None, 20);
    let wait = limiter.admit(None).expect_err("empty");
    assert!(wait > Duration::from_secs(10), "{wait:?}");
    // Another key has its own bucket.
    assert!(limiter.admit(Some(Uuid::nil())).is_ok());
    assert!(EventsLimiter::default().admit(None).is_ok());
}

#[test]
fn keys_come_from_the_query_when_no_header_has_one() {
    let mut headers = HeaderMap::new();
    key_from_query(&mut headers, Some("a=1&api_key=tally_x"));
    assert_eq!(
        headers.get("x-api-key").map(|v| v.as_bytes()),
        Some(&b"tally_x"[..])
    );
    let mut headers = HeaderMap::new();
    headers.insert("authorization", HeaderValue::from_static("Bearer tally_y"));
    key_from_query(&mut headers, Some("api_key=tally_x"));
    assert!(!headers.contains_key("x-api-key"));
}
