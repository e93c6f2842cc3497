//! The `where` language of declared attributes: comparisons of event fields and catalogue
//! columns with literals, combined with `and`, `or`, `not` and parentheses.
//!
//! ```
//! use squall_operators::attributes::predicate::Expr;
//! let e = Expr::parse("ms_played < 30000 and (track.genre == 'rock' or not track.duration_ms > 600000)").unwrap();
//! assert_eq!(e.fields().len(), 3);
//! ```
//!
//! # Notes
//! - Numbers compare with `==`, `!=`, `<`, `<=`, `>`, `>=`; text with `==` and `!=` only.
//! - A comparison with a missing value (a null `track.duration_ms`) is false, whatever the
//!   operator, as in SQL; `not` of it is true.
//! - Text literals are quoted with `'` or `"`; numbers are integers.

use std::fmt;

use super::field::{Field, Type};

/// Why a predicate does not parse or type-check: what is wrong and what to write instead.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ExprError {
    /// A single `=`.
    #[error("`=` at column {0}: compare with `==`")]
    SingleEquals(usize),
    /// A `!` not followed by `=`.
    #[error("`!` at column {0}: write `!=`, or `not` before a condition")]
    Bang(usize),
    /// A quoted text without its closing quote.
    #[error("the text starting at column {column} has no closing {quote}")]
    UnclosedText {
        /// Where it starts.
        column: usize,
        /// The quote it opens with.
        quote: char,
    },
    /// Digits that are no `i64`.
    #[error("`{text}` at column {column} is not an integer")]
    NotAnInteger {
        /// The digits.
        text: String,
        /// Where they start.
        column: usize,
    },
    /// A character no token starts with.
    #[error("unexpected `{found}` at column {column}")]
    Unexpected {
        /// The character.
        found: char,
        /// Where it is.
        column: usize,
    },
    /// A `(` without its `)`.
    #[error("a `(` is not closed: add `)`")]
    Unclosed,
    /// Something else where a field name belongs.
    #[error("expected a field name, found {0}")]
    ExpectedField(String),
    /// The end where a condition belongs.
    #[error("expected a condition such as `ms_played < 30000`, found the end")]
    ExpectedCondition,
    /// A name that is no field.
    #[error("{}", Field::unknown(.0))]
    UnknownField(String),
    /// Something else where a comparison belongs.
    #[error("expected a comparison (==, !=, <, <=, >, >=) after `{field}`, found {found}")]
    ExpectedComparison {
        /// The field compared.
        field: String,
        /// What was found instead.
        found: String,
    },
    /// Something else where a literal belongs.
    #[error("expected a number or a quoted text after `{field} {}`, found {found}", .op.as_str())]
    ExpectedLiteral {
        /// The field compared.
        field: String,
        /// The comparison.
        op: CmpOp,
        /// What was found instead.
        found: String,
    },
    /// A text compared by order.
    #[error("`{0}` is text: compare it with == or != only")]
    TextOrder(String),
    /// A number compared with a text.
    #[error("`{field}` is a number: compare it with a number, not the text {text:?}")]
    NumberWithText {
        /// The field.
        field: String,
        /// The text.
        text: String,
    },
    /// A text compared with a number.
    #[error("`{field}` is text: compare it with a quoted text, e.g. '{number}'")]
    TextWithNumber {
        /// The field.
        field: String,
        /// The number.
        number: i64,
    },
    /// More after a complete condition.
    #[error("unexpected {0} after a complete condition: join conditions with `and` / `or`")]
    Trailing(String),
}

/// A comparison operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CmpOp {
    /// `==`
    Eq,
    /// `!=`
    Ne,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
}

impl CmpOp {
    /// Whether `a <op> b` holds.
    #[inline]
    pub fn holds<T: Ord>(self, a: T, b: T) -> bool {
        match self {
            CmpOp::Eq => a == b,
            CmpOp::Ne => a != b,
            CmpOp::Lt => a < b,
            CmpOp::Le => a <= b,
            CmpOp::Gt => a > b,
            CmpOp::Ge => a >= b,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            CmpOp::Eq => "==",
            CmpOp::Ne => "!=",
            CmpOp::Lt => "<",
            CmpOp::Le => "<=",
            CmpOp::Gt => ">",
            CmpOp::Ge => ">=",
        }
    }
}

/// A literal in a predicate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Literal {
    /// An integer.
    Int(i64),
    /// A quoted text.
    Text(String),
}

