//! `[[service]]`: each entry converted key by key (`health` too), then
//! validated piece by piece so that each problem is reported at the key or
//! backend it is about.
use std::{collections::BTreeSet, net::IpAddr};

use super::fields::{Ctx, Section, Span};
use crate::lb::{
    Forward, HealthEntry, ServiceEntry, ServiceId, entry::HealthEntryError, health::HealthError,
    parse_backends,
};

const HEALTH_KEYS: &[&str] = &[
    "type", "port", "interval", "timeout", "rise", "fall", "path", "host", "status", "payload",
];

/// The services of the `[[service]]` entries; `max_services` is `[lb]
/// max_services`, `max_at` where it is set.
pub(super) fn services(
    cx: &mut Ctx<'_>,
    list: &[(Section<'_, '_>, usize)],
    max_services: u32,
    max_at: Option<&Span>,
) -> Vec<ServiceEntry> {
    let mut out = Vec::new();
    let mut ids = BTreeSet::new();
    let mut backends_total = 0usize;
    let mut backends_over = false;
    for (s, i) in list {
        if *i == max_services as usize {
            let set_at = max_at
                .map(|_| "")
                .unwrap_or(" (the default; raise [lb] max_services)");
            cx.push(
                &s.span,
                format!(
                    "{}: more than {max_services} services, but [lb] max_services is {max_services}{set_at}",
                    s.name
                ),
            );
        }
        let Some((e, health)) = entry(cx, s) else {
            continue;
        };
        let Some(id) = check(cx, s, &e, health.as_ref()) else {
            out.push(e);
            continue;
        };
        if !ids.insert(id) {
            cx.push(
                &s.key_or_header("service"),
                format!("{}: service {id} is defined twice", s.name),
            );
        }
        backends_total += e.backends.len();
        if !backends_over && backends_total >= xdpgate_common::lb::MAX_BACKENDS as usize {
            backends_over = true;
            cx.push(
                &s.key_or_header("backends"),
                format!(
                    "{}: {backends_total} backends in all, at most {}",
                    s.name,
                    xdpgate_common::lb::MAX_BACKENDS - 1
                ),
            );
        }
        out.push(e);
    }
    out
}

/// One entry, key by key; the `health` table comes back for placing errors.
fn entry<'t, 'i>(
    cx: &mut Ctx<'_>,
    s: &Section<'t, 'i>,
) -> Option<(ServiceEntry, Option<Section<'t, 'i>>)> {
    cx.known_keys(s, &["service", "forward", "backends", "health"]);
    let service = cx.string(s, "service");
    if s.key("service").is_none() {
        cx.missing(
            s,
            "service",
            "VIP:PORT/PROTO, e.g. service = \"192.0.2.10:80/tcp\"",
        );
    }
    let forward = cx.string(s, "forward").map(|(f, _)| f);
    let backends = cx
        .strings(s, "backends")
        .map(|(list, _)| list.into_iter().map(|(b, _)| b).collect())
        .unwrap_or_default();
    let health = cx.table(s, "health").map(|(h, _)| h);
    let health_entry = health.as_ref().map(|h| {
        cx.known_keys(h, HEALTH_KEYS);
        let u16_of = |cx: &mut Ctx<'_>, k| cx.integer(h, k, 0..=65535).map(|(n, _)| n as u16);
        let u32_of = |cx: &mut Ctx<'_>, k| {
            cx.integer(h, k, 0..=i64::from(u32::MAX))
                .map(|(n, _)| n as u32)
        };
        HealthEntry {
            kind: cx.string(h, "type").map(|(t, _)| t),
            port: u16_of(cx, "port"),
            interval: cx.number(h, "interval").map(|(x, _)| x),
            timeout: cx.number(h, "timeout").map(|(x, _)| x),
            rise: u32_of(cx, "rise"),
            fall: u32_of(cx, "fall"),
            path: cx.string(h, "path").map(|(t, _)| t),
            host: cx.string(h, "host").map(|(t, _)| t),
            status: u16_of(cx, "status"),
            payload: cx.string(h, "payload").map(|(t, _)| t),
        }
    });
    let (service, _) = service?;
    Some((
        ServiceEntry {
            service,
            forward,
            backends,
            health: health_entry,
        },
        health,
    ))
}

