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
use std::{
    fs::{self, File, OpenOptions},
    io::Write as _,
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::acl::{AclState, RuleFile};

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
        }
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

/// Reads the state file; `None` if there is none.
pub fn load(path: &Path) -> Result<Option<Saved>, StateError> {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(StateError::Io {
                path: path.to_path_buf(),
                what: "cannot read",
                source,
            });
        }
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

/// Writes `saved` to `path` atomically (write, fsync, rename, fsync the
/// directory). The file is readable by root only.
pub fn save(path: &Path, saved: &Saved) -> Result<(), StateError> {
    let io = |what, source| StateError::Io {
        path: path.to_path_buf(),
        what,
        source,
    };
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(|e| io("cannot create its directory", e))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "state".into());
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let body = serde_json::to_vec_pretty(saved).map_err(|e| {
        io(
            "cannot encode",
            std::io::Error::new(std::io::ErrorKind::InvalidData, e),
        )
    })?;
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| io("cannot create the temporary file", e))?;
        f.write_all(&body).map_err(|e| io("cannot write", e))?;
        f.write_all(b"\n").map_err(|e| io("cannot write", e))?;
        f.sync_all().map_err(|e| io("cannot fsync", e))?;
        fs::rename(&tmp, path).map_err(|e| io("cannot rename into place", e))?;
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io("cannot fsync its directory", e))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
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
}
