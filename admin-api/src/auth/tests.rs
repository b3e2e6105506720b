use super::*;

fn caller(scope: &str, tenant: Option<&str>) -> Caller {
    caller_of(Claims {
        sub: "alice".to_owned(),
        scope: Some(scope.to_owned()),
        tenant: tenant.map(str::to_owned),
    })
}

#[test]
fn self_read_is_one_user_within_one_tenant() {
    let own = caller("self:read", Some("acme"));
    assert_eq!(
        own.tenant,
        TenantAccess::OwnRows {
            tenant: "acme".into(),
            user: "alice".into()
        }
    );
    assert_eq!(own.own_user(), Some("alice"));
    assert_eq!(own.tenant.settings(), ("acme", "alice"));
    // Limited whatever its other scopes.
    let mixed = caller("self:read activity:read admin", Some("acme"));
    assert_eq!(mixed.own_user(), Some("alice"));
    assert!(mixed.require_scope(SCOPE_ADMIN).is_err());
    // Within one tenant only.
    assert_eq!(caller("self:read", Some("*")).tenant, TenantAccess::Nothing);
    assert_eq!(caller("self:read", None).tenant, TenantAccess::Nothing);
    // Other callers are unchanged.
    assert_eq!(
        caller("activity:read", Some("acme")).tenant,
        TenantAccess::One("acme".into())
    );
    assert_eq!(
        caller("admin", Some("acme")).tenant.settings(),
        ("acme", "")
    );
}

#[test]
fn self_read_scopes_and_filters() {
    let own = caller("self:read", Some("acme"));
    assert!(own.require_scope(SCOPE_ACTIVITY_READ).is_ok());
    assert!(own.require_scope(SCOPE_TOKENS_READ).is_ok());
    assert!(own.require_scope(SCOPE_ADMIN).is_err());
    assert!(own.require_not_self().is_err());
    assert_eq!(own.user_filter(None).ok(), Some(Some("alice".into())));
    assert_eq!(
        own.user_filter(Some("alice".into())).ok(),
        Some(Some("alice".into()))
    );
    assert!(own.user_filter(Some("bob".into())).is_err());
    assert_eq!(own.tenant_filter(None).ok(), Some(Some("acme".into())));
    assert!(own.tenant_filter(Some("other".into())).is_err());

    let reader = caller("activity:read", Some("acme"));
    assert!(reader.require_not_self().is_ok());
    assert_eq!(reader.user_filter(None).ok(), Some(None));
    assert_eq!(
        reader.user_filter(Some("bob".into())).ok(),
        Some(Some("bob".into()))
    );
    // `self:read` alone reads nothing without the token scopes' names.
    let none = caller("", Some("acme"));
    assert!(none.require_scope(SCOPE_ACTIVITY_READ).is_err());
}
