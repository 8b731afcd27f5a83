//! The configuration's paths, checked as `xdpgate run` will use them, so that
//! `check` refuses what `run` would refuse. Only what needs no privilege is
//! looked at: whether an existing path is a directory or a regular file, and
//! whether a missing one could be created (its first existing ancestor is a
//! directory). Permissions are left to `run`, which runs as root.
use std::{
    io::ErrorKind,
    path::{Component, Path},
};

/// Why `run` would refuse `p` as its state file (`[daemon] state_file`), if it
/// would. `run` reads the saved state from it at start (a directory or a FIFO
/// cannot be read as JSON), creates its directory if missing, and replaces it
/// by renaming a temporary file beside it.
pub(super) fn state_file_problem(p: &str) -> Option<String> {
    if p.contains('\0') {
        return Some(format!(
            "{p:?} contains a NUL byte (\\u0000), which no path can hold"
        ));
    }
    let path = Path::new(p);
    if path.is_relative() {
        return Some(format!(
            "{p} must be an absolute path (e.g. /var/lib/xdpgate/state.json)"
        ));
    }
    let names_dir = p.ends_with('/')
        || matches!(
            path.components().next_back(),
            None | Some(Component::RootDir | Component::CurDir | Component::ParentDir)
        )
        || p.ends_with("/.");
    if names_dir {
        return Some(format!(
            "{p} names a directory: give the path of a file in it (e.g. {}/state.json)",
            p.trim_end_matches('/')
        ));
    }
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => Some(format!(
            "{p} is a directory: give the path of a file in it (e.g. {p}/state.json)"
        )),
        Ok(m) if !m.is_file() => Some(format!(
            "{p} exists and is not a regular file (xdpgate reads its saved state from it at start and replaces it on every save)"
        )),
        Ok(_) => None,
        Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::NotADirectory) => {
            // `run` creates the missing directories: each must be creatable,
            // that is, the first existing ancestor must be a directory.
            let blocker = path
                .ancestors()
                .skip(1)
                .find_map(|a| std::fs::metadata(a).ok().map(|m| (a, m)))?;
            if blocker.1.is_dir() {
                None
            } else {
                Some(format!(
                    "{p} cannot be created: {} is not a directory",
                    blocker.0.display()
                ))
            }
        }
        // Permission denied and the like: `run` (as root) finds out.
        Err(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Paths `run` would refuse, each with a phrase its message must hold,
    /// and paths it accepts (`None`).
    #[test]
    fn state_file_paths_are_judged_as_run_would() {
        let dir = std::env::temp_dir().join(format!("xdpgate-paths-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("plain");
        std::fs::write(&file, "{}").unwrap();
        let d = dir.display().to_string();
        let f = file.display().to_string();
        let table: Vec<(&str, String, Option<&str>)> = vec![
            ("an existing directory", d.clone(), Some("is a directory")),
            ("/tmp itself", "/tmp".into(), Some("is a directory")),
            (
                "a trailing slash",
                format!("{d}/new/"),
                Some("names a directory"),
            ),
            ("a final ..", format!("{d}/.."), Some("names a directory")),
            ("the root", "/".into(), Some("names a directory")),
            ("a NUL byte", format!("{d}/st\0ate.json"), Some("NUL byte")),
            (
                "a relative path",
                "state.json".into(),
                Some("absolute path"),
            ),
            ("a device", "/dev/null".into(), Some("not a regular file")),
            (
                "a file as a parent",
                format!("{f}/sub/state.json"),
                Some("is not a directory"),
            ),
            ("an existing file", f.clone(), None),
            ("a new file in a directory", format!("{d}/new.json"), None),
            ("missing directories", format!("{d}/a/b/c.json"), None),
        ];
        for (what, p, want) in table {
            let got = state_file_problem(&p);
            match (want, &got) {
                (None, None) => {}
                (Some(w), Some(g)) if g.contains(w) => {}
                _ => panic!("{what} ({p:?}): got {got:?}, want {want:?}"),
            }
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