/// Validates `e` piece by piece, each problem at its key; the service's
/// identity if it parses.
fn check(
    cx: &mut Ctx<'_>,
    s: &Section<'_, '_>,
    e: &ServiceEntry,
    health: Option<&Section<'_, '_>>,
) -> Option<ServiceId> {
    let id = match e.service.parse::<ServiceId>() {
        Ok(id) => Some(id),
        Err(why) => {
            cx.push(&s.key_or_header("service"), format!("{}: {why}", s.name));
            None
        }
    };
    let name = id.map_or(e.service.clone(), |i| i.to_string());
    let mut clean = true;
    if let Some(f) = &e.forward
        && let Err(why) = f.parse::<Forward>()
    {
        cx.push(
            &s.key_or_header("forward"),
            format!("{}: {name}: {why}", s.name),
        );
        clean = false;
    }
    let items: Vec<(String, Span)> = match s.get("backends") {
        Some((_, v)) => match v.get_ref() {
            toml::de::DeValue::Array(a) => a
                .iter()
                .filter_map(|x| x.get_ref().as_str().map(|t| (t.to_owned(), x.span())))
                .collect(),
            _ => Vec::new(),
        },
        None => Vec::new(),
    };
    let tokens: Vec<String> = e
        .backends
        .iter()
        .flat_map(|b| b.split_whitespace().map(str::to_owned))
        .collect();
    if let Err(why) = parse_backends(&tokens) {
        let token = match &why {
            crate::lb::ParseError::OrphanWeight(t) | crate::lb::ParseError::Backend(t) => {
                Some(t.clone())
            }
            crate::lb::ParseError::Weight { text, .. } => Some(format!("weight={text}")),
            _ => None,
        };
        let at = token
            .and_then(|t| {
                items
                    .iter()
                    .find(|(b, _)| b.split_whitespace().any(|x| x == t))
            })
            .map_or(s.key_or_header("backends"), |(_, at)| at.clone());
        cx.push(&at, format!("{}: {name}: {why}", s.name));
        clean = false;
    }
    if let (Some(h), Some(hs)) = (&e.health, health)
        && let Err(why) = h.to_config()
    {
        cx.push(&health_key(hs, &why), format!("{}: {name}: {why}", s.name));
        clean = false;
    }
    let id = id?;
    if clean && let Err(problems) = e.to_spec() {
        for p in problems {
            let at = problem_place(s, &items, health, &p);
            cx.push(&at, format!("{}: {p}", s.name));
        }
    }
    Some(id)
}

/// The key of `health` a health problem is about.
fn health_key(h: &Section<'_, '_>, why: &HealthEntryError) -> Span {
    let first = |keys: &[&str]| keys.iter().find_map(|k| h.key(k));
    let at = match why {
        HealthEntryError::Kind(_) => first(&["type"]),
        HealthEntryError::HttpOnly => first(&["path", "host", "status"]),
        HealthEntryError::UdpOnly => first(&["payload"]),
        HealthEntryError::Seconds { what, .. } => first(&[what]),
        HealthEntryError::Port0 => first(&["port"]),
        HealthEntryError::Check(c) => match c {
            HealthError::Interval(_) => first(&["interval"]),
            HealthError::ZeroTimeout | HealthError::TimeoutOverInterval { .. } => {
                first(&["timeout", "interval"])
            }
            HealthError::Rise(_) => first(&["rise"]),
            HealthError::Fall(_) => first(&["fall"]),
            HealthError::Path(_) => first(&["path"]),
            HealthError::Host(_) => first(&["host"]),
            HealthError::Status(_) => first(&["status"]),
            HealthError::Payload(_) => first(&["payload"]),
        },
    };
    at.unwrap_or_else(|| h.span.clone())
}

/// Where a problem of the whole service (from [`ServiceEntry::to_spec`])
/// belongs: the backend it names (the second one of a duplicate), the
/// health table, or the service key.
fn problem_place(
    s: &Section<'_, '_>,
    items: &[(String, Span)],
    health: Option<&Section<'_, '_>>,
    problem: &str,
) -> Span {
    if let Some(addr) = problem
        .split_once(": backend ")
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|a| a.parse::<IpAddr>().ok())
    {
        let mut same = items.iter().filter(|(b, _)| {
            b.split_whitespace()
                .next()
                .and_then(|a| a.parse::<IpAddr>().ok())
                .is_some_and(|a| a.to_canonical() == addr)
        });
        let hit = if problem.ends_with("listed twice") {
            same.nth(1)
        } else {
            same.next()
        };
        if let Some((_, at)) = hit {
            return at.clone();
        }
    }
    if problem.contains(" backends, at most ") {
        return s.key_or_header("backends");
    }
    if problem.contains("health")
        && let Some(h) = health
    {
        return h.span.clone();
    }
    s.key_or_header("service")
}
