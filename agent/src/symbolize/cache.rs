//! A bounded map with two generations, a cheap stand-in for LRU: entries
//! land in the hot generation; when it is full the cold one is dropped and
//! the hot one becomes cold; touching a cold entry moves it back. What is
//! used at least once per generation stays; memory never exceeds the bound.

use std::hash::Hash;

use rustc_hash::FxHashMap;

pub struct Generations<K, V> {
    hot: FxHashMap<K, V>,
    cold: FxHashMap<K, V>,
    per_generation: usize,
}

impl<K: Hash + Eq + Clone, V> Generations<K, V> {
    /// At most `capacity` entries in all.
    pub fn new(capacity: usize) -> Self {
        Self {
            hot: FxHashMap::default(),
            cold: FxHashMap::default(),
            per_generation: (capacity / 2).max(1),
        }
    }

    pub fn get(&self, key: &K) -> Option<&V> {
        self.hot.get(key).or_else(|| self.cold.get(key))
    }

    /// Whether `key` is cached; a cold entry is moved back to the hot generation.
    pub fn touch(&mut self, key: &K) -> bool {
        if self.hot.contains_key(key) {
            return true;
        }
        match self.cold.remove(key) {
            Some(value) => {
                self.insert(key.clone(), value);
                true
            }
            None => false,
        }
    }

    pub fn insert(&mut self, key: K, value: V) {
        if self.hot.len() >= self.per_generation && !self.hot.contains_key(&key) {
            self.cold = std::mem::take(&mut self.hot);
        }
        self.hot.insert(key, value);
    }

    pub fn retain(&mut self, mut keep: impl FnMut(&K) -> bool) {
        self.hot.retain(|k, _| keep(k));
        self.cold.retain(|k, _| keep(k));
    }

    /// The most entries held at once.
    pub fn capacity(&self) -> usize {
        self.per_generation * 2
    }

    /// Entries in both generations.
    pub fn len(&self) -> usize {
        self.hot.len() + self.cold.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_holds_more_than_its_capacity() {
        let mut cache = Generations::new(100);
        for i in 0..10_000 {
            cache.insert(i, i);
            assert!(cache.len() <= 100);
        }
    }

    #[test]
    fn what_is_used_survives_what_is_not_is_dropped() {
        let mut cache = Generations::new(4);
        cache.insert("hot", 1);
        cache.insert("idle", 2);
        // A new generation begins: both move to cold.
        cache.insert("a", 3);
        assert!(cache.touch(&"hot"));
        // And another: "idle" was not touched during the last one.
        cache.insert("b", 4);
        assert_eq!(cache.get(&"hot"), Some(&1));
        assert_eq!(cache.get(&"idle"), None);
        assert!(!cache.touch(&"idle"));
    }
}
