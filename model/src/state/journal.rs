//! The write-ahead journal beside the state file: every ACL change is
//! appended as one JSON line (`{"seq":N,"change":{...}}`, the change as the
//! API received it) and `fdatasync`ed before the CLI is answered, so that a
//! one-prefix change costs one short write instead of a save of the whole
//! state (about 1 s at 1M prefixes per family).
//!
//! The state file records the sequence number it includes ([`Saved::seq`]).
//! Loading is the state file, then the journal's entries with a higher
//! number, applied in order with the validation of live changes
//! ([`replay`]). A last line without its newline is a torn append (a crash
//! during the write, never acknowledged): it is ignored and reported. Any
//! other bad line, a gap in the numbers or a change that no longer applies
//! is an error naming the file and the line.
//!
//! The journal is compacted (a new full state file, then [`Journal::trim`]
//! to the entries after it) when it holds more than [`MAX_ENTRIES`] entries
//! or [`MAX_BYTES`] bytes, and after every full save. It lives in the state
//! file's directory (`NAME.journal`), is opened with the checks of
//! [`crate::fsafe`] (never through a symbolic link, mode 0600, one link,
//! owned by root or us) and rewritten only through
//! [`SafeDir::write_atomic`].
use std::{
    ffi::OsString,
    fs::File,
    io::{Read as _, Seek as _, SeekFrom, Write as _},
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use super::{Saved, StateError, fs_error, rule_file_of, split};
use crate::{
    acl::Change,
    fsafe::{FsafeError, SafeDir},
};

/// Entries after which the daemon compacts the journal.
pub const MAX_ENTRIES: usize = 1024;

/// Bytes after which the daemon compacts the journal (one `acl replace`
/// of a large file is one large line).
pub const MAX_BYTES: u64 = 16 << 20;

/// One line of the journal.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// Sequence number: one more than the entry before it (or than the
    /// state file's [`Saved::seq`] for the first one after a compaction).
    pub seq: u64,
    /// The change as the API received it.
    pub change: Change,
}

/// The journal of the state file `state`: `state` with `.journal` appended.
pub fn path_of(state: &Path) -> PathBuf {
    let (dir, name) = split(state);
    let mut n = OsString::from(name);
    n.push(".journal");
    dir.join(n)
}

/// What a journal holds: its complete entries, and the line number of a
/// torn last line if there was one.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Contents {
    /// Every complete entry, in order.
    pub entries: Vec<Entry>,
    /// The 1-based line of a torn last line (ignored).
    pub torn: Option<usize>,
    /// Bytes of the complete lines (what stays after a torn tail is cut).
    pub good_bytes: u64,
}

impl Contents {
    /// The sequence number of the last entry, if any.
    pub fn last_seq(&self) -> Option<u64> {
        self.entries.last().map(|e| e.seq)
    }
}

fn bad(path: &Path, line: usize, why: impl Into<String>) -> StateError {
    StateError::Journal {
        path: path.to_path_buf(),
        line,
        why: why.into(),
    }
}

/// Parses a journal's bytes (`path` for the errors).
pub fn parse(path: &Path, bytes: &[u8]) -> Result<Contents, StateError> {
    let mut out = Contents::default();
    let mut rest = bytes;
    let mut line = 0;
    while !rest.is_empty() {
        line += 1;
        let Some(end) = rest.iter().position(|&b| b == b'\n') else {
            // No newline: the append was cut short and never acknowledged.
            out.torn = Some(line);
            break;
        };
        let entry: Entry = serde_json::from_slice(&rest[..end])
            .map_err(|e| bad(path, line, format!("not a journal entry ({e})")))?;
        if let Some(prev) = out.last_seq()
            && entry.seq != prev + 1
        {
            return Err(bad(
                path,
                line,
                format!(
                    "sequence number {} follows {prev}: entries are missing",
                    entry.seq
                ),
            ));
        }
        out.entries.push(entry);
        out.good_bytes += end as u64 + 1;
        rest = &rest[end + 1..];
    }
    Ok(out)
}

/// Reads the journal of the state file `state` without following a
/// symbolic link; an empty [`Contents`] when there is none.
pub fn read(state: &Path) -> Result<Contents, StateError> {
    let path = path_of(state);
    let (dir, name) = split(&path);
    let dir = match SafeDir::open(dir) {
        Ok(d) => d,
        Err(FsafeError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Contents::default());
        }
        Err(e) => return Err(fs_error(&path)(e)),
    };
    let mut f = match dir.open_read(name) {
        Ok(f) => f,
        Err(FsafeError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Contents::default());
        }
        Err(e) => return Err(fs_error(&path)(e)),
    };
    let mut bytes = Vec::new();
    f.read_to_end(&mut bytes).map_err(|source| StateError::Io {
        path: path.clone(),
        what: "cannot read",
        source,
    })?;
    parse(&path, &bytes)
}

/// What [`replay`] did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Replayed {
    /// Entries applied (those after the state file's sequence number).
    pub applied: usize,
    /// The 1-based line of a torn last line that was ignored.
    pub torn: Option<usize>,
    /// The highest sequence number in the state file or the journal.
    pub last_seq: u64,
}

