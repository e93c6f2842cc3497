//! How a user's state reads as attributes: straight into JSON ([`AttributesView`], what queries
//! use) or as owned values ([`Attributes`], for tests, the oracle and comparisons).
//!
//! # Notes
//! Attributes answer in declaration order (hidden ones left out). Maps answer with their keys in
//! name order; `top_k` ranks by value descending, then name ascending; a `ratio` whose
//! denominator is 0 is 0; a value that is missing (`min`/`max` with no event yet, `last` outside
//! its window) is null.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{MapAccess, SeqAccess, Visitor};
use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use squall_enrichment::{Sym, Symbols};

use super::plan::{Plan, Reader, Store, Stored};
use super::state::{Num, UserState};

/// One attribute's value, owned.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// No value (JSON null).
    Null,
    /// An integer.
    Int(i64),
    /// A float.
    Float(f64),
    /// A text.
    Text(String),
    /// An array of texts (`top_k`).
    List(Vec<String>),
    /// An object (maps), keys in name order.
    Map(BTreeMap<String, Value>),
}

impl Value {
    /// Whether `self` and `other` are the same value, numbers within `rel` relative tolerance
    /// (floats may be summed in different orders); an integer and a float compare as numbers.
    pub fn agrees(&self, other: &Value, rel: f64) -> bool {
        fn close(a: f64, b: f64, rel: f64) -> bool {
            a == b || (a - b).abs() <= rel * a.abs().max(b.abs())
        }
        match (self, other) {
            (Value::Int(a), Value::Int(b)) => a == b,
            (Value::Int(a), Value::Float(b)) | (Value::Float(b), Value::Int(a)) => close(*a as f64, *b, rel),
            (Value::Float(a), Value::Float(b)) => close(*a, *b, rel),
            (Value::Map(a), Value::Map(b)) => {
                a.len() == b.len() && a.iter().zip(b).all(|((ka, va), (kb, vb))| ka == kb && va.agrees(vb, rel))
            }
            (a, b) => a == b,
        }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&serde_json::to_string(self).map_err(|_| fmt::Error)?)
    }
}

impl Serialize for Value {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Value::Null => s.serialize_none(),
            Value::Int(n) => s.serialize_i64(*n),
            Value::Float(x) => s.serialize_f64(*x),
            Value::Text(t) => s.serialize_str(t),
            Value::List(l) => l.serialize(s),
            Value::Map(m) => m.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Value;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an attribute value")
            }
            fn visit_unit<E>(self) -> Result<Value, E> {
                Ok(Value::Null)
            }
            fn visit_none<E>(self) -> Result<Value, E> {
                Ok(Value::Null)
            }
            fn visit_i64<E>(self, n: i64) -> Result<Value, E> {
                Ok(Value::Int(n))
            }
            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<Value, E> {
                i64::try_from(n).map(Value::Int).map_err(|_| E::custom("integer out of range"))
            }
            fn visit_f64<E>(self, x: f64) -> Result<Value, E> {
                Ok(Value::Float(x))
            }
            fn visit_str<E>(self, t: &str) -> Result<Value, E> {
                Ok(Value::Text(t.to_owned()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
                let mut out = Vec::new();
                while let Some(t) = seq.next_element::<String>()? {
                    out.push(t);
                }
                Ok(Value::List(out))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
                let mut out = BTreeMap::new();
                while let Some((k, v)) = map.next_entry::<String, Value>()? {
                    out.insert(k, v);
                }
                Ok(Value::Map(out))
            }
        }
        d.deserialize_any(V)
    }
}

/// A user's attributes, owned, in answer order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Attributes(pub Vec<(String, Value)>);

impl Attributes {
    /// The value of attribute `name`.
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.0.iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }

    /// The attribute names, in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(n, _)| n.as_str())
    }

    /// The first difference from `expected` (names, order, values; floats within `rel`).
    pub fn difference(&self, expected: &Attributes, rel: f64) -> Option<String> {
        let (a, e): (Vec<&str>, Vec<&str>) = (self.names().collect(), expected.names().collect());
        if a != e {
            return Some(format!("attributes {a:?}, expected {e:?}"));
        }
        for ((name, got), (_, want)) in self.0.iter().zip(&expected.0) {
            if !got.agrees(want, rel) {
                return Some(format!("{name}: got {got}, expected {want}"));
            }
        }
        None
    }
}

