//! The `[versions]` of a topology file, read with their line numbers: each version is a list of
//! declared attributes (optionally extending another version of the same file), or the name of a
//! built-in declaration (`personalization_v1`, `personalization_v2`: versions 1 and 2 of the
//! shipped `topologies/personalization.toml`).
//!
//! ```toml
//! [versions.1]
//! attributes = [
//!     { name = "plays", op = "count", events = "song" },
//!     { name = "skips", op = "count", events = "song", where = "ms_played < 30000" },
//! ]
//! [versions.2]
//! extends = 1
//! attributes = [{ name = "skip_rate", op = "ratio", num = "skips", den = "plays" }]
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use serde::de::{MapAccess, Visitor, value::MapAccessDeserializer};
use serde::{Deserialize, Deserializer};
use squall_operators::{AttributeDecl, Declaration};
use toml::Spanned;

use crate::spec::VersionSpec;

/// The shipped topology file, whose versions the built-in names refer to.
const BUILTIN_FILE: &str = include_str!("../personalization.toml");

/// The built-in declarations: name, and the version of [`BUILTIN_FILE`] it is.
const BUILTINS: [(&str, u32); 2] = [("personalization_v1", 1), ("personalization_v2", 2)];

/// What the span parser reads of the file; everything else is figment's.
#[derive(Deserialize)]
struct DeclFile {
    /// Legacy: the top-level version's built-in name.
    #[serde(default)]
    attributes: Option<Spanned<String>>,
    #[serde(default)]
    versions: BTreeMap<String, Spanned<Entry>>,
}

/// A `[versions]` entry.
enum Entry {
    Builtin(String),
    Declared(Table),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Table {
    #[serde(default)]
    extends: Option<Spanned<u32>>,
    attributes: Vec<Spanned<AttributeDecl>>,
}

impl<'de> Deserialize<'de> for Entry {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Entry;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "a table with `attributes = [...]` (and optionally `extends = <version>`), or a built-in name",
                )
            }
            fn visit_str<E>(self, s: &str) -> Result<Entry, E> {
                Ok(Entry::Builtin(s.to_owned()))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Entry, A::Error> {
                Table::deserialize(MapAccessDeserializer::new(map)).map(Entry::Declared)
            }
        }
        d.deserialize_any(V)
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// The error for a version the file does not declare.
pub fn missing(version: u32, versions: &BTreeMap<u32, VersionSpec>) -> String {
    let known: Vec<String> = versions.keys().map(u32::to_string).collect();
    format!(
        "no version {version} (versions in this file: {}); declare it under [versions.{version}] with attributes = [...]",
        if known.is_empty() { "none".into() } else { known.join(", ") }
    )
}

fn builtin(name: &str, line: usize) -> Result<VersionSpec, String> {
    let Some((_, version)) = BUILTINS.iter().find(|(n, _)| *n == name) else {
        let names: Vec<&str> = BUILTINS.iter().map(|(n, _)| *n).collect();
        return Err(format!(
            "line {line}: unknown built-in attributes {name:?} (built-in: {}); or declare the attributes: [versions.N] attributes = [{{ name = \"plays\", op = \"count\", events = \"song\" }}, ...]",
            names.join(", ")
        ));
    };
    let versions = parse(BUILTIN_FILE, 1, false).map_err(|e| format!("the built-in topology file: {e}"))?;
    let v = versions.get(version).ok_or_else(|| format!("the built-in topology file has no version {version}"))?;
    Ok(VersionSpec { attributes: Arc::clone(&v.attributes), builtin: Some(name.to_owned()) })
}

/// Reads and checks every version of the file `text`; `default` is the file's `version`.
/// `builtins` allows built-in names (the built-in file itself declares its versions).
pub fn parse(text: &str, default: u32, builtins: bool) -> Result<BTreeMap<u32, VersionSpec>, String> {
    let file: DeclFile = toml::from_str(text).map_err(|e| e.to_string().trim_end().to_owned())?;
    let mut numbered: BTreeMap<u32, (usize, &Entry)> = BTreeMap::new();
    for (key, entry) in &file.versions {
        let line = line_of(text, entry.span().start);
        match key.parse::<u32>() {
            Ok(v) if v >= 1 => {
                numbered.insert(v, (line, entry.get_ref()));
            }
            _ => return Err(format!("line {line}: versions.{key}: version keys are numbers >= 1, e.g. [versions.3]")),
        }
    }
    let mut out = BTreeMap::new();
    if let Some(name) = &file.attributes {
        let line = line_of(text, name.span().start);
        match numbered.get(&default) {
            Some((_, Entry::Builtin(other))) if other == name.get_ref() => {}
            Some((l, _)) => {
                return Err(format!(
                    "line {line}: `attributes` and [versions.{default}] (line {l}) both say what version {default} computes; keep one"
                ));
            }
            None => {}
        }
        if !builtins {
            return Err(format!("line {line}: a built-in name here"));
        }
        out.insert(default, builtin(name.get_ref(), line)?);
    }
    for (&version, &(line, entry)) in &numbered {
        let spec = match entry {
            Entry::Builtin(name) if builtins => builtin(name, line)?,
            Entry::Builtin(_) => return Err(format!("line {line}: a built-in name here")),
            Entry::Declared(_) => {
                let (decls, lines) = chain(version, &numbered, text, &mut Vec::new())?;
                let declaration = Declaration::new(&decls).map_err(|e| {
                    let at = lines.get(e.index).copied().unwrap_or(line);
                    format!("line {at}: version {version}, attribute `{}`: {}", e.name, e.message)
                })?;
                VersionSpec { attributes: Arc::new(declaration), builtin: None }
            }
        };
        out.insert(version, spec);
    }
    Ok(out)
}

