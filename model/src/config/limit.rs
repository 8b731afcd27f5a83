//! A rule's `limit` table (inline `limit = { ... }` or its own
//! `[rule.limit]`): each key converted on its own and reported at its
//! position. Whether the values make sense together is decided by
//! [`Limit::problems`] (through `Rule::check`); [`LimitPlace::of`] finds the
//! key each of its problems belongs to.
use std::collections::BTreeMap;

use super::fields::{Ctx, Section, Span};
use crate::acl::{Limit, LimitKey};

/// The keys a `limit` table may hold.
pub(super) const LIMIT_KEYS: &[&str] = &[
    "pps",
    "burst_packets",
    "bytes_per_sec",
    "burst_bytes",
    "per",
    "v4_prefix",
    "v6_prefix",
];

/// Where a rule's `limit` and its keys are.
pub(super) struct LimitPlace {
    /// The `limit` key (or the `[rule.limit]` header).
    key: Span,
    /// Each key of the table that is present.
    fields: BTreeMap<&'static str, Span>,
}

impl LimitPlace {
    /// The key a problem of `Rule::check` names: its reason starts with
    /// `limit.FIELD:` (a `(field, reason)` of [`Limit::problems`]); the
    /// field's key if present, the `limit` key otherwise (a default in force,
    /// or `limit` itself).
    pub(super) fn of(&self, reason: &str) -> Option<Span> {
        let field = reason.strip_prefix("limit.")?.split(':').next()?;
        Some(self.fields.get(field).unwrap_or(&self.key).clone())
    }
}

/// The `limit` of rule `s`, if it has one. `ok` turns false when a key has
/// a value of the wrong kind (each is reported): the rule is then not
/// checked as a whole.
pub(super) fn limit(
    cx: &mut Ctx<'_>,
    s: &Section<'_, '_>,
    ok: &mut bool,
) -> Option<(Limit, LimitPlace)> {
    s.key("limit")?;
    let Some((t, at)) = cx.table(s, "limit") else {
        *ok = false;
        return None;
    };
    cx.known_keys(&t, LIMIT_KEYS);
    let place = LimitPlace {
        key: at,
        fields: LIMIT_KEYS
            .iter()
            .filter_map(|k| t.key(k).map(|at| (*k, at)))
            .collect(),
    };
    let mut count = |cx: &mut Ctx<'_>, key: &str| {
        let v = cx.count(&t, key).map(|(n, _)| n);
        *ok &= v.is_some() || t.key(key).is_none();
        v
    };
    let pps = count(cx, "pps");
    let burst_packets = count(cx, "burst_packets");
    let bytes_per_sec = count(cx, "bytes_per_sec");
    let burst_bytes = count(cx, "burst_bytes");
    let mut prefix = |cx: &mut Ctx<'_>, key: &str, max: u8| {
        let (n, at) = cx.count(&t, key).or_else(|| {
            *ok &= t.key(key).is_none();
            None
        })?;
        // Lengths that fit a byte are judged by `Limit::problems`.
        u8::try_from(n).ok().or_else(|| {
            cx.push(
                &at,
                format!(
                    "{}: {key} = {n}: /{n} is not a prefix length from 1 to {max}",
                    t.name
                ),
            );
            *ok = false;
            None
        })
    };
    let v4_prefix = prefix(cx, "v4_prefix", 32);
    let v6_prefix = prefix(cx, "v6_prefix", 128);
    let per = match cx.string(&t, "per") {
        None => {
            *ok &= t.key("per").is_none();
            LimitKey::default()
        }
        Some((p, at)) => LimitKey::parse(&p).unwrap_or_else(|| {
            cx.push(
                &at,
                format!(
                    "{}: per = {p:?}: use \"rule\" (one bucket for the rule), \"src\" or \"dst\" (one per address prefix)",
                    t.name
                ),
            );
            *ok = false;
            LimitKey::default()
        }),
    };
    let limit = Limit {
        pps,
        burst_packets,
        bytes_per_sec,
        burst_bytes,
        per,
        v4_prefix,
        v6_prefix,
    };
    Some((limit, place))
}
