//! Architecture checks over the workspace's sources, run as unit tests by
//! `cargo xtask test` and printed by `cargo xtask arch`:
//!
//! - **No import cycles.** In every crate, at every level of the module
//!   tree, the modules that share a parent must not depend on each other in
//!   a circle. A module depends on a sibling when any of its `crate::` or
//!   `super::` paths (in `use` declarations or in code) leads into that
//!   sibling; a child using its parent's items, or a parent using its
//!   children, is not a sibling dependency.
//! - **Files stay small.** No source file is over [`MAX_LINES`] lines,
//!   except the ones named in [`LONG_FILES`] with the reason.
//!
//! The parser is deliberately small: comments and string literals are
//! stripped, then paths starting with `crate`, `super` or `self` are read
//! with their `{...}` groups, and inline `mod name { ... }` blocks are
//! tracked so that `super` inside them resolves correctly.
use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
};

use anyhow::Context as _;

/// The longest a source file may be.
pub(crate) const MAX_LINES: usize = 800;

/// Files allowed over [`MAX_LINES`], with the reason (paths from the
/// workspace root).
pub(crate) const LONG_FILES: &[(&str, &str)] = &[];

/// A module path inside one crate (`[]` is the crate root).
type ModPath = Vec<String>;

/// One crate root to analyse: a name for reports and its root file.
#[derive(Clone, Debug)]
pub(crate) struct CrateRoot {
    /// `xdpgate`, `xdpgate-model`, `tests/parser`, ...
    pub name: String,
    /// `src/lib.rs`, `src/main.rs` or a test file.
    pub root: PathBuf,
}

/// Every crate root of the workspace: each package's lib and bin roots, and
/// each integration-test file of the tests crate.
pub(crate) fn crate_roots(ws: &Path) -> Vec<CrateRoot> {
    let mut out = Vec::new();
    for pkg in [
        "common", "model", "xdpgate", "xdp-prog", "tests", "bench", "xtask",
    ] {
        for root in ["src/lib.rs", "src/main.rs"] {
            let p = ws.join(pkg).join(root);
            if p.is_file() {
                out.push(CrateRoot {
                    name: format!("{pkg}/{root}"),
                    root: p,
                });
            }
        }
    }
    if let Ok(dir) = fs::read_dir(ws.join("tests/tests")) {
        let mut files: Vec<PathBuf> = dir
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "rs"))
            .collect();
        files.sort();
        for p in files {
            out.push(CrateRoot {
                name: format!("tests/tests/{}", p.file_name().unwrap().to_string_lossy()),
                root: p,
            });
        }
    }
    out
}

/// The modules of one crate that live in files: module path -> file.
fn module_files(root: &Path) -> anyhow::Result<BTreeMap<ModPath, PathBuf>> {
    let mut out = BTreeMap::new();
    let mut todo = vec![(Vec::new(), root.to_path_buf())];
    while let Some((path, file)) = todo.pop() {
        let text =
            fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
        // Where this file's child modules live: next to a mod.rs/lib.rs/
        // main.rs (or a test crate's root), in a folder named after any
        // other file.
        let stem = file.file_stem().unwrap().to_string_lossy().into_owned();
        let dir = if path.is_empty() || stem == "mod" {
            file.parent().unwrap().to_path_buf()
        } else {
            file.parent().unwrap().join(&stem)
        };
        for name in file_mods(&strip(&text)) {
            let candidates = [
                dir.join(format!("{name}.rs")),
                dir.join(&name).join("mod.rs"),
            ];
            if let Some(f) = candidates.iter().find(|f| f.is_file()) {
                let mut child = path.clone();
                child.push(name);
                todo.push((child, f.clone()));
            }
        }
        out.insert(path, file);
    }
    Ok(out)
}

/// Names of `mod NAME;` declarations (modules in their own files).
fn file_mods(text: &str) -> Vec<String> {
    let toks = tokens(text);
    let mut out = Vec::new();
    for w in toks.windows(3) {
        if w[0] == "mod" && is_ident(&w[1]) && w[2] == ";" {
            out.push(w[1].clone());
        }
    }
    out
}

