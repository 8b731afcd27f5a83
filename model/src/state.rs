//! The daemon's state file: the rules, sets, policies and address bindings in
//! force, saved after every runtime change so that a restart comes back with
//! the same state.
//!
//! The file records the digest of the configuration it grew from. At start the
//! daemon resumes from it only while that configuration is unchanged; an
//! edited configuration wins (and a reload always replaces runtime changes
//! with the file's contents). Writes are atomic: a temporary file in the same
//! directory is written and fsynced, renamed over the old one, and the
//! directory is fsynced, so a crash leaves either the old or the new state.
//! The directory must be owned by root and writable by no one else
//! ([`crate::fsafe`]); nothing another user planted there is followed.
use std::{
    ffi::OsStr,
    fs::File,
    io::Read as _,
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::{
    acl::{AclState, RuleFile},
    fsafe::{FsafeError, SafeDir},
};

pub mod journal;

/// Format version written into the file.
pub const STATE_VERSION: u32 = 1;

/// Errors of reading or writing the state file.
#[derive(Debug, Error)]
pub enum StateError {
    /// The file or its directory could not be read or written.
    #[error("state file {path}: {what}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The step that failed.
        what: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The directory or the file is not safe to write: another user could
    /// redirect what is written there.
    #[error(transparent)]
    Unsafe(FsafeError),
    /// The file exists but is not a state file this version understands.
    #[error(
        "state file {path} is unreadable ({why}); move it away to start from the configuration alone"
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// A line of the journal cannot be replayed.
    #[error(
        "journal {path} line {line}: {why}; the changes from this line on cannot be replayed: correct or remove that line and the ones after it (their changes are then lost), or move the journal away to start from the state file alone"
    )]
    Journal {
        /// The journal.
        path: PathBuf,
        /// The 1-based line.
        line: usize,
        /// What is wrong.
        why: String,
    },
}

/// What the state file holds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Saved {
    /// [`STATE_VERSION`].
    pub version: u32,
    /// Digest of the configuration the state grew from
    /// ([`crate::config::digest`]).
    pub config_digest: String,
    /// When it was written (seconds since the epoch).
    pub saved_at: u64,
    /// Sets, rules and default policies.
    pub acl: RuleFile,
    /// Address bindings, with which of them xdpgate added.
    pub bindings: Vec<crate::bind::Binding>,
    /// Load-balanced services (absent in files written before they existed).
    #[serde(default)]
    pub services: Vec<crate::lb::ServiceEntry>,
    /// The last journal entry the file includes ([`journal`]): loading
    /// replays the journal's entries after it (0 in files written before
    /// the journal existed).
    #[serde(default)]
    pub seq: u64,
}

impl Saved {
    /// A state to save now.
    pub fn new(config_digest: &str, acl: &AclState, bindings: Vec<crate::bind::Binding>) -> Self {
        Saved {
            version: STATE_VERSION,
            config_digest: config_digest.to_string(),
            saved_at: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            acl: rule_file_of(acl),
            bindings,
            services: Vec::new(),
            seq: 0,
        }
    }
}

impl Saved {
    /// The saved ACL state, checked as a rule file is; a state file at
    /// `path` whose rules do not check is corrupt (every error named).
    pub fn acl_state(&self, path: &Path) -> Result<AclState, StateError> {
        AclState::from_file(&self.acl).map_err(|errs| StateError::Corrupt {
            path: path.to_path_buf(),
            why: errs
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; "),
        })
    }

    /// Every interface the saved state names: in a default policy, a rule's
    /// `iface` or a binding. One the configuration does not configure is an
    /// orphan: its policy and rules apply nowhere.
    pub fn interfaces_named(&self) -> std::collections::BTreeSet<String> {
        self.acl
            .policy
            .keys()
            .cloned()
            .chain(self.acl.rules.iter().filter_map(|r| r.iface.clone()))
            .chain(self.bindings.iter().map(|b| b.iface.clone()))
            .collect()
    }
}