/// A parsed predicate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expr {
    /// Both hold.
    And(Box<Expr>, Box<Expr>),
    /// Either holds.
    Or(Box<Expr>, Box<Expr>),
    /// It does not hold.
    Not(Box<Expr>),
    /// `field op literal`.
    Cmp {
        /// The field or column.
        field: Field,
        /// The operator.
        op: CmpOp,
        /// The literal it is compared with.
        value: Literal,
    },
}

impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expr::And(a, b) => write!(f, "({a} and {b})"),
            Expr::Or(a, b) => write!(f, "({a} or {b})"),
            Expr::Not(a) => write!(f, "not {a}"),
            Expr::Cmp { field, op, value: Literal::Int(n) } => write!(f, "{} {} {n}", field.name(), op.as_str()),
            Expr::Cmp { field, op, value: Literal::Text(t) } => write!(f, "{} {} {t:?}", field.name(), op.as_str()),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
enum Token {
    Ident(String),
    Int(i64),
    Text(String),
    Op(CmpOp),
    LParen,
    RParen,
}

fn tokens(text: &str) -> Result<Vec<Token>, ExprError> {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        match c {
            b' ' | b'\t' | b'\n' | b'\r' => i += 1,
            b'(' => {
                out.push(Token::LParen);
                i += 1;
            }
            b')' => {
                out.push(Token::RParen);
                i += 1;
            }
            b'=' | b'!' | b'<' | b'>' => {
                let two = bytes.get(i + 1) == Some(&b'=');
                let op = match (c, two) {
                    (b'=', true) => CmpOp::Eq,
                    (b'!', true) => CmpOp::Ne,
                    (b'<', true) => CmpOp::Le,
                    (b'>', true) => CmpOp::Ge,
                    (b'<', false) => CmpOp::Lt,
                    (b'>', false) => CmpOp::Gt,
                    (b'=', false) => return Err(ExprError::SingleEquals(i + 1)),
                    _ => return Err(ExprError::Bang(i + 1)),
                };
                out.push(Token::Op(op));
                i += if two { 2 } else { 1 };
            }
            b'\'' | b'"' => {
                let end =
                    text[i + 1..].find(c as char).ok_or(ExprError::UnclosedText { column: i + 1, quote: c as char })?;
                out.push(Token::Text(text[i + 1..i + 1 + end].to_owned()));
                i += end + 2;
            }
            b'-' | b'0'..=b'9' => {
                let start = i;
                i += 1;
                while i < bytes.len() && (bytes[i].is_ascii_digit() || bytes[i] == b'_') {
                    i += 1;
                }
                let digits: String = text[start..i].chars().filter(|c| *c != '_').collect();
                let n = digits
                    .parse::<i64>()
                    .map_err(|_| ExprError::NotAnInteger { text: text[start..i].to_owned(), column: start + 1 })?;
                out.push(Token::Int(n));
            }
            c if c.is_ascii_alphabetic() || c == b'_' => {
                let start = i;
                while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_' || bytes[i] == b'.') {
                    i += 1;
                }
                out.push(Token::Ident(text[start..i].to_owned()));
            }
            _ => {
                let ch = text[i..].chars().next().unwrap_or('?');
                return Err(ExprError::Unexpected { found: ch, column: i + 1 });
            }
        }
    }
    Ok(out)
}

