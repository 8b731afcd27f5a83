//! Key-by-key access to the configuration's TOML tables. Each getter reports
//! a value of the wrong kind or out of range at its key, in operator terms
//! ("must be a string in quotes, not an integer"), and returns `None`, so
//! that the caller goes on with the next key and one run finds every error.
use std::ops::{Range, RangeInclusive};

use toml::{
    Spanned,
    de::{DeTable, DeValue},
};

use super::Issue;

/// Byte range of an item in the file's text.
pub(super) type Span = Range<usize>;
/// A value of the file with its position.
pub(super) type Value<'i> = Spanned<DeValue<'i>>;

/// The errors found so far, each at a byte offset of the text.
pub(super) struct Ctx<'a> {
    text: &'a str,
    found: Vec<(usize, String)>,
}

impl<'a> Ctx<'a> {
    /// An empty collection of errors about `text`.
    pub(super) fn new(text: &'a str) -> Self {
        Ctx {
            text,
            found: Vec::new(),
        }
    }

    /// Records `message` at the start of `span`.
    pub(super) fn push(&mut self, span: &Span, message: impl Into<String>) {
        self.found.push((span.start, message.into()));
    }

    /// Whether nothing was found.
    pub(super) fn is_empty(&self) -> bool {
        self.found.is_empty()
    }

    /// The errors in the order of the file, each with its line and column.
    pub(super) fn into_issues(self) -> Vec<Issue> {
        let mut found = self.found;
        found.sort_by_key(|(at, _)| *at);
        found
            .into_iter()
            .map(|(at, message)| Issue {
                at: Some(position(self.text, at)),
                message,
            })
            .collect()
    }

    /// Reports every key of `s` not in `allowed` at the key.
    pub(super) fn known_keys(&mut self, s: &Section<'_, '_>, allowed: &[&str]) {
        for (k, _) in s.table {
            if !allowed.contains(&k.get_ref().as_ref()) {
                self.push(
                    &k.span(),
                    format!(
                        "{}: unknown key {:?} (known keys: {})",
                        s.name,
                        k.get_ref(),
                        allowed.join(", ")
                    ),
                );
            }
        }
    }

    /// Reports `key` of `s` as missing, at the table's header.
    pub(super) fn missing(&mut self, s: &Section<'_, '_>, key: &str, hint: &str) {
        self.push(&s.span, format!("{}: {key} is missing: {hint}", s.name));
    }

    fn wrong(&mut self, s: &Section<'_, '_>, key: &str, at: &Span, v: &DeValue<'_>, want: &str) {
        self.push(
            at,
            format!("{}: {key} must be {want}, not {}", s.name, kind(v)),
        );
    }

    /// `key` of `s` as a string, and the key's position.
    pub(super) fn string(&mut self, s: &Section<'_, '_>, key: &str) -> Option<(String, Span)> {
        let (at, v) = s.get(key)?;
        match v.get_ref() {
            DeValue::String(t) => Some((t.to_string(), at)),
            other => {
                self.wrong(s, key, &at, other, "a string in quotes");
                None
            }
        }
    }

    /// `key` of `s` as true or false.
    pub(super) fn boolean(&mut self, s: &Section<'_, '_>, key: &str) -> Option<bool> {
        let (at, v) = s.get(key)?;
        match v.get_ref() {
            DeValue::Boolean(b) => Some(*b),
            other => {
                self.wrong(s, key, &at, other, "true or false");
                None
            }
        }
    }

    /// `key` of `s` as a whole number in `range`, and the key's position.
    pub(super) fn integer(
        &mut self,
        s: &Section<'_, '_>,
        key: &str,
        range: RangeInclusive<i64>,
    ) -> Option<(i64, Span)> {
        let (at, v) = s.get(key)?;
        let n = match v.get_ref() {
            DeValue::Integer(i) => integer_of(i),
            other => {
                self.wrong(s, key, &at, other, "a whole number");
                return None;
            }
        };
        match n {
            Some(n) if range.contains(&n) => Some((n, at)),
            _ => {
                self.push(
                    &at,
                    format!(
                        "{}{} {key} = {}: use {} to {}",
                        s.name,
                        if s.name.starts_with("[[") { ":" } else { "" },
                        text_of(self.text, &v.span()),
                        range.start(),
                        range.end()
                    ),
                );
                None
            }
        }
    }

    /// `key` of `s` as a whole number of 0 or more, and the key's position;
    /// the caller checks the range (for limits, `Limit::problems` does).
    pub(super) fn count(&mut self, s: &Section<'_, '_>, key: &str) -> Option<(u64, Span)> {
        let (at, v) = s.get(key)?;
        let n = match v.get_ref() {
            DeValue::Integer(i) => integer_of(i).and_then(|n| u64::try_from(n).ok()),
            other => {
                self.wrong(s, key, &at, other, "a whole number");
                return None;
            }
        };
        if n.is_none() {
            self.push(
                &at,
                format!(
                    "{}: {key} = {}: use a whole number from 0 to {}",
                    s.name,
                    text_of(self.text, &v.span()),
                    i64::MAX
                ),
            );
        }
        n.map(|n| (n, at))
    }