/// The rule file that rebuilds `state` exactly.
pub fn rule_file_of(state: &AclState) -> RuleFile {
    RuleFile {
        sets: state
            .sets
            .iter()
            .map(|(n, s)| {
                let prefixes =
                    s.v4.iter()
                        .map(ToString::to_string)
                        .chain(s.v6.iter().map(ToString::to_string))
                        .collect();
                (n.clone(), prefixes)
            })
            .collect(),
        rules: state.ordered_rules().into_iter().cloned().collect(),
        policy: state.policies.clone(),
    }
}

/// The state file's directory and name (`.` when the path has no directory).
fn split(path: &Path) -> (&Path, &OsStr) {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    (dir, path.file_name().unwrap_or(OsStr::new("state.json")))
}

fn fs_error(path: &Path) -> impl FnOnce(FsafeError) -> StateError + '_ {
    move |e| match e {
        FsafeError::Io { what, source, .. } => StateError::Io {
            path: path.to_path_buf(),
            what,
            source,
        },
        e @ FsafeError::Unsafe { .. } => StateError::Unsafe(e),
    }
}

/// Checks the state file's directory (owned by root or us, writable by
/// neither group nor others) and the file itself (not a symbolic link
/// another user planted). A missing directory passes: there is nothing to
/// read, and [`save`] creates it.
pub fn check(path: &Path) -> Result<(), StateError> {
    let (dir, name) = split(path);
    match SafeDir::open(dir) {
        Ok(d) => d.check_link(name).map(drop).map_err(fs_error(path)),
        Err(FsafeError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            Ok(())
        }
        Err(e) => Err(fs_error(path)(e)),
    }
}

/// Reads the state file; `None` if there is none. Its directory is checked
/// first ([`check`]); the file is read without following a symbolic link,
/// unless the link is root's (or ours), never one another user planted.
pub fn load(path: &Path) -> Result<Option<Saved>, StateError> {
    let (dir, name) = split(path);
    let dir = match SafeDir::open(dir) {
        Ok(d) => d,
        Err(FsafeError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            return Ok(None);
        }
        Err(e) => return Err(fs_error(path)(e)),
    };
    let own_link = dir.check_link(name).map_err(fs_error(path))?;
    let opened = if own_link {
        File::open(path).map_err(|source| FsafeError::Io {
            what: "cannot read",
            path: path.to_path_buf(),
            source,
        })
    } else {
        dir.open_read(name)
    };
    let mut text = String::new();
    match opened {
        Ok(mut f) => f
            .read_to_string(&mut text)
            .map_err(|source| StateError::Io {
                path: path.to_path_buf(),
                what: "cannot read",
                source,
            })?,
        Err(FsafeError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            return Ok(None);
        }
        Err(e) => return Err(fs_error(path)(e)),
    };
    let saved: Saved = serde_json::from_str(&text).map_err(|e| StateError::Corrupt {
        path: path.to_path_buf(),
        why: e.to_string(),
    })?;
    if saved.version != STATE_VERSION {
        return Err(StateError::Corrupt {
            path: path.to_path_buf(),
            why: format!(
                "version {} where this xdpgate writes {STATE_VERSION}",
                saved.version
            ),
        });
    }
    Ok(Some(saved))
}

