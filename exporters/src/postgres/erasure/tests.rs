use super::*;

#[test]
fn pseudonyms_are_keyed_stable_and_distinct() {
    let a = pseudonym(b"key one", "acme", "alice");
    assert!(a.starts_with(PSEUDONYM_PREFIX));
    assert_eq!(a.len(), PSEUDONYM_PREFIX.len() + 32);
    assert_eq!(a, pseudonym(b"key one", "acme", "alice"));
    assert_ne!(a, pseudonym(b"key two", "acme", "alice"));
    assert_ne!(a, pseudonym(b"key one", "acme", "bob"));
    assert_ne!(a, pseudonym(b"key one", "other", "alice"));
    // The tenant's length is part of the input: ("ab", "c") is not ("a", "bc").
    assert_ne!(pseudonym(b"k", "ab", "c"), pseudonym(b"k", "a", "bc"));
    assert!(!a.contains("alice"));
}

#[test]
fn requests_are_checked() {
    let ok = ErasureRequest {
        tenant: "acme".into(),
        user: "alice".into(),
        reason: "GDPR request #12".into(),
        requested_by: "admin".into(),
    };
    assert!(ok.check().is_ok());
    for bad in [
        ErasureRequest {
            user: " ".into(),
            ..ok.clone()
        },
        ErasureRequest {
            reason: String::new(),
            ..ok.clone()
        },
        ErasureRequest {
            user: "a\nb".into(),
            ..ok.clone()
        },
        ErasureRequest {
            reason: "x".repeat(MAX_TEXT + 1),
            ..ok.clone()
        },
    ] {
        assert!(
            matches!(bad.check(), Err(ErasureError::Invalid(_))),
            "{bad:?}"
        );
    }
}
