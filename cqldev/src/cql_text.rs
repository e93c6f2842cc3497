//! Statement-text fixes applied before kassandra parses a QUERY or PREPARE.
//!
//! kassandra's parser is strict about keyword spelling (`AND` but not `and`, `PRIMARY KEY` with
//! exactly one space, `map<` but not `MAP<`) and lenient about everything after the part it
//! understood: text it cannot parse is silently dropped. A `WHERE` clause it cannot read
//! therefore turns into a full scan, a `DELETE` loses conditions, `LIMIT ?` is ignored.
//!
//! * [`normalize`] rewrites keyword spelling so ordinary CQL reaches kassandra in the form it
//!   accepts (outside string literals and quoted identifiers only).
//! * [`check`] rejects the statement shapes that kassandra would silently misread (and counter
//!   tables, which it half-creates before panicking), so callers get an error instead of wrong rows.

use std::borrow::Cow;

/// Keywords kassandra matches case-sensitively; written upper-case they always parse.
const UPPER_WORDS: &[&str] = &["AND", "FROM", "WITH", "USE", "REPLICATION", "ASC", "DESC"];

/// Keyword sequences kassandra matches with exactly one space between the words.
const SEQUENCES: &[&[&str]] = &[
    &["PRIMARY", "KEY"],
    &["CLUSTERING", "ORDER", "BY"],
    &["COMPACT", "STORAGE"],
    &["CREATE", "KEYSPACE"],
    &["CREATE", "TABLE"],
    &["CREATE", "TYPE"],
    &["IF", "NOT", "EXISTS"],
];

/// Type constructors kassandra only accepts in lower case (`map<`, not `MAP<`).
const GENERIC_TYPES: &[&str] = &["map", "set", "list", "frozen", "tuple"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Unquoted identifier or keyword.
    Word,
    /// Something starting with a digit: `42`, `1.5e3`, `0xcafe`.
    Number,
    /// `'...'` (escaped: contains `''`) or `$$...$$` (escaped = true as well: kassandra can't read it).
    Str { escaped: bool },
    /// `"..."`.
    QuotedIdent,
    /// `?` or `:name`.
    Marker,
    /// A UUID constant.
    Uuid,
    /// Punctuation and operators (`<=`, `>=`, `!=` are one token).
    Symbol,
}

#[derive(Debug, Clone, Copy)]
struct Token<'a> {
    kind: Kind,
    text: &'a str,
    start: usize,
    end: usize,
}

impl Token<'_> {
    fn is_word(&self, word: &str) -> bool {
        self.kind == Kind::Word && self.text.eq_ignore_ascii_case(word)
    }

    fn is_symbol(&self, symbol: &str) -> bool {
        self.kind == Kind::Symbol && self.text == symbol
    }
}

struct Lexed<'a> {
    tokens: Vec<Token<'a>>,
    /// Byte ranges of comments (`--`, `//`, `/* */`).
    comments: Vec<(usize, usize)>,
}

fn is_uuid_at(bytes: &[u8]) -> bool {
    const GROUPS: [usize; 5] = [8, 4, 4, 4, 12];
    let mut at = 0;
    for (i, len) in GROUPS.iter().enumerate() {
        if i > 0 {
            if bytes.get(at) != Some(&b'-') {
                return false;
            }
            at += 1;
        }
        for _ in 0..*len {
            match bytes.get(at) {
                Some(b) if b.is_ascii_hexdigit() => at += 1,
                _ => return false,
            }
        }
    }
    !bytes.get(at).is_some_and(|b| b.is_ascii_alphanumeric() || *b == b'_')
}