/// Writes `saved` to `path` atomically through [`SafeDir::write_atomic`]
/// (a temporary made with `O_EXCL|O_NOFOLLOW` under an unpredictable name,
/// fsynced, renamed over the file, the directory fsynced). The directory is
/// created (mode 0700) if missing and checked before every write; a state
/// file that is a symbolic link another user planted is refused, one of
/// root's is written through (into the directory it points to, checked
/// the same way). The file is readable by root only.
pub fn save(path: &Path, saved: &Saved) -> Result<(), StateError> {
    let mut body = serde_json::to_vec_pretty(saved).map_err(|e| StateError::Io {
        path: path.to_path_buf(),
        what: "cannot encode",
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
    })?;
    body.push(b'\n');
    let (dir, name) = split(path);
    let safe = SafeDir::create(dir, 0o700).map_err(fs_error(path))?;
    if safe.check_link(name).map_err(fs_error(path))? {
        // Root's own link: the file it names, in a directory checked alike.
        let real = std::fs::canonicalize(path).or_else(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                // A dangling link: the file it would name.
                std::fs::read_link(path).map(|t| dir.join(t))
            } else {
                Err(e)
            }
        });
        let real = real.map_err(|source| StateError::Io {
            path: path.to_path_buf(),
            what: "cannot resolve the symbolic link",
            source,
        })?;
        let (rdir, rname) = split(&real);
        let rsafe = SafeDir::open(rdir).map_err(fs_error(path))?;
        return rsafe.write_atomic(rname, &body).map_err(fs_error(path));
    }
    safe.write_atomic(name, &body).map_err(fs_error(path))
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;
    use crate::acl::Change;

    #[test]
    fn saves_atomically_and_round_trips() {
        let dir = std::env::temp_dir().join(format!("xdpgate-state-{}", std::process::id()));
        let path = dir.join("sub/state.json");
        let _ = fs::remove_dir_all(&dir);
        assert!(load(&path).unwrap().is_none());
        let acl = AclState::default()
            .apply(&Change::SetAdd {
                name: "s".into(),
                prefixes: vec!["10.200.0.0/16".into(), "fd00:200::/32".into()],
            })
            .unwrap();
        let saved = Saved::new("abc", &acl, Vec::new());
        save(&path, &saved).unwrap();
        let back = load(&path).unwrap().unwrap();
        assert_eq!(back, saved);
        assert_eq!(AclState::from_file(&back.acl).unwrap(), acl);
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        // No temporary file is left behind.
        let names: Vec<_> = fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
        fs::write(&path, "{not json").unwrap();
        let err = load(&path).unwrap_err().to_string();
        assert!(err.contains("unreadable"), "{err}");
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_state_directory_others_may_write_to_is_refused_and_nothing_is_written() {
        use std::os::unix::fs::{PermissionsExt as _, symlink};
        let dir = std::env::temp_dir().join(format!("xdpgate-state-open-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir(&dir).unwrap();
        let victim = std::env::temp_dir().join(format!("xdpgate-victim-{}", std::process::id()));
        fs::write(&victim, "precious\n").unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).unwrap();
        let path = dir.join("state.json");
        // The old predictable temporary and the file itself, both planted.
        symlink(
            &victim,
            dir.join(format!(".state.json.tmp.{}", std::process::id())),
        )
        .unwrap();
        let saved = Saved::new("abc", &AclState::default(), Vec::new());
        let err = save(&path, &saved).unwrap_err().to_string();
        assert!(err.contains(&dir.display().to_string()), "{err}");
        assert!(err.contains("writable by others (mode 0777)"), "{err}");
        assert!(
            err.contains(&format!("chmod 0755 {}", dir.display())),
            "{err}"
        );
        assert!(load(&path).unwrap_err().to_string().contains("chmod 0755"));
        assert!(check(&path).is_err());
        assert_eq!(fs::read_to_string(&victim).unwrap(), "precious\n");
        let _ = fs::remove_dir_all(&dir);
        let _ = fs::remove_file(&victim);
    }

    #[test]
    fn a_state_file_that_is_another_users_symbolic_link_is_refused() {
        use std::os::unix::fs::symlink;
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: lchown needs root");
            return;
        }
        let dir = std::env::temp_dir().join(format!("xdpgate-state-link-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("s")).unwrap();
        let victim = dir.join("victim");
        fs::write(&victim, "precious\n").unwrap();
        let path = dir.join("s/state.json");
        symlink(&victim, &path).unwrap();
        std::os::unix::fs::lchown(&path, Some(65534), Some(65534)).unwrap();
        let saved = Saved::new("abc", &AclState::default(), Vec::new());
        let err = save(&path, &saved).unwrap_err().to_string();
        assert!(err.contains("a symbolic link owned by uid 65534"), "{err}");
        let err = load(&path).unwrap_err().to_string();
        assert!(err.contains("a symbolic link owned by uid 65534"), "{err}");
        assert_eq!(fs::read_to_string(&victim).unwrap(), "precious\n");
        // Root's own link is written through, into the file it names.
        fs::remove_file(&path).unwrap();
        symlink(&victim, &path).unwrap();
        save(&path, &saved).unwrap();
        assert_eq!(load(&path).unwrap().unwrap(), saved);
        assert!(
            fs::symlink_metadata(&path)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        let _ = fs::remove_dir_all(&dir);
    }
}