/// The text without comments, string, char and byte literals (their
/// contents replaced by nothing), so that only code is scanned.
fn strip(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'/' if b.get(i + 1) == Some(&b'/') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                let mut depth = 0;
                while i < b.len() {
                    if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
                        depth += 1;
                        i += 2;
                    } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        i += 1;
                    }
                }
            }
            b'r' if matches!(b.get(i + 1), Some(b'#' | b'"'))
                && (i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_')) =>
            {
                // Raw string r"..." or r#"..."#.
                let mut j = i + 1;
                let mut hashes = 0;
                while b.get(j) == Some(&b'#') {
                    hashes += 1;
                    j += 1;
                }
                if b.get(j) != Some(&b'"') {
                    out.push('r');
                    i += 1;
                    continue;
                }
                j += 1;
                loop {
                    if j >= b.len() {
                        break;
                    }
                    if b[j] == b'"'
                        && b[j + 1..]
                            .iter()
                            .take(hashes)
                            .filter(|c| **c == b'#')
                            .count()
                            == hashes
                    {
                        j += 1 + hashes;
                        break;
                    }
                    j += 1;
                }
                out.push_str("\"\"");
                i = j;
            }
            b'"' => {
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    if b[i] == b'\\' {
                        i += 1;
                    }
                    i += 1;
                }
                i += 1;
                out.push_str("\"\"");
            }
            b'\'' => {
                // A char literal ('a', '\n', '\u{..}') or a lifetime ('a).
                let close = if b.get(i + 1) == Some(&b'\\') {
                    b[i + 2..]
                        .iter()
                        .position(|c| *c == b'\'')
                        .map(|p| i + 2 + p)
                } else if b.get(i + 2) == Some(&b'\'') {
                    Some(i + 2)
                } else {
                    None
                };
                match close {
                    Some(c) => {
                        out.push_str("' '");
                        i = c + 1;
                    }
                    None => {
                        out.push('\'');
                        i += 1;
                    }
                }
            }
            _ => {
                // Copy whole characters (UTF-8 outside comments and strings
                // is rare, but possible).
                let ch = text[i..].chars().next().unwrap();
                out.push(ch);
                i += ch.len_utf8();
            }
        }
    }
    out
}

fn is_ident(t: &str) -> bool {
    t.chars()
        .next()
        .is_some_and(|c| c.is_alphabetic() || c == '_')
        && t.chars().all(|c| c.is_alphanumeric() || c == '_')
}

/// Identifiers, `::`, and single punctuation characters.
fn tokens(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut chars = text.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if c.is_alphabetic() || c == '_' {
            let mut end = i + c.len_utf8();
            while let Some(&(j, d)) = chars.peek() {
                if d.is_alphanumeric() || d == '_' {
                    end = j + d.len_utf8();
                    chars.next();
                } else {
                    break;
                }
            }
            out.push(text[i..end].to_owned());
        } else if c == ':' && chars.peek().map(|p| p.1) == Some(':') {
            chars.next();
            out.push("::".into());
        } else if !c.is_whitespace() {
            out.push(c.to_string());
        }
    }
    out
}

/// Reads a path at `toks[*at]` (an identifier) with its `{...}` groups and
/// returns every full path it names, resolved from `base`.
fn read_paths(toks: &[String], at: &mut usize, base: &ModPath) -> Vec<ModPath> {
    let mut cur = base.clone();
    let mut out = Vec::new();
    while let Some(t) = toks.get(*at) {
        if t == "{" {
            *at += 1;
            loop {
                match toks.get(*at).map(String::as_str) {
                    None => return out,
                    Some("}") => {
                        *at += 1;
                        return out;
                    }
                    Some(",") => *at += 1,
                    Some("self") => {
                        out.push(cur.clone());
                        *at += 1;
                    }
                    Some("*") => {
                        out.push(cur.clone());
                        *at += 1;
                    }
                    Some(s) if is_ident(s) || s == "{" => {
                        out.extend(read_paths(toks, at, &cur));
                    }
                    Some(_) => *at += 1,
                }
            }
        }
        if !is_ident(t) {
            break;
        }
        match t.as_str() {
            "super" => {
                cur.pop();
            }
            "self" => {}
            "crate" => cur.clear(),
            s => cur.push(s.to_owned()),
        }
        *at += 1;
        if toks.get(*at).map(String::as_str) == Some("::") {
            *at += 1;
        } else {
            break;
        }
    }
    out.push(cur);
    out
}