struct Parser {
    tokens: Vec<Token>,
    at: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.at)
    }

    fn keyword(&self, word: &str) -> bool {
        matches!(self.peek(), Some(Token::Ident(w)) if w.eq_ignore_ascii_case(word))
    }

    fn or(&mut self) -> Result<Expr, ExprError> {
        let mut left = self.and()?;
        while self.keyword("or") {
            self.at += 1;
            left = Expr::Or(Box::new(left), Box::new(self.and()?));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Expr, ExprError> {
        let mut left = self.unary()?;
        while self.keyword("and") {
            self.at += 1;
            left = Expr::And(Box::new(left), Box::new(self.unary()?));
        }
        Ok(left)
    }

    fn unary(&mut self) -> Result<Expr, ExprError> {
        if self.keyword("not") {
            self.at += 1;
            return Ok(Expr::Not(Box::new(self.unary()?)));
        }
        if self.peek() == Some(&Token::LParen) {
            self.at += 1;
            let e = self.or()?;
            if self.peek() != Some(&Token::RParen) {
                return Err(ExprError::Unclosed);
            }
            self.at += 1;
            return Ok(e);
        }
        self.comparison()
    }

    fn comparison(&mut self) -> Result<Expr, ExprError> {
        let name = match self.tokens.get(self.at).cloned() {
            Some(Token::Ident(n)) => n,
            Some(other) => return Err(ExprError::ExpectedField(describe(&other))),
            None => return Err(ExprError::ExpectedCondition),
        };
        self.at += 1;
        let Some(field) = Field::parse(&name) else { return Err(ExprError::UnknownField(name)) };
        let op = match self.tokens.get(self.at) {
            Some(Token::Op(op)) => *op,
            other => {
                let found = other.map_or("the end".to_owned(), describe);
                return Err(ExprError::ExpectedComparison { field: name, found });
            }
        };
        self.at += 1;
        let value = match self.tokens.get(self.at).cloned() {
            Some(Token::Int(n)) => Literal::Int(n),
            Some(Token::Text(t)) => Literal::Text(t),
            other => {
                let found = other.as_ref().map_or("the end".to_owned(), describe);
                return Err(ExprError::ExpectedLiteral { field: name, op, found });
            }
        };
        self.at += 1;
        match (field.ty(), &value, op) {
            (Type::Int, Literal::Int(_), _) => {}
            (Type::Text, Literal::Text(_), CmpOp::Eq | CmpOp::Ne) => {}
            (Type::Text, Literal::Text(_), _) => {
                return Err(ExprError::TextOrder(name));
            }
            (Type::Int, Literal::Text(t), _) => {
                return Err(ExprError::NumberWithText { field: name, text: t.clone() });
            }
            (Type::Text, Literal::Int(n), _) => {
                return Err(ExprError::TextWithNumber { field: name, number: *n });
            }
        }
        Ok(Expr::Cmp { field, op, value })
    }
}

fn describe(t: &Token) -> String {
    match t {
        Token::Ident(w) => format!("`{w}`"),
        Token::Int(n) => format!("`{n}`"),
        Token::Text(s) => format!("{s:?}"),
        Token::Op(op) => format!("`{}`", op.as_str()),
        Token::LParen => "`(`".into(),
        Token::RParen => "`)`".into(),
    }
}

impl Expr {
    /// Parses and type-checks a predicate; the error says what is wrong and what to write.
    pub fn parse(text: &str) -> Result<Expr, ExprError> {
        let mut p = Parser { tokens: tokens(text)?, at: 0 };
        let e = p.or()?;
        if let Some(extra) = p.peek() {
            return Err(ExprError::Trailing(describe(extra)));
        }
        Ok(e)
    }

    /// The fields the predicate reads.
    pub fn fields(&self) -> Vec<Field> {
        let mut out = Vec::new();
        self.visit(&mut |f| {
            if !out.contains(&f) {
                out.push(f);
            }
        });
        out
    }

    fn visit(&self, f: &mut impl FnMut(Field)) {
        match self {
            Expr::And(a, b) | Expr::Or(a, b) => {
                a.visit(f);
                b.visit(f);
            }
            Expr::Not(a) => a.visit(f),
            Expr::Cmp { field, .. } => f(*field),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_precedence_and_parentheses() {
        let e = Expr::parse("ms_played < 30_000 or ts > 5 and not track.genre == 'rock'").unwrap();
        assert_eq!(e.to_string(), "(ms_played < 30000 or (ts > 5 and not track.genre == \"rock\"))");
        let e = Expr::parse("(ms_played < 1 OR ts >= -2) and ad.category != \"cars\"").unwrap();
        assert_eq!(e.to_string(), "((ms_played < 1 or ts >= -2) and ad.category != \"cars\")");
    }

    #[test]
    fn mistakes_say_what_to_write() {
        let err = |t: &str| Expr::parse(t).unwrap_err().to_string();
        assert!(err("ms_playd < 3").contains("unknown field `ms_playd`"), "{}", err("ms_playd < 3"));
        assert!(err("ms_played = 3").contains("compare with `==`"));
        assert!(err("track.genre < 'a'").contains("== or != only"));
        assert!(err("ms_played < 'a'").contains("is a number"));
        assert!(err("track.genre == 3").contains("quoted text"));
        assert!(err("ms_played < 3 ts > 4").contains("join conditions"));
        assert!(err("(ms_played < 3").contains("not closed"));
        assert!(err("track.genre == 'rock").contains("no closing"));
        assert!(err("").contains("found the end"));
        assert!(err("ms_played <").contains("found the end"));
        assert!(err("ms_played < 99999999999999999999").contains("not an integer"));
        assert!(err("ms_played ~ 3").contains("unexpected `~`"));
    }
}
