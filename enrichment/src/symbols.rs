//! Interned strings for the small vocabularies of enrichment values (genres, artists, categories).

use std::sync::{Arc, RwLock};

use dashmap::DashMap;

/// An interned string: an index into a process-wide [`Symbols`] table.
///
/// Symbols are only meaningful inside the process that made them; anything that leaves the
/// process (checkpoints, HTTP answers, exchanges between processes) carries the string.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Sym(pub u32);

/// The value that enriches an id missing from the store.
pub const UNKNOWN: &str = "unknown";

/// A process-wide string interner; `Sym(0)` is always [`UNKNOWN`].
#[derive(Clone)]
pub struct Symbols {
    ids: Arc<DashMap<Arc<str>, Sym>>,
    names: Arc<RwLock<Vec<Arc<str>>>>,
}

impl Default for Symbols {
    fn default() -> Self {
        let s = Symbols { ids: Arc::new(DashMap::new()), names: Arc::new(RwLock::new(Vec::new())) };
        let unknown = s.intern(UNKNOWN);
        debug_assert_eq!(unknown, Sym(0));
        s
    }
}

impl Symbols {
    /// The symbol of `name`, interning it on first use.
    pub fn intern(&self, name: &str) -> Sym {
        if let Some(sym) = self.ids.get(name) {
            return *sym;
        }
        // Take the write lock on the names before inserting, so ids are dense and unique.
        let mut names = self.names.write().unwrap_or_else(|p| p.into_inner());
        *self.ids.entry(Arc::from(name)).or_insert_with(|| {
            let sym = Sym(names.len() as u32);
            names.push(Arc::from(name));
            sym
        })
    }

    /// The string of a symbol made by this table.
    ///
    /// # Panics
    /// If `sym` was not made by this table (a bug, not an input error).
    pub fn resolve(&self, sym: Sym) -> Arc<str> {
        let names = self.names.read().unwrap_or_else(|p| p.into_inner());
        Arc::clone(&names[sym.0 as usize])
    }

    /// The symbol for [`UNKNOWN`].
    pub fn unknown(&self) -> Sym {
        Sym(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interning_is_stable_and_dense() {
        let s = Symbols::default();
        assert_eq!(s.intern(UNKNOWN), Sym(0));
        let rock = s.intern("rock");
        let jazz = s.intern("jazz");
        assert_eq!(s.intern("rock"), rock);
        assert_eq!((rock, jazz), (Sym(1), Sym(2)));
        assert_eq!(&*s.resolve(jazz), "jazz");
    }

    #[test]
    fn clones_share_the_table() {
        let s = Symbols::default();
        let t = s.clone();
        let x = t.intern("x");
        assert_eq!(s.intern("x"), x);
    }
}
