use super::*;

#[test]
fn keys_parse_by_shape() {
    let key = format!("tally_{}_{}", "ab".repeat(8), "0f".repeat(32));
    assert_eq!(parse(&key), Some("abababababababab"));
    assert_eq!(
        prefix_number("abababababababab"),
        Some(0xabab_abab_abab_abab)
    );
    for bad in [
        "tally_",
        "tally_abc_def",
        &format!("tally_{}_{}", "AB".repeat(8), "0f".repeat(32)),
        &format!("tally_{}_{}x", "ab".repeat(8), "0f".repeat(32)),
        &format!("tally_{}{}", "ab".repeat(8), "0f".repeat(32)),
        "eyJhbGciOiJIUzI1NiJ9.e30.x",
    ] {
        assert_eq!(parse(bad), None, "{bad}");
    }
}

#[test]
fn browser_restrictions_are_checked() {
    let ingest = vec![SCOPE_INGEST.to_owned()];
    let browser = IngestRestrictions {
        origins: vec!["https://app.example".into(), "http://localhost:3000".into()],
        actions: vec!["ui.click page.*".into()],
    };
    let checked = checked_restrictions("acme", &ingest, &browser).expect("valid");
    assert_eq!(
        checked.origins,
        ["http://localhost:3000", "https://app.example"]
    );
    assert_eq!(checked.actions, ["page.*", "ui.click"]);
    assert!(checked_restrictions("*", &ingest, &browser).is_err());
    assert!(checked_restrictions("acme", &["admin".to_owned()], &browser).is_err());
    for bad in [
        "app.example",
        "https://app.example/",
        "https://app.example/path",
        "https://*.example",
        "ftp://app.example",
        "https://App.example",
    ] {
        let one = IngestRestrictions {
            origins: vec![bad.into()],
            actions: Vec::new(),
        };
        assert!(
            checked_restrictions("acme", &ingest, &one).is_err(),
            "{bad}"
        );
    }
}

#[test]
fn scopes_and_tenants_are_checked() {
    let scopes = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(
        checked(
            "acme",
            &scopes(&["tokens:read activity:read", "admin,tokens:read"])
        )
        .ok(),
        Some(scopes(&["activity:read", "admin", "tokens:read"]))
    );
    assert_eq!(
        checked("acme", &scopes(&["ingest"])).ok(),
        Some(scopes(&["ingest"]))
    );
    assert!(matches!(
        checked("acme", &scopes(&["activity:write"])),
        Err(ApiKeyError::Invalid(_))
    ));
    assert!(matches!(checked("acme", &[]), Err(ApiKeyError::Invalid(_))));
    assert!(matches!(
        checked("", &scopes(&["admin"])),
        Err(ApiKeyError::Invalid(_))
    ));
    assert!(checked("*", &scopes(&["admin"])).is_ok());
}

#[test]
fn a_self_read_key_has_one_user_in_one_tenant() {
    let own = vec!["self:read".to_owned()];
    assert!(checked_user("acme", &own, Some("alice")).is_ok());
    for (tenant, scopes, user) in [
        ("acme", own.clone(), None),
        ("*", own.clone(), Some("alice")),
        ("acme", own.clone(), Some(" alice")),
        ("acme", own.clone(), Some("")),
        ("acme", vec!["activity:read".to_owned()], Some("alice")),
    ] {
        assert!(
            matches!(
                checked_user(tenant, &scopes, user),
                Err(ApiKeyError::Invalid(_))
            ),
            "{tenant} {scopes:?} {user:?}"
        );
    }
    assert!(checked_user("acme", &["admin".to_owned()], None).is_ok());
}

#[test]
fn hashes_compare_whole() {
    let a = hash("tally_x");
    assert!(same_hash(&a, &hash("tally_x")));
    assert!(!same_hash(&a, &hash("tally_y")));
    assert!(!same_hash(&a, &a[..31]));
}

#[test]
fn the_cache_is_bounded_and_expires() {
    let verifier = KeyVerifier::new(Duration::from_secs(60), 2);
    let entry = Entry {
        grant: Grant {
            id: Uuid::nil(),
            prefix: String::new(),
            user: None,
            tenant: "acme".into(),
            scopes: BTreeSet::new(),
            restrictions: IngestRestrictions::default(),
        },
        secret_hash: vec![0; 32],
        revoked: false,
    };
    for prefix in ["a", "b", "c"] {
        verifier.remember(prefix, &entry);
    }
    let len = verifier.cache.lock().map(|c| c.len()).unwrap_or(usize::MAX);
    assert!(len <= 2, "{len}");
    assert!(verifier.cached("c").is_some());
    let no_cache = KeyVerifier::new(Duration::ZERO, 2);
    no_cache.remember("a", &entry);
    assert!(no_cache.cached("a").is_none());
}