    /// `key` of `s` as a number (whole or with a fraction), and its position.
    pub(super) fn number(&mut self, s: &Section<'_, '_>, key: &str) -> Option<(f64, Span)> {
        let (at, v) = s.get(key)?;
        match v.get_ref() {
            DeValue::Integer(i) => integer_of(i).map(|n| (n as f64, at)),
            DeValue::Float(f) => f.as_str().parse::<f64>().ok().map(|x| (x, at)),
            other => {
                self.wrong(s, key, &at, other, "a number");
                None
            }
        }
    }

    /// `key` of `s` as a list of strings, each with its own position, and
    /// the key's position. Each element that is not a string is reported.
    pub(super) fn strings(
        &mut self,
        s: &Section<'_, '_>,
        key: &str,
    ) -> Option<(Vec<(String, Span)>, Span)> {
        let (at, v) = s.get(key)?;
        let DeValue::Array(items) = v.get_ref() else {
            self.wrong(
                s,
                key,
                &at,
                v.get_ref(),
                "a list of strings, [\"...\", ...]",
            );
            return None;
        };
        let mut out = Vec::new();
        for item in items {
            match item.get_ref() {
                DeValue::String(t) => out.push((t.to_string(), item.span())),
                other => self.push(
                    &item.span(),
                    format!(
                        "{}: each item of {key} must be a string in quotes, not {}",
                        s.name,
                        kind(other)
                    ),
                ),
            }
        }
        Some((out, at))
    }

    /// `key` of `s` as a table (inline `{ ... }` or its own `[...]`).
    pub(super) fn table<'t, 'i>(
        &mut self,
        s: &Section<'t, 'i>,
        key: &str,
    ) -> Option<(Section<'t, 'i>, Span)> {
        let (at, v) = s.get(key)?;
        match v.get_ref() {
            DeValue::Table(t) => Some((
                Section {
                    name: format!("{} {key}", s.name),
                    span: at.clone(),
                    table: t,
                },
                at,
            )),
            other => {
                self.wrong(s, key, &at, other, "a table, { key = value, ... }");
                None
            }
        }
    }
}

/// One table of the file: how messages name it, where it starts, its keys.
pub(super) struct Section<'t, 'i> {
    /// `[daemon]`, `[[rule]] #2`, ...
    pub name: String,
    /// The header (or the key of an inline table).
    pub span: Span,
    /// The keys and values.
    pub table: &'t DeTable<'i>,
}

impl<'t, 'i> Section<'t, 'i> {
    /// `v` as a table named `name`, or an error at `v` if it is not one.
    pub(super) fn of(cx: &mut Ctx<'_>, name: String, v: &'t Value<'i>) -> Option<Self> {
        match v.get_ref() {
            DeValue::Table(t) => Some(Section {
                name,
                span: v.span(),
                table: t,
            }),
            other => {
                cx.push(
                    &v.span(),
                    format!("{name} must be a table of keys, not {}", kind(other)),
                );
                None
            }
        }
    }

    /// The key's position and its value.
    pub(super) fn get(&self, key: &str) -> Option<(Span, &'t Value<'i>)> {
        self.table
            .iter()
            .find(|(k, _)| k.get_ref() == key)
            .map(|(k, v)| (k.span(), v))
    }

    /// The key's position, if the key is present.
    pub(super) fn key(&self, key: &str) -> Option<Span> {
        self.get(key).map(|(at, _)| at)
    }

    /// The key's position, or the table's if it is absent.
    pub(super) fn key_or_header(&self, key: &str) -> Span {
        self.key(key).unwrap_or_else(|| self.span.clone())
    }
}

/// The elements of an array of tables (`[[rule]]`), or an error if `v` is
/// something else.
pub(super) fn entries<'t, 'i>(
    cx: &mut Ctx<'_>,
    name: &str,
    at: &Span,
    v: &'t Value<'i>,
) -> Vec<(Section<'t, 'i>, usize)> {
    let DeValue::Array(items) = v.get_ref() else {
        cx.push(
            at,
            format!(
                "{name} must be written [[{name}]], once per entry (an array of tables), not {}",
                kind(v.get_ref())
            ),
        );
        return Vec::new();
    };
    items
        .iter()
        .enumerate()
        .filter_map(|(i, item)| {
            Section::of(cx, format!("[[{name}]] #{}", i + 1), item).map(|s| (s, i))
        })
        .collect()
}

/// What a value is, in the words of TOML's documentation.
pub(super) fn kind(v: &DeValue<'_>) -> &'static str {
    match v {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "a whole number",
        DeValue::Float(_) => "a number with a fraction",
        DeValue::Boolean(_) => "true or false",
        DeValue::Datetime(_) => "a date or time",
        DeValue::Array(_) => "a list",
        DeValue::Table(_) => "a table",
    }
}

/// The integer, if it fits 64 bits.
fn integer_of(i: &toml::de::DeInteger<'_>) -> Option<i64> {
    i64::from_str_radix(i.as_str(), i.radix()).ok()
}

/// The text of `span` as written (for messages about out-of-range numbers).
fn text_of<'t>(text: &'t str, span: &Span) -> &'t str {
    text.get(span.clone()).unwrap_or("?")
}

/// 1-based line and column (in characters) of byte `offset` of `text`.
pub(super) fn position(text: &str, offset: usize) -> (usize, usize) {
    let mut end = offset.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let upto = &text[..end];
    let line_start = upto.rfind('\n').map_or(0, |i| i + 1);
    (
        upto.matches('\n').count() + 1,
        upto[line_start..].chars().count() + 1,
    )
}