/// Applies to `saved` (read from `state`) the journal's entries after
/// `saved.seq`, in order, each validated as a live change is; `saved.acl`
/// and `saved.seq` then describe the state after the last of them. The
/// first entry after the state file must carry `saved.seq + 1`.
pub fn replay(state: &Path, saved: &mut Saved) -> Result<Replayed, StateError> {
    let contents = read(state)?;
    let path = path_of(state);
    let first = contents.entries.iter().position(|e| e.seq > saved.seq);
    let mut out = Replayed {
        applied: 0,
        torn: contents.torn,
        last_seq: saved.seq.max(contents.last_seq().unwrap_or(0)),
    };
    let Some(first) = first else {
        return Ok(out);
    };
    if contents.entries[first].seq != saved.seq + 1 {
        return Err(bad(
            &path,
            first + 1,
            format!(
                "sequence number {} where the state file {} ends at {}: entries are missing",
                contents.entries[first].seq,
                state.display(),
                saved.seq
            ),
        ));
    }
    let mut acl = saved.acl_state(state)?;
    // In place: a replay of many changes to millions of prefixes copies
    // nothing (a rejected change is undone, and the replay stops there).
    for (i, e) in contents.entries.iter().enumerate().skip(first) {
        let _applied = acl.apply_in_place(&e.change).map_err(|errs| {
            let why = errs
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ");
            bad(&path, i + 1, format!("the change does not apply: {why}"))
        })?;
        out.applied += 1;
    }
    saved.acl = rule_file_of(&acl);
    saved.seq = out.last_seq;
    Ok(out)
}

/// The journal open for appending.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    dir: SafeDir,
    name: OsString,
    file: File,
    entries: usize,
    bytes: u64,
}

impl Journal {
    /// Opens (creating it, mode 0600, its directory 0700) the journal of the
    /// state file `state` with the checks of [`SafeDir::open_file`]; a torn
    /// last line is cut off so that the next entry starts a line.
    pub fn open(state: &Path) -> Result<Journal, StateError> {
        let path = path_of(state);
        let (dir, name) = split(&path);
        let name = name.to_os_string();
        let dir = SafeDir::create(dir, 0o700).map_err(fs_error(&path))?;
        let mut file = dir.open_file(&name).map_err(fs_error(&path))?;
        let io = |what| io_error(&path, what);
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(io("cannot read"))?;
        let contents = parse(&path, &bytes)?;
        if contents.good_bytes != bytes.len() as u64 {
            file.set_len(contents.good_bytes)
                .map_err(io("cannot cut the torn last line"))?;
        }
        file.seek(SeekFrom::Start(contents.good_bytes))
            .map_err(io("cannot seek"))?;
        Ok(Journal {
            path,
            dir,
            name,
            file,
            entries: contents.entries.len(),
            bytes: contents.good_bytes,
        })
    }

    /// The journal's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Entries in the journal.
    pub fn entries(&self) -> usize {
        self.entries
    }

    /// Bytes in the journal.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Whether the journal exceeds [`MAX_ENTRIES`] or [`MAX_BYTES`].
    pub fn over_bound(&self) -> bool {
        self.entries > MAX_ENTRIES || self.bytes > MAX_BYTES
    }

    /// Appends `change` as entry `seq` (one `write` of the whole line) and
    /// waits for it to be on disk (`fdatasync`). After an error the journal
    /// may end in a torn line: open it again (or [`Journal::trim`]) before
    /// the next append.
    pub fn append(&mut self, seq: u64, change: &Change) -> Result<(), StateError> {
        let line = self.line(&EntryRef { seq, change })?;
        self.file
            .write_all(&line)
            .map_err(self.io_err("cannot append"))?;
        self.file
            .sync_data()
            .map_err(self.io_err("cannot fdatasync"))?;
        self.entries += 1;
        self.bytes += line.len() as u64;
        Ok(())
    }

    /// Keeps only the entries after `seq` (those a state file saved with
    /// [`Saved::seq`] = `seq` does not include): the journal is rewritten
    /// atomically and opened again. A torn last line is dropped.
    pub fn trim(&mut self, seq: u64) -> Result<(), StateError> {
        let mut bytes = Vec::new();
        self.file
            .seek(SeekFrom::Start(0))
            .map_err(self.io_err("cannot seek"))?;
        self.file
            .read_to_end(&mut bytes)
            .map_err(self.io_err("cannot read"))?;
        let contents = parse(&self.path, &bytes)?;
        let mut kept = Vec::new();
        for e in contents.entries.iter().filter(|e| e.seq > seq) {
            kept.extend_from_slice(&self.line(e)?);
        }
        self.dir
            .write_atomic(&self.name, &kept)
            .map_err(fs_error(&self.path))?;
        let mut file = self
            .dir
            .open_file(&self.name)
            .map_err(fs_error(&self.path))?;
        file.seek(SeekFrom::End(0))
            .map_err(self.io_err("cannot seek"))?;
        self.file = file;
        self.entries = contents.entries.iter().filter(|e| e.seq > seq).count();
        self.bytes = kept.len() as u64;
        Ok(())
    }

    /// The error of the step `what` on this journal, from its OS error.
    fn io_err(&self, what: &'static str) -> impl FnOnce(std::io::Error) -> StateError + use<> {
        io_error(&self.path, what)
    }

    /// `entry` as one journal line (JSON and its newline).
    fn line(&self, entry: &impl Serialize) -> Result<Vec<u8>, StateError> {
        let mut line = serde_json::to_vec(entry).map_err(|e| {
            self.io_err("cannot encode")(std::io::Error::new(std::io::ErrorKind::InvalidData, e))
        })?;
        line.push(b'\n');
        Ok(line)
    }
}

/// The error of the step `what` on the journal `path`, from its OS error.
fn io_error(path: &Path, what: &'static str) -> impl FnOnce(std::io::Error) -> StateError + use<> {
    let path = path.to_path_buf();
    move |source| StateError::Io { path, what, source }
}

/// An [`Entry`] as it is written: the change borrowed, not copied (an `acl
/// replace` of a million prefixes is one entry).
#[derive(Serialize)]
struct EntryRef<'a> {
    seq: u64,
    change: &'a Change,
}

#[cfg(test)]
mod tests;