fn is_ident(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

/// The end of the text quoted by `quote` whose opening quote is at `i` (a doubled quote stands for
/// one), and whether it holds a doubled quote; `None` when it is not closed.
fn end_of_quoted(b: &[u8], i: usize, quote: u8) -> Option<(usize, bool)> {
    let (mut i, mut escaped) = (i + 1, false);
    loop {
        match *b.get(i)? {
            c if c == quote && b.get(i + 1) == Some(&quote) => {
                escaped = true;
                i += 2;
            }
            c if c == quote => return Some((i + 1, escaped)),
            _ => i += 1,
        }
    }
}

/// The end of the identifier characters from `i`.
fn end_of_word(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && is_ident(b[i]) {
        i += 1;
    }
    i
}

/// The end of the number that starts at `i` (digits, letters, `.`, and a sign after an exponent).
fn end_of_number(b: &[u8], mut i: usize) -> usize {
    while i < b.len() {
        let d = b[i];
        let exponent_sign = (d == b'+' || d == b'-') && matches!(b[i - 1], b'e' | b'E');
        if is_ident(d) || d == b'.' || exponent_sign {
            i += 1;
        } else {
            break;
        }
    }
    i
}

/// Splits `q` into tokens and comment ranges: one `match` on the first character of each token.
fn lex(q: &str) -> Result<Lexed<'_>, &'static str> {
    let b = q.as_bytes();
    let mut tokens = Vec::new();
    let mut comments = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let start = i;
        let kind = match c {
            _ if c.is_ascii_whitespace() => {
                i += 1;
                continue;
            }
            // `--` and `//` comments run to the end of the line.
            b'-' | b'/' if b.get(i + 1) == Some(&c) => {
                i = q[i..].find('\n').map_or(b.len(), |n| i + n);
                comments.push((start, i));
                continue;
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                i = q[i + 2..].find("*/").map(|n| i + 2 + n + 2).ok_or("unterminated /* comment")?;
                comments.push((start, i));
                continue;
            }
            b'\'' => {
                let (end, escaped) = end_of_quoted(b, i, b'\'').ok_or("unterminated string literal")?;
                i = end;
                Kind::Str { escaped }
            }
            b'$' if b.get(i + 1) == Some(&b'$') => {
                i = q[i + 2..].find("$$").map(|n| i + 2 + n + 2).ok_or("unterminated $$ string literal")?;
                Kind::Str { escaped: true }
            }
            b'"' => {
                i = end_of_quoted(b, i, b'"').ok_or("unterminated quoted identifier")?.0;
                Kind::QuotedIdent
            }
            _ if c.is_ascii_hexdigit() && is_uuid_at(&b[i..]) => {
                i += 36;
                Kind::Uuid
            }
            _ if c.is_ascii_digit() => {
                i = end_of_number(b, i);
                Kind::Number
            }
            _ if c.is_ascii_alphabetic() || c == b'_' => {
                i = end_of_word(b, i);
                Kind::Word
            }
            b'?' => {
                i += 1;
                Kind::Marker
            }
            b':' if b.get(i + 1).is_some_and(|n| n.is_ascii_alphabetic() || *n == b'_') => {
                i = end_of_word(b, i + 1);
                Kind::Marker
            }
            b'<' | b'>' | b'!' if b.get(i + 1) == Some(&b'=') => {
                i += 2;
                Kind::Symbol
            }
            _ => {
                // One character, which may be multi-byte.
                i += q[i..].chars().next().map_or(1, char::len_utf8);
                Kind::Symbol
            }
        };
        tokens.push(Token { kind, text: &q[start..i], start, end: i });
    }
    Ok(Lexed { tokens, comments })
}

/// Rewrites keyword spelling into the form kassandra's parser accepts and blanks out comments.
///
/// Identifiers are left alone (kassandra lower-cases them itself), as is everything inside
/// string literals and quoted identifiers. Text that does not lex is returned unchanged, so
/// kassandra reports the syntax error.
pub fn normalize(q: &str) -> Cow<'_, str> {
    let Ok(lexed) = lex(q) else {
        return Cow::Borrowed(q);
    };
    let tokens = &lexed.tokens;
    let mut edits: Vec<(usize, usize, String)> =
        lexed.comments.iter().map(|&(start, end)| (start, end, " ".to_owned())).collect();

    let mut i = 0;
    'tokens: while i < tokens.len() {
        let token = tokens[i];
        if token.kind != Kind::Word {
            i += 1;
            continue;
        }
        if tokens.get(i + 1).is_some_and(|next| next.is_symbol("<") && next.start == token.end) {
            let lower = token.text.to_ascii_lowercase();
            if GENERIC_TYPES.contains(&lower.as_str()) && lower != token.text {
                edits.push((token.start, token.end, lower));
            }
            i += 1;
            continue;
        }
        for sequence in SEQUENCES {
            let matches = sequence.len() <= tokens.len() - i
                && sequence.iter().zip(&tokens[i..]).all(|(word, token)| token.is_word(word));
            if matches {
                let last = tokens[i + sequence.len() - 1];
                let canonical = sequence.join(" ");
                if q[token.start..last.end] != canonical {
                    edits.push((token.start, last.end, canonical));
                }
                i += sequence.len();
                continue 'tokens;
            }
        }
        if let Some(word) = UPPER_WORDS.iter().find(|word| token.is_word(word))
            && token.text != *word
        {
            edits.push((token.start, token.end, (*word).to_owned()));
        }
        i += 1;
    }

    if edits.is_empty() {
        return Cow::Borrowed(q);
    }
    edits.sort_by_key(|edit| edit.0);
    let mut out = String::with_capacity(q.len());
    let mut at = 0;
    for (start, end, replacement) in edits {
        out.push_str(&q[at..start]);
        out.push_str(&replacement);
        at = end;
    }
    out.push_str(&q[at..]);
    Cow::Owned(out)
}

