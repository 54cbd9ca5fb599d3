//! Places counted per key (a client, an address): at most so many held at once for
//! one key, each given back when dropped.

use std::{
    collections::HashMap,
    hash::Hash,
    sync::{Arc, Mutex},
};

/// How many places each key holds. Clones share the counts.
pub struct Places<K>(Arc<Mutex<HashMap<K, usize>>>);

impl<K> Clone for Places<K> {
    fn clone(&self) -> Self {
        Places(self.0.clone())
    }
}

impl<K> Default for Places<K> {
    fn default() -> Self {
        Places(Arc::default())
    }
}

/// One place of `key`, given back when dropped.
pub struct Place<K: Eq + Hash> {
    places: Places<K>,
    key: Option<K>,
}

impl<K: Eq + Hash + Clone> Places<K> {
    /// A place for `key`, unless it holds `max` already.
    pub fn take(&self, key: &K, max: usize) -> Option<Place<K>> {
        let mut counts = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let count = counts.entry(key.clone()).or_default();
        if *count >= max {
            return None;
        }
        *count += 1;
        Some(Place {
            places: self.clone(),
            key: Some(key.clone()),
        })
    }

    /// The places `key` holds now.
    pub fn held(&self, key: &K) -> usize {
        let counts = self.0.lock().unwrap_or_else(|e| e.into_inner());
        counts.get(key).copied().unwrap_or(0)
    }
}

impl<K: Eq + Hash> Drop for Place<K> {
    fn drop(&mut self) {
        let Some(key) = self.key.take() else { return };
        let mut counts = self.places.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = counts.get_mut(&key) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_holds_at_most_its_max_and_gets_places_back_on_drop() {
        let places = Places::default();
        let first = places.take(&"a", 2).expect("one");
        let _second = places.take(&"a", 2).expect("two");
        assert!(places.take(&"a", 2).is_none());
        assert!(
            places.take(&"b", 2).is_some(),
            "another key is not affected"
        );
        drop(first);
        assert_eq!(places.held(&"a"), 1);
        assert!(places.take(&"a", 2).is_some());
        assert_eq!(places.held(&"c"), 0);
    }
}
