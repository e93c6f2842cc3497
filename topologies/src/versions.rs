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
use squall_operators::attributes::DeclError;
use squall_operators::{AttributeDecl, Declaration};
use toml::Spanned;

/// The shipped topology file, whose versions the built-in names refer to.
const BUILTIN_FILE: &str = include_str!("../personalization.toml");

/// The built-in declarations: name, and the version of [`BUILTIN_FILE`] it is.
const BUILTINS: [(&str, u32); 2] = [("personalization_v1", 1), ("personalization_v2", 2)];

/// One version a topology file declares.
#[derive(Clone, Debug, PartialEq)]
pub struct VersionSpec {
    /// Its attributes.
    pub attributes: Arc<Declaration>,
    /// `personalization_v1` etc. when the file names a built-in declaration instead of writing one.
    pub builtin: Option<String>,
}

impl VersionSpec {
    /// How listings describe it: the built-in's name, or the attributes it answers.
    pub fn describe(&self) -> String {
        match &self.builtin {
            Some(name) => name.clone(),
            None => format!("declared: {}", self.attributes.summary()),
        }
    }
}

/// Why the `[versions]` of a file cannot be used; each error names the file's line.
#[derive(Debug, thiserror::Error)]
pub enum VersionsError {
    /// The file is not TOML, or a version table has a wrong or unknown key.
    #[error("{}", .0.to_string().trim_end())]
    Toml(toml::de::Error),
    /// A `[versions]` key that is no version number.
    #[error("line {line}: versions.{key}: version keys are numbers >= 1, e.g. [versions.3]")]
    Key {
        /// Its line.
        line: usize,
        /// The key.
        key: String,
    },
    /// Both the legacy `attributes` and `[versions.N]` say what the file's version computes.
    #[error(
        "line {line}: `attributes` and [versions.{version}] (line {other}) both say what version {version} computes; keep one"
    )]
    Twice {
        /// The line of `attributes`.
        line: usize,
        /// The file's version.
        version: u32,
        /// The line of `[versions.N]`.
        other: usize,
    },
    /// A built-in name where only declarations may be (the built-in file itself).
    #[error("line {0}: a built-in name here")]
    BuiltinHere(usize),
    /// A name that is no built-in declaration.
    #[error(
        "line {line}: unknown built-in attributes {name:?} (built-in: {}); or declare the attributes: [versions.N] attributes = [{{ name = \"plays\", op = \"count\", events = \"song\" }}, ...]",
        BUILTINS.map(|(n, _)| n).join(", ")
    )]
    UnknownBuiltin {
        /// Its line.
        line: usize,
        /// The name.
        name: String,
    },
    /// The shipped file does not read (a bug in the build, not in the user's file).
    #[error("the built-in topology file: {0}")]
    BuiltinFile(Box<VersionsError>),
    /// The shipped file lacks a version a built-in name refers to.
    #[error("the built-in topology file has no version {0}")]
    BuiltinVersion(u32),
    /// A declaration that does not check.
    #[error("line {line}: version {version}, attribute `{}`: {}", .error.name, .error.message)]
    Attribute {
        /// The line of the attribute.
        line: usize,
        /// The version.
        version: u32,
        /// What is wrong.
        #[source]
        error: DeclError,
    },
    /// `extends` in a loop.
    #[error("line {line}: version {version} extends itself through {seen:?}; remove one `extends`")]
    ExtendsItself {
        /// The line of the version.
        line: usize,
        /// The version.
        version: u32,
        /// The versions on the way.
        seen: Vec<u32>,
    },
    /// `extends` of a built-in version.
    #[error(
        "line {line}: version {version} is the built-in {name:?} ({summary}); extend a version declared in this file"
    )]
    ExtendsBuiltin {
        /// The line of the version.
        line: usize,
        /// The version.
        version: u32,
        /// The built-in's name.
        name: String,
        /// Its attributes.
        summary: String,
    },
    /// `extends` of a version the file does not declare.
    #[error("line {line}: version {version} extends {base}, which this file does not declare (it has {})", join(.known))]
    ExtendsUndeclared {
        /// The line of `extends`.
        line: usize,
        /// The version.
        version: u32,
        /// The version it extends.
        base: u32,
        /// The versions declared.
        known: Vec<u32>,
    },
    /// A version the file does not declare.
    #[error(
        "no version {version} (versions in this file: {}); declare it under [versions.{version}] with attributes = [...]",
        if .known.is_empty() { "none".to_owned() } else { join(.known) }
    )]
    Missing {
        /// The version asked for.
        version: u32,
        /// The versions declared.
        known: Vec<u32>,
    },
}