/// The attributes of declared version `version` with the versions it extends first, and the
/// line of each.
fn chain(
    version: u32,
    numbered: &BTreeMap<u32, (usize, &Entry)>,
    text: &str,
    seen: &mut Vec<u32>,
) -> Result<(Vec<AttributeDecl>, Vec<usize>), String> {
    let (line, entry) = numbered[&version];
    if seen.contains(&version) {
        return Err(format!("line {line}: version {version} extends itself through {seen:?}; remove one `extends`"));
    }
    seen.push(version);
    let Entry::Declared(table) = entry else {
        let Entry::Builtin(name) = entry else { unreachable!() };
        let spec = builtin(name, line)?;
        return Err(format!(
            "line {line}: version {version} is the built-in {name:?} ({}); extend a version declared in this file",
            spec.attributes.summary()
        ));
    };
    let (mut decls, mut lines) = match &table.extends {
        None => (Vec::new(), Vec::new()),
        Some(base) => {
            let at = line_of(text, base.span().start);
            if !numbered.contains_key(base.get_ref()) {
                let known: Vec<String> = numbered.keys().map(u32::to_string).collect();
                return Err(format!(
                    "line {at}: version {version} extends {}, which this file does not declare (it has {})",
                    base.get_ref(),
                    known.join(", ")
                ));
            }
            chain(*base.get_ref(), numbered, text, seen)?
        }
    };
    for a in &table.attributes {
        decls.push(a.get_ref().clone());
        lines.push(line_of(text, a.span().start));
    }
    Ok((decls, lines))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEAD: &str = "name = \"p\"\nversion = 1\n";

    fn err(body: &str) -> String {
        parse(&format!("{HEAD}{body}"), 1, true).unwrap_err()
    }

    #[test]
    fn the_shipped_file_declares_v1_and_v2_and_builtins_name_them() {
        let versions = parse(BUILTIN_FILE, 1, false).unwrap();
        let names = |v: u32| versions[&v].attributes.summary();
        assert_eq!(names(1), "plays, skips, genre_plays, top_genres, ad_impressions, ad_categories, last_seen_ts");
        assert_eq!(names(2), format!("{}, skip_rate, genre_affinity", names(1)));
        let legacy = parse(&format!("{HEAD}attributes = \"personalization_v2\"\n"), 1, true).unwrap();
        assert_eq!(legacy[&1].attributes, versions[&2].attributes);
        assert_eq!(legacy[&1].describe(), "personalization_v2");
        let table =
            parse(&format!("{HEAD}[versions]\n1 = \"personalization_v1\"\n3 = \"personalization_v2\"\n"), 1, true)
                .unwrap();
        assert_eq!(table[&3].attributes, versions[&2].attributes);
    }

    #[test]
    fn errors_name_the_line_and_what_to_write() {
        let e = err(
            "[versions.1]\nattributes = [\n  { name = \"plays\", op = \"count\", events = \"song\" },\n  { name = \"x\", op = \"cnt\" },\n]\n",
        );
        assert!(e.starts_with("line 6: version 1, attribute `x`: unknown op `cnt`; use one of count"), "{e}");
        let e = err("[versions.1]\nattributes = [{ name = \"x\", op = \"count\", wher = \"ts > 1\" }]\n");
        assert!(e.contains("line 4") && e.contains("unknown field `wher`"), "{e}");
        let e = err("[versions.2]\nextends = 7\nattributes = [{ name = \"x\", op = \"count\" }]\n");
        assert!(e.contains("line 4: version 2 extends 7, which this file does not declare"), "{e}");
        let e = err("[versions]\n1 = \"personalization_v9\"\n");
        assert!(e.contains("line 4: unknown built-in attributes \"personalization_v9\""), "{e}");
        let e = err("[versions.x]\nattributes = []\n");
        assert!(e.contains("version keys are numbers"), "{e}");
        let e = err("[versions.1]\nextends = 1\nattributes = [{ name = \"x\", op = \"count\" }]\n");
        assert!(e.contains("extends itself"), "{e}");
        let e = err("attributes = \"personalization_v1\"\n[versions]\n1 = \"personalization_v2\"\n");
        assert!(e.contains("keep one"), "{e}");
        let e = err(
            "[versions.1]\nattributes = [\n { name = \"a\", op = \"count\", window = \"7d\", tile = \"5d\" },\n]\n",
        );
        assert!(
            e.starts_with("line 5: version 1, attribute `a`: window = \"7d\" is not a whole number of tiles"),
            "{e}"
        );
    }

    #[test]
    fn extends_puts_the_base_attributes_first() {
        let text = format!(
            "{HEAD}[versions.1]\nattributes = [{{ name = \"a\", op = \"count\" }}]\n[versions.2]\nextends = 1\nattributes = [{{ name = \"b\", op = \"ratio\", num = \"a\", den = \"a\" }}]\n"
        );
        let v = parse(&text, 1, true).unwrap();
        assert_eq!(v[&2].attributes.summary(), "a, b");
        assert_eq!(v[&2].describe(), "declared: a, b");
        let e = parse(
            &format!("{text}[versions.3]\nextends = 2\nattributes = [{{ name = \"a\", op = \"count\" }}]\n"),
            1,
            true,
        )
        .unwrap_err();
        assert!(e.contains("version 3, attribute `a`: the name is already used"), "{e}");
    }
}
