//! Interned strings for the small vocabularies of enrichment values (genres, artists, categories).

use std::sync::{Arc, Mutex, OnceLock};

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
///
/// Reading a name never locks: names live in an append-only table of chunks (chunk `k` holds
/// `64 << k` names) that never move once allocated, and each slot is written once, before its
/// symbol is handed out. Interning a new name takes a mutex so that symbols stay dense.
#[derive(Clone)]
pub struct Symbols {
    table: Arc<Table>,
}

struct Table {
    ids: DashMap<Arc<str>, Sym>,
    names: [OnceLock<Chunk>; CHUNKS],
    /// How many symbols were handed out; held while a new name is interned.
    len: Mutex<u32>,
}

/// A run of name slots, each written once.
type Chunk = Box<[OnceLock<Arc<str>>]>;

/// log2 of the size of the first chunk of names.
const FIRST_CHUNK_BITS: u32 = 6;
/// Enough chunks for 2^31 symbols (callers may use the top bit of a symbol as a flag).
const CHUNKS: usize = 25;
/// Symbols a table can hold: `64 * (2^25 - 1)`.
const CAPACITY: u64 = ((1 << CHUNKS) - 1) << FIRST_CHUNK_BITS;

/// Where symbol `i` lives: (chunk, index in the chunk).
#[inline]
fn slot(i: u32) -> (usize, usize) {
    let n = u64::from(i) + (1 << FIRST_CHUNK_BITS);
    let chunk = 63 - n.leading_zeros() - FIRST_CHUNK_BITS;
    (chunk as usize, (n - (1 << (chunk + FIRST_CHUNK_BITS))) as usize)
}

impl Default for Symbols {
    fn default() -> Self {
        let s = Symbols {
            table: Arc::new(Table {
                ids: DashMap::new(),
                names: [const { OnceLock::new() }; CHUNKS],
                len: Mutex::new(0),
            }),
        };
        let unknown = s.intern(UNKNOWN);
        debug_assert_eq!(unknown, Sym(0));
        s
    }
}

impl Symbols {
    /// The symbol of `name`, interning it on first use.
    ///
    /// # Panics
    /// If the table already holds `64 * (2^25 - 1)` (about 2^31) names.
    pub fn intern(&self, name: &str) -> Sym {
        if let Some(sym) = self.table.ids.get(name) {
            return *sym;
        }
        let mut len = self.table.len.lock().unwrap_or_else(|p| p.into_inner());
        // Another thread may have interned it while this one waited for the lock.
        if let Some(sym) = self.table.ids.get(name) {
            return *sym;
        }
        assert!(u64::from(*len) < CAPACITY, "the symbol table is full ({CAPACITY} names)");
        let sym = Sym(*len);
        let name: Arc<str> = Arc::from(name);
        let (chunk, at) = slot(sym.0);
        let names = self.table.names[chunk]
            .get_or_init(|| (0..1usize << (chunk as u32 + FIRST_CHUNK_BITS)).map(|_| OnceLock::new()).collect());
        // The name is readable before anyone can see its symbol.
        let _ = names[at].set(Arc::clone(&name));
        self.table.ids.insert(name, sym);
        *len += 1;
        sym
    }

    /// The string of a symbol made by this table, borrowed from the table (no lock, no copy).
    ///
    /// # Panics
    /// If `sym` was not made by this table (a bug, not an input error).
    #[inline]
    pub fn name(&self, sym: Sym) -> &str {
        self.slot(sym)
    }

    /// The string of a symbol made by this table, shared.
    ///
    /// # Panics
    /// If `sym` was not made by this table (a bug, not an input error).
    pub fn resolve(&self, sym: Sym) -> Arc<str> {
        Arc::clone(self.slot(sym))
    }

    #[inline]
    fn slot(&self, sym: Sym) -> &Arc<str> {
        let (chunk, at) = slot(sym.0);
        self.table
            .names
            .get(chunk)
            .and_then(OnceLock::get)
            .and_then(|names| names.get(at)?.get())
            .unwrap_or_else(|| panic!("symbol {} was not made by this table", sym.0))
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
        assert_eq!(s.name(rock), "rock");
    }

    #[test]
    fn clones_share_the_table() {
        let s = Symbols::default();
        let t = s.clone();
        let x = t.intern("x");
        assert_eq!(s.intern("x"), x);
        assert_eq!(s.name(x), "x");
    }

    #[test]
    fn slots_cover_the_symbols_without_gaps() {
        let mut expected = (0, 0);
        for i in 0..100_000u32 {
            assert_eq!(slot(i), expected, "symbol {i}");
            expected.1 += 1;
            if expected.1 == 1 << (expected.0 as u32 + FIRST_CHUNK_BITS) {
                expected = (expected.0 + 1, 0);
            }
        }
        let last = u32::try_from(CAPACITY - 1).expect("fits");
        assert_eq!(slot(last), (CHUNKS - 1, (1 << (CHUNKS as u32 - 1 + FIRST_CHUNK_BITS)) - 1));
    }

    #[test]
    fn names_across_chunks_resolve_from_many_threads() {
        let s = Symbols::default();
        let syms: Vec<Vec<(Sym, String)>> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..4)
                .map(|t| {
                    let s = s.clone();
                    scope.spawn(move || {
                        (0..3000)
                            .map(|i| {
                                // Half the names are shared between threads, half are their own.
                                let name = if i % 2 == 0 { format!("shared{i}") } else { format!("t{t}-{i}") };
                                let sym = s.intern(&name);
                                assert_eq!(s.name(sym), name);
                                (sym, name)
                            })
                            .collect()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().expect("thread")).collect()
        });
        let mut seen = std::collections::HashMap::new();
        for (sym, name) in syms.into_iter().flatten() {
            assert_eq!(s.name(sym), name);
            assert_eq!(*seen.entry(name).or_insert(sym), sym);
        }
        // Dense: 1 (unknown) + 1500 shared + 4 * 1500 own names.
        assert_eq!(seen.len(), 7500);
        assert_eq!(s.intern("a new one"), Sym(7501));
    }

    #[test]
    #[should_panic(expected = "not made by this table")]
    fn a_foreign_symbol_panics() {
        Symbols::default().name(Sym(5));
    }
}