fn join(versions: &[u32]) -> String {
    versions.iter().map(u32::to_string).collect::<Vec<_>>().join(", ")
}

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
pub fn missing(version: u32, versions: &BTreeMap<u32, VersionSpec>) -> VersionsError {
    VersionsError::Missing { version, known: versions.keys().copied().collect() }
}

fn builtin(name: &str, line: usize) -> Result<VersionSpec, VersionsError> {
    let Some((_, version)) = BUILTINS.iter().find(|(n, _)| *n == name) else {
        return Err(VersionsError::UnknownBuiltin { line, name: name.to_owned() });
    };
    let versions = parse(BUILTIN_FILE, 1, false).map_err(|e| VersionsError::BuiltinFile(Box::new(e)))?;
    let v = versions.get(version).ok_or(VersionsError::BuiltinVersion(*version))?;
    Ok(VersionSpec { attributes: Arc::clone(&v.attributes), builtin: Some(name.to_owned()) })
}

/// Reads and checks every version of the file `text`; `default` is the file's `version`.
/// `builtins` allows built-in names (the built-in file itself declares its versions).
pub fn parse(text: &str, default: u32, builtins: bool) -> Result<BTreeMap<u32, VersionSpec>, VersionsError> {
    let file: DeclFile = toml::from_str(text).map_err(VersionsError::Toml)?;
    let mut numbered: BTreeMap<u32, (usize, &Entry)> = BTreeMap::new();
    for (key, entry) in &file.versions {
        let line = line_of(text, entry.span().start);
        match key.parse::<u32>() {
            Ok(v) if v >= 1 => {
                numbered.insert(v, (line, entry.get_ref()));
            }
            _ => return Err(VersionsError::Key { line, key: key.clone() }),
        }
    }
    let mut out = BTreeMap::new();
    if let Some(name) = &file.attributes {
        let line = line_of(text, name.span().start);
        match numbered.get(&default) {
            Some((_, Entry::Builtin(other))) if other == name.get_ref() => {}
            Some((other, _)) => return Err(VersionsError::Twice { line, version: default, other: *other }),
            None => {}
        }
        if !builtins {
            return Err(VersionsError::BuiltinHere(line));
        }
        out.insert(default, builtin(name.get_ref(), line)?);
    }
    for (&version, &(line, entry)) in &numbered {
        let spec = match entry {
            Entry::Builtin(name) if builtins => builtin(name, line)?,
            Entry::Builtin(_) => return Err(VersionsError::BuiltinHere(line)),
            Entry::Declared(_) => {
                let (decls, lines) = chain(version, &numbered, text, &mut Vec::new())?;
                let declaration = Declaration::new(&decls).map_err(|error| VersionsError::Attribute {
                    line: lines.get(error.index).copied().unwrap_or(line),
                    version,
                    error,
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
) -> Result<(Vec<AttributeDecl>, Vec<usize>), VersionsError> {
    let (line, entry) = numbered[&version];
    if seen.contains(&version) {
        return Err(VersionsError::ExtendsItself { line, version, seen: seen.clone() });
    }
    seen.push(version);
    let table = match entry {
        Entry::Declared(table) => table,
        Entry::Builtin(name) => {
            let summary = builtin(name, line)?.attributes.summary();
            return Err(VersionsError::ExtendsBuiltin { line, version, name: name.clone(), summary });
        }
    };
    let (mut decls, mut lines) = match &table.extends {
        None => (Vec::new(), Vec::new()),
        Some(base) => {
            let at = line_of(text, base.span().start);
            if !numbered.contains_key(base.get_ref()) {
                let known = numbered.keys().copied().collect();
                return Err(VersionsError::ExtendsUndeclared { line: at, version, base: *base.get_ref(), known });
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
        parse(&format!("{HEAD}{body}"), 1, true).unwrap_err().to_string()
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
        .unwrap_err()
        .to_string();
        assert!(e.contains("version 3, attribute `a`: the name is already used"), "{e}");
    }
}
