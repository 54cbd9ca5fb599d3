//! RFC 7591 registration bodies: any bytes through serde_json into
//! `RegistrationRequest` and `validate`; `clean_name` and `ClientId::parse` on any text.
#![no_main]

use gatehouse::oauth::{
    client::{clean_name, ClientId, RegistrationRequest, MAX_CLIENT_NAME, MAX_REDIRECT_URIS},
    scope::ScopeSet,
};
use libfuzzer_sys::fuzz_target;

/// What a cleaned name may never contain: control characters and the format
/// characters that disguise text (bidi overrides, zero-width characters, the BOM).
fn assert_clean(name: &str) {
    assert!(!name.is_empty() && name.chars().count() <= MAX_CLIENT_NAME);
    assert_eq!(name, name.trim());
    for c in name.chars() {
        let format = matches!(c, '\u{00AD}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}'
            | '\u{2060}'..='\u{2064}' | '\u{2066}'..='\u{206F}' | '\u{FEFF}' | '\u{E0001}'
            | '\u{E0020}'..='\u{E007F}');
        assert!(!c.is_control() && !format, "{c:?} left in {name:?}");
    }
}

fuzz_target!(|data: &[u8]| {
    let known = ScopeSet::parse("read:articles write:articles").expect("scopes");
    if let Ok(text) = std::str::from_utf8(data) {
        if let Some(name) = clean_name(text) {
            assert_clean(&name);
            assert_eq!(
                clean_name(&name).as_deref(),
                Some(name.as_str()),
                "idempotent"
            );
        }
        if let Some(id) = ClientId::parse(text) {
            assert_eq!(id.as_str(), text);
            assert!(text.len() <= ClientId::MAX_LEN);
            assert!(text.bytes().all(|b| (0x20..=0x7e).contains(&b)));
        }
    }
    let Ok(request) = serde_json::from_slice::<RegistrationRequest>(data) else {
        return;
    };
    let name = request.client_name.clone();
    let Ok(valid) = request.validate(&known) else {
        return;
    };
    assert!(!valid.redirect_uris.is_empty() && valid.redirect_uris.len() <= MAX_REDIRECT_URIS);
    if let Some(scope) = &valid.scope {
        assert!(!scope.is_empty() && scope.is_subset_of(&known));
    }
    if let Some(cleaned) = &valid.client_name {
        assert_clean(cleaned);
    }
    assert_eq!(valid.client_name, name.as_deref().and_then(clean_name));
});
