//! `ScopeSet::parse` on any two strings: bounded, canonical, and obeying the set laws
//! that refresh and registration rely on (a refreshed grant never gains a scope).
#![no_main]

use gatehouse::oauth::scope::{ScopeSet, MAX_SCOPES};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (&str, &str)| {
    let raws = [input.0, input.1];
    let sets = raws.map(|raw| ScopeSet::parse(raw).ok());
    for (raw, set) in raws.iter().zip(&sets) {
        let Some(set) = set else { continue };
        assert!(set.len() <= MAX_SCOPES);
        for token in raw.split(' ').filter(|t| !t.is_empty()) {
            assert!(
                set.contains_str(token),
                "{token:?} was accepted but dropped"
            );
        }
        let shown = set.to_string();
        let again = ScopeSet::parse(&shown).expect("a displayed set parses");
        assert_eq!(&again, set);
        assert_eq!(again.to_string(), shown);
    }
    if let [Some(a), Some(b)] = &sets {
        let both = a.intersection(b);
        assert!(both.is_subset_of(a) && both.is_subset_of(b));
        assert_eq!(both, b.intersection(a));
        let either = a.union(b);
        assert!(a.is_subset_of(&either) && b.is_subset_of(&either));
        assert_eq!(a.is_subset_of(b), a.intersection(b) == *a);
        assert_eq!(a.is_subset_of(b) && b.is_subset_of(a), a == b);
    }
});