impl Serialize for Attributes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for Attributes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Attributes;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object of attributes")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Attributes, A::Error> {
                let mut out = Vec::new();
                while let Some(entry) = map.next_entry::<String, Value>()? {
                    out.push(entry);
                }
                Ok(Attributes(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// A user's attributes as they serialise, written straight from the state with names borrowed
/// from the symbol table: answering a query copies no names.
#[derive(Clone, Copy)]
pub struct AttributesView<'a> {
    state: &'a UserState,
    plan: &'a Plan,
    symbols: &'a Symbols,
}

impl<'a> AttributesView<'a> {
    /// The view of `state` under `plan`.
    pub fn new(state: &'a UserState, plan: &'a Plan, symbols: &'a Symbols) -> Self {
        AttributesView { state, plan, symbols }
    }

    /// Roughly how many bytes of JSON this is, to size a buffer.
    pub fn json_len_hint(&self) -> usize {
        32 * self.plan.readers.len() + 6 * self.state.words().len()
    }

    /// The owned attributes.
    pub fn to_attributes(&self) -> Attributes {
        let json = serde_json::to_vec(self).unwrap_or_default();
        serde_json::from_slice(&json).unwrap_or_default()
    }

    /// A map attribute's entries as (name, value), in name order.
    fn map(&self, s: &Stored) -> Vec<(&'a str, Num)> {
        let mut raw = Vec::new();
        self.state.entries(self.plan, s, &mut raw);
        let mut named: Vec<(&'a str, Num)> = raw.into_iter().map(|(k, v)| (self.symbols.name(Sym(k)), v)).collect();
        named.sort_unstable_by(|a, b| a.0.cmp(b.0));
        named
    }

    fn number(&self, i: usize) -> Num {
        match self.plan.stored(i) {
            Some(s) => self.state.number(self.plan, s),
            None => Num::Null,
        }
    }
}

struct Number(Num);

impl Serialize for Number {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Num::Int(n) => s.serialize_i64(n),
            Num::Float(x) => s.serialize_f64(x),
            Num::Null => s.serialize_none(),
        }
    }
}

struct Entries<'a>(&'a [(&'a str, Num)]);

impl Serialize for Entries<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in self.0 {
            map.serialize_entry(k, &Number(*v))?;
        }
        map.end()
    }
}

struct Names<'a>(&'a [(&'a str, Num)], usize);

impl Serialize for Names<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let n = self.0.len().min(self.1);
        let mut seq = s.serialize_seq(Some(n))?;
        for (name, _) in &self.0[..n] {
            seq.serialize_element(name)?;
        }
        seq.end()
    }
}

impl Serialize for AttributesView<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let attributes = &self.plan.declaration().attributes;
        let shown = attributes.iter().filter(|a| !a.hidden).count();
        let mut out = serializer.serialize_map(Some(shown))?;
        for (i, a) in attributes.iter().enumerate() {
            if a.hidden {
                continue;
            }
            match &self.plan.readers[i] {
                Reader::Stored(s) => match s.store {
                    Store::Map { .. } => out.serialize_entry(&a.name, &Entries(&self.map(s)))?,
                    Store::Last { .. } if s.text => {
                        let name = self.state.last(s).map(|v| self.symbols.name(Sym(v as u32)));
                        out.serialize_entry(&a.name, &name)?
                    }
                    _ => out.serialize_entry(&a.name, &Number(self.state.number(self.plan, s)))?,
                },
                Reader::TopK { of, k } => {
                    let mut ranked = match self.plan.stored(*of) {
                        Some(s) => self.map(s),
                        None => Vec::new(),
                    };
                    // Stable: equal values keep name order.
                    ranked.sort_by(|a, b| a.1.rank(b.1));
                    out.serialize_entry(&a.name, &Names(&ranked, *k))?
                }
                Reader::Ratio { num, den } => {
                    let value = match (self.number(*num).as_f64(), self.number(*den).as_f64()) {
                        (Some(_), Some(0.0)) => Num::Float(0.0),
                        (Some(n), Some(d)) => Num::Float(n / d),
                        _ => Num::Null,
                    };
                    out.serialize_entry(&a.name, &Number(value))?
                }
            }
        }
        out.end()
    }
}