fn unsupported(what: &str) -> String {
    format!(
        "squall-cql-dev (kassandra engine) would silently misread this statement, so it is rejected: {what}. \
         ScyllaDB/Cassandra accept it; keep dev/test statements to `column = value` conditions joined by AND, \
         with values bound as ? markers"
    )
}

fn describe(token: Option<&Token<'_>>) -> String {
    token.map_or_else(|| "end of statement".to_owned(), |t| format!("`{}`", t.text))
}

/// Finds the first word `word` outside parentheses, searching from `from`.
fn find_top_level(tokens: &[Token<'_>], from: usize, word: &str) -> Option<usize> {
    let mut depth = 0i32;
    for (i, token) in tokens.iter().enumerate().skip(from) {
        if token.is_symbol("(") || token.is_symbol("[") || token.is_symbol("{") {
            depth += 1;
        } else if token.is_symbol(")") || token.is_symbol("]") || token.is_symbol("}") {
            depth -= 1;
        } else if depth == 0 && token.is_word(word) {
            return Some(i);
        }
    }
    None
}

/// Checks `column = value [AND column = value ...]` starting at `at`; returns where it ends.
fn check_relations(tokens: &[Token<'_>], mut at: usize) -> Result<usize, String> {
    loop {
        let column = tokens.get(at);
        match column {
            Some(t) if t.is_word("TOKEN") => return Err(unsupported("token() conditions")),
            Some(t) if t.kind == Kind::Word => {}
            Some(t) if t.is_symbol("(") => return Err(unsupported("multi-column (tuple) conditions")),
            Some(t) if t.kind == Kind::QuotedIdent => return Err(unsupported("quoted identifiers in WHERE")),
            other => return Err(unsupported(&format!("expected a column name in WHERE, found {}", describe(other)))),
        }
        let operator = tokens.get(at + 1);
        match operator {
            Some(t) if t.is_symbol("=") => {}
            Some(t) if ["<", ">", "<=", ">=", "!="].iter().any(|op| t.is_symbol(op)) => {
                return Err(unsupported(&format!("range/inequality condition `{}`", t.text)));
            }
            Some(t) if ["IN", "CONTAINS", "LIKE"].iter().any(|w| t.is_word(w)) => {
                return Err(unsupported(&format!("`{}` conditions", t.text.to_ascii_uppercase())));
            }
            other => return Err(unsupported(&format!("expected `=` in WHERE, found {}", describe(other)))),
        }
        at += 2;
        if tokens.get(at).is_some_and(|t| t.is_symbol("-")) {
            at += 1;
        }
        let value = tokens.get(at);
        match value {
            Some(t) if matches!(t.kind, Kind::Marker | Kind::Uuid | Kind::Str { escaped: false }) => {}
            Some(t) if t.kind == Kind::Word && t.text.eq_ignore_ascii_case("null") => {}
            Some(t)
                if t.kind == Kind::Number && t.text.bytes().all(|c| c.is_ascii_digit() || b".eE+-".contains(&c)) => {}
            Some(t) if t.kind == Kind::Number => {
                return Err(unsupported(&format!("blob/hex constant {} (bind it as a ? value)", t.text)));
            }
            Some(t) if t.kind == Kind::Str { escaped: true } => {
                return Err(unsupported("string constant with '' escapes or $$ quoting (bind it as a ? value)"));
            }
            Some(t) if t.is_word("true") || t.is_word("false") => {
                return Err(unsupported("boolean constant (bind it as a ? value)"));
            }
            other => {
                return Err(unsupported(&format!(
                    "condition value {} (only ? markers and simple constants)",
                    describe(other)
                )));
            }
        }
        at += 1;
        if tokens.get(at).is_some_and(|t| t.is_word("AND")) {
            at += 1;
        } else {
            return Ok(at);
        }
    }
}

/// Everything after the conditions (or the table name) of a SELECT.
fn check_select_tail(tokens: &[Token<'_>], mut at: usize) -> Result<(), String> {
    while let Some(token) = tokens.get(at) {
        if token.is_word("LIMIT") {
            match tokens.get(at + 1) {
                Some(n) if n.kind == Kind::Number && n.text.bytes().all(|c| c.is_ascii_digit()) => at += 2,
                other => return Err(unsupported(&format!("LIMIT {} (only a literal number)", describe(other)))),
            }
        } else if token.is_word("ALLOW") && tokens.get(at + 1).is_some_and(|t| t.is_word("FILTERING")) {
            at += 2;
        } else if token.is_word("ORDER") {
            return Err(unsupported("ORDER BY (kassandra ignores it)"));
        } else if token.is_word("GROUP") || token.is_word("PER") {
            return Err(unsupported(&format!("{} clauses", token.text.to_ascii_uppercase())));
        } else {
            return Err(unsupported(&format!("unexpected {} after the WHERE conditions", describe(Some(token)))));
        }
    }
    Ok(())
}

fn check_write_tail(tokens: &[Token<'_>], at: usize) -> Result<(), String> {
    match tokens.get(at) {
        None => Ok(()),
        Some(t) if t.is_word("IF") => {
            Err(unsupported("lightweight transactions (IF ...), kassandra ignores the condition"))
        }
        other => Err(unsupported(&format!("unexpected {} after the WHERE conditions", describe(other)))),
    }
}

/// Rejects `counter` columns (kassandra panics on them, after registering part of the table) and
/// frozen collections.
fn check_column_types(tokens: &[Token<'_>]) -> Result<(), String> {
    let is_type = |i: usize| {
        tokens[i].is_word("counter")
            && i > 0
            && tokens[i - 1].kind == Kind::Word
            && tokens
                .get(i + 1)
                .is_some_and(|t| t.is_symbol(",") || t.is_symbol(")") || t.is_word("PRIMARY") || t.is_word("STATIC"))
    };
    let is_frozen = |i: usize| tokens[i].is_word("frozen") && tokens.get(i + 1).is_some_and(|t| t.is_symbol("<"));
    if (0..tokens.len()).any(is_type) {
        return Err(
            "squall-cql-dev (kassandra engine) does not support counter columns; ScyllaDB/Cassandra do".to_owned()
        );
    }
    if (0..tokens.len()).any(is_frozen) {
        return Err("squall-cql-dev does not support frozen collections (it reads every empty collection as null, \
             as Cassandra does for non-frozen ones); use a non-frozen map/set/list"
            .to_owned());
    }
    Ok(())
}

/// Rejects statement shapes that kassandra would execute wrongly without an error.
///
/// Only SELECT, INSERT, UPDATE, DELETE and the column types of CREATE TABLE are checked;
/// everything else passes through, and text that does not lex is left for kassandra to report.
pub fn check(q: &str) -> Result<(), String> {
    let Ok(lexed) = lex(q) else {
        return Ok(());
    };
    let mut tokens = lexed.tokens;
    while tokens.last().is_some_and(|t| t.is_symbol(";")) {
        tokens.pop();
    }
    let Some(first) = tokens.first() else {
        return Ok(());
    };
    if first.is_word("SELECT") {
        let Some(from) = find_top_level(&tokens, 1, "FROM") else {
            return Ok(());
        };
        // FROM [keyspace.]table
        let mut at = from + 2;
        if tokens.get(at).is_some_and(|t| t.is_symbol(".")) {
            at += 2;
        }
        if tokens.get(at).is_some_and(|t| t.is_word("WHERE")) {
            at = check_relations(&tokens, at + 1)?;
        }
        check_select_tail(&tokens, at)
    } else if (first.is_word("UPDATE") || first.is_word("DELETE") || first.is_word("INSERT"))
        && find_top_level(&tokens, 1, "USING").is_some()
    {
        Err(unsupported(
            "USING TTL/TIMESTAMP (kassandra drops the clause: rows never expire and writes apply in arrival order)",
        ))
    } else if first.is_word("CREATE") && tokens.get(1).is_some_and(|t| t.is_word("TABLE")) {
        check_column_types(&tokens)
    } else if first.is_word("UPDATE") || first.is_word("DELETE") {
        match find_top_level(&tokens, 1, "WHERE") {
            Some(at) => check_write_tail(&tokens, check_relations(&tokens, at + 1)?),
            None => Ok(()),
        }
    } else if first.is_word("INSERT") {
        let Some(values) = find_top_level(&tokens, 1, "VALUES") else {
            return Ok(());
        };
        // Skip the parenthesised value list, then look at what follows it.
        let mut depth = 0i32;
        for (i, token) in tokens.iter().enumerate().skip(values + 1) {
            if token.is_symbol("(") {
                depth += 1;
            } else if token.is_symbol(")") {
                depth -= 1;
                if depth == 0 {
                    return match find_top_level(&tokens, i + 1, "IF") {
                        Some(_) => Err(unsupported(
                            "lightweight transactions (IF NOT EXISTS), kassandra ignores the condition",
                        )),
                        None => Ok(()),
                    };
                }
            }
        }
        Ok(())
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_fixes_keyword_case_and_spacing() {
        assert_eq!(
            normalize("select * from ks.t where a = ? and b = 'x and y'"),
            "select * FROM ks.t where a = ? AND b = 'x and y'"
        );
        assert_eq!(
            normalize("create  table if not exists t (k text primary   key, m MAP<text, int>) with comment = 'a'"),
            "CREATE TABLE IF NOT EXISTS t (k text PRIMARY KEY, m map<text, int>) WITH comment = 'a'"
        );
        assert_eq!(
            normalize("create keyspace ks with replication = {'class': 'SimpleStrategy'}"),
            "CREATE KEYSPACE ks WITH REPLICATION = {'class': 'SimpleStrategy'}"
        );
        assert_eq!(normalize("-- hi\nSELECT key FROM system.local"), " \nSELECT key FROM system.local");
        assert!(matches!(normalize("SELECT a FROM t WHERE k = ?"), Cow::Borrowed(_)));
    }

    #[test]
    fn normalize_leaves_quoted_text_alone() {
        let q = r#"INSERT INTO t (k, v) VALUES ('from and with', "And")"#;
        assert_eq!(normalize(q), q);
    }

    #[test]
    fn check_accepts_shapes_kassandra_reads() {
        for q in [
            "SELECT host_id, rpc_address FROM system.local WHERE key='local'",
            "SELECT * FROM kv WHERE ns = ? AND k = ? LIMIT 10 ALLOW FILTERING;",
            "SELECT keyspace_name FROM system_schema.tables",
            "SELECT * FROM t WHERE k = :k AND n = -5 AND u = 6ab09bec-e68e-48d9-a5f8-97e6fb4c9b47",
            "CREATE TABLE t (k text PRIMARY KEY, counter int, n bigint)",
            "UPDATE t SET v = ? WHERE k = ?",
            "DELETE FROM t WHERE k = ?",
            "CREATE TABLE t (k text PRIMARY KEY) WITH CLUSTERING ORDER BY (c DESC)",
            "SELECT toJson(m) AS m FROM t WHERE k = 1.5",
        ] {
            assert_eq!(check(q), Ok(()), "{q}");
        }
    }

    #[test]
    fn check_rejects_silently_misread_shapes() {
        for q in [
            "SELECT * FROM t WHERE k IN (?, ?)",
            "SELECT * FROM t WHERE k = ? AND c > ?",
            "SELECT * FROM t WHERE token(k) > ?",
            "SELECT * FROM t WHERE k = ? ORDER BY c DESC",
            "SELECT * FROM t WHERE k = ? LIMIT ?",
            "SELECT * FROM t WHERE k = 'it''s'",
            "SELECT * FROM t WHERE k = 0xcafe",
            "SELECT * FROM t WHERE b = true",
            "SELECT * FROM t WHERE (a, b) = (?, ?)",
            "SELECT * FROM t WHERE \"K\" = ?",
            "SELECT * FROM t WHERE k = now()",
            "SELECT * FROM t PER PARTITION LIMIT 1",
            "DELETE FROM t WHERE k = ? IF EXISTS",
            "UPDATE t SET v = ? WHERE k = ? IF v = ?",
            "INSERT INTO t (k) VALUES (?) IF NOT EXISTS",
            "INSERT INTO t (k, v) VALUES (?, ?) USING TTL 10",
            "INSERT INTO t (k, v) VALUES (?, ?) USING TIMESTAMP 10",
            "UPDATE t USING TTL 5 SET v = ? WHERE k = ?",
            "DELETE FROM t USING TIMESTAMP 5 WHERE k = ?",
            "CREATE TABLE t (k text PRIMARY KEY, n counter)",
            "create table t (k text, n counter, PRIMARY KEY (k))",
            "CREATE TABLE t (k text PRIMARY KEY, m frozen<map<text, int>>)",
        ] {
            assert!(check(q).is_err(), "{q}");
        }
    }
}