/// The module paths one file's code refers to, from its module `path`.
/// Inline `mod x { ... }` blocks are followed, so their `super` is right.
fn references(text: &str, path: &ModPath) -> Vec<(ModPath, ModPath)> {
    let toks = tokens(&strip(text));
    let mut out = Vec::new();
    // (module path, brace depth at which it closes)
    let mut stack: Vec<(ModPath, usize)> = vec![(path.clone(), usize::MAX)];
    let mut depth = 0usize;
    let mut i = 0;
    while i < toks.len() {
        let t = toks[i].as_str();
        match t {
            "mod" if toks.get(i + 2).map(String::as_str) == Some("{") && is_ident(&toks[i + 1]) => {
                let mut p = stack.last().unwrap().0.clone();
                p.push(toks[i + 1].clone());
                depth += 1;
                stack.push((p, depth));
                i += 3;
                continue;
            }
            "{" => depth += 1,
            "}" => {
                if stack.last().unwrap().1 == depth {
                    stack.pop();
                }
                depth = depth.saturating_sub(1);
            }
            "crate" | "super" | "self"
                if toks.get(i + 1).map(String::as_str) == Some("::")
                    && (i == 0 || toks[i - 1] != "::") =>
            {
                let here = stack.last().unwrap().0.clone();
                let mut at = i;
                for p in read_paths(&toks, &mut at, &here) {
                    out.push((here.clone(), p));
                }
                i = at.max(i + 1);
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    out
}

/// Sibling dependencies of one crate: parent module -> (from child, to
/// child) edges.
pub(crate) type Edges = BTreeMap<ModPath, BTreeSet<(String, String)>>;

/// The sibling dependencies of the crate rooted at `root`.
pub(crate) fn sibling_edges(root: &Path) -> anyhow::Result<Edges> {
    let files = module_files(root)?;
    let mut edges = Edges::new();
    for (path, file) in &files {
        let text = fs::read_to_string(file)?;
        for (from, to) in references(&text, path) {
            // The referenced path up to the deepest module in a file.
            let mut to = to;
            while !to.is_empty() && !files.contains_key(&to) {
                to.pop();
            }
            // `from` may be an inline module: it belongs to its file's module
            // for this purpose only when the file module is its ancestor,
            // which it always is.
            let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
            if common == from.len() || common == to.len() {
                continue; // same module, ancestor or descendant
            }
            edges
                .entry(from[..common].to_vec())
                .or_default()
                .insert((from[common].clone(), to[common].clone()));
        }
    }
    Ok(edges)
}

/// Every group of sibling modules that depend on each other in a circle:
/// (parent, members).
pub(crate) fn cycles(edges: &Edges) -> Vec<(ModPath, Vec<String>)> {
    let mut out = Vec::new();
    for (parent, es) in edges {
        let nodes: BTreeSet<&String> = es.iter().flat_map(|(a, b)| [a, b]).collect();
        // Reachability by repeated expansion (the graphs are tiny).
        let reach = |from: &String| -> BTreeSet<String> {
            let mut seen = BTreeSet::new();
            let mut todo = vec![from.clone()];
            while let Some(n) = todo.pop() {
                for (a, b) in es {
                    if *a == n && seen.insert(b.clone()) {
                        todo.push(b.clone());
                    }
                }
            }
            seen
        };
        let mut done = BTreeSet::new();
        for n in &nodes {
            if done.contains(*n) {
                continue;
            }
            let fwd = reach(n);
            if !fwd.contains(*n) {
                continue;
            }
            let scc: Vec<String> = nodes
                .iter()
                .filter(|m| fwd.contains(**m) && reach(m).contains(*n))
                .map(|m| (*m).clone())
                .collect();
            done.extend(scc.iter().cloned());
            out.push((parent.clone(), scc));
        }
    }
    out
}

/// Source files over [`MAX_LINES`] lines that [`LONG_FILES`] does not name:
/// (path from the workspace root, lines).
pub(crate) fn long_files(ws: &Path) -> anyhow::Result<Vec<(String, usize)>> {
    let mut out = Vec::new();
    let mut todo = vec![ws.to_path_buf()];
    while let Some(dir) = todo.pop() {
        for e in fs::read_dir(&dir)? {
            let p = e?.path();
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            if p.is_dir() {
                if !name.starts_with('.') && name != "target" {
                    todo.push(p);
                }
            } else if name.ends_with(".rs") {
                let rel = p.strip_prefix(ws).unwrap().to_string_lossy().into_owned();
                let lines = fs::read_to_string(&p)?.lines().count();
                if lines > MAX_LINES && !LONG_FILES.iter().any(|(f, _)| *f == rel) {
                    out.push((rel, lines));
                }
            }
        }
    }
    out.sort();
    Ok(out)
}

/// `cargo xtask arch`: prints each crate's sibling dependencies, then any
/// cycle and any long file; fails if there is one.
pub(crate) fn run(ws: &Path) -> anyhow::Result<()> {
    let mut bad = 0;
    for c in crate_roots(ws) {
        let edges = sibling_edges(&c.root)?;
        println!("{}", c.name);
        for (parent, es) in &edges {
            let at = if parent.is_empty() {
                "crate".to_string()
            } else {
                parent.join("::")
            };
            let mut by_from: BTreeMap<&String, Vec<&String>> = BTreeMap::new();
            for (a, b) in es {
                by_from.entry(a).or_default().push(b);
            }
            for (a, bs) in by_from {
                let bs: Vec<&str> = bs.iter().map(|s| s.as_str()).collect();
                println!("  {at}: {a} -> {}", bs.join(", "));
            }
        }
        for (parent, scc) in cycles(&edges) {
            bad += 1;
            println!(
                "  CYCLE under {}: {}",
                if parent.is_empty() {
                    "crate".into()
                } else {
                    parent.join("::")
                },
                scc.join(" <-> ")
            );
        }
    }
    for (f, n) in long_files(ws)? {
        bad += 1;
        println!(
            "LONG FILE {f}: {n} lines (limit {MAX_LINES}; add it to LONG_FILES with a reason)"
        );
    }
    anyhow::ensure!(bad == 0, "{bad} architecture problem(s)");
    println!("no import cycles; no file over {MAX_LINES} lines without a reason");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ws() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .unwrap()
            .to_path_buf()
    }

    #[test]
    fn no_crate_has_an_import_cycle() {
        let mut found = Vec::new();
        for c in crate_roots(&ws()) {
            for (parent, scc) in cycles(&sibling_edges(&c.root).unwrap()) {
                found.push(format!("{} {:?}: {scc:?}", c.name, parent));
            }
        }
        assert!(found.is_empty(), "import cycles: {found:#?}");
    }

    #[test]
    fn no_source_file_is_over_the_limit_without_a_reason() {
        let long = long_files(&ws()).unwrap();
        assert!(long.is_empty(), "files over {MAX_LINES} lines: {long:?}");
    }

    #[test]
    fn paths_resolve_through_groups_super_and_inline_modules() {
        let cases: &[(&str, &[&str], &[&str])] = &[
            ("use crate::a::b;", &["x"], &["a::b"]),
            (
                "use crate::{a::{b, c::D}, e};",
                &["x"],
                &["a::b", "a::c::D", "e"],
            ),
            ("use super::{self, y};", &["p", "x"], &["p", "p::y"]),
            ("fn f() { super::super::q::r(); }", &["p", "x"], &["q::r"]),
            ("mod tests { use super::*; }", &["p", "x"], &["p::x"]),
            (
                "let s = \"crate::no::path\"; // crate::nor::this",
                &["x"],
                &[],
            ),
        ];
        for (code, at, want) in cases {
            let at: ModPath = at.iter().map(ToString::to_string).collect();
            let got: Vec<String> = references(code, &at)
                .into_iter()
                .map(|(_, p)| p.join("::"))
                .collect();
            assert_eq!(got, *want, "{code}");
        }
    }

    #[test]
    fn a_cycle_between_siblings_is_found_and_a_child_parent_use_is_not() {
        let mut e = Edges::new();
        e.entry(vec![]).or_default().extend([
            ("a".to_string(), "b".to_string()),
            ("b".to_string(), "c".to_string()),
            ("c".to_string(), "a".to_string()),
            ("c".to_string(), "d".to_string()),
        ]);
        let c = cycles(&e);
        assert_eq!(c, vec![(vec![], vec!["a".into(), "b".into(), "c".into()])]);
        e.clear();
        e.entry(vec![])
            .or_default()
            .insert(("a".into(), "b".into()));
        assert!(cycles(&e).is_empty());
    }
}
