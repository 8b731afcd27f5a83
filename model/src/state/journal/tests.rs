use std::{
    fs,
    os::unix::fs::{PermissionsExt as _, symlink},
    sync::atomic::{AtomicU32, Ordering},
};

use super::*;
use crate::{
    acl::AclState,
    state::{self, Saved},
};

/// A fresh directory (mode 0700) and the state file path in it.
fn scratch(tag: &str) -> (PathBuf, PathBuf) {
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "xdpgate-journal-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir(&dir).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
    let state = dir.join("state.json");
    (dir, state)
}

fn add(prefix: &str) -> Change {
    Change::SetAdd {
        name: "s".into(),
        prefixes: vec![prefix.into()],
    }
}

fn del(prefix: &str) -> Change {
    Change::SetDel {
        name: "s".into(),
        prefixes: vec![prefix.into()],
    }
}

/// A state file at sequence number `seq` holding set `s` with 10.200.0.0/24.
fn saved_at(state: &Path, seq: u64) -> Saved {
    let acl = AclState::default().apply(&add("10.200.0.0/24")).unwrap();
    let saved = Saved {
        seq,
        ..Saved::new("cfg", &acl, Vec::new())
    };
    state::save(state, &saved).unwrap();
    saved
}

fn prefixes_of(saved: &Saved) -> Vec<String> {
    saved.acl.sets["s"].clone()
}

#[test]
fn appended_changes_are_replayed_in_order_after_the_state_files_sequence_number() {
    let (dir, state) = scratch("replay");
    saved_at(&state, 0);
    let mut j = Journal::open(&state).unwrap();
    j.append(1, &add("10.200.1.0/24")).unwrap();
    j.append(2, &add("fd00:200::/48")).unwrap();
    j.append(3, &del("10.200.0.0/24")).unwrap();
    assert_eq!((j.entries(), j.over_bound()), (3, false));
    let mut saved = state::load(&state).unwrap().unwrap();
    let r = replay(&state, &mut saved).unwrap();
    assert_eq!(
        r,
        Replayed {
            applied: 3,
            torn: None,
            last_seq: 3
        }
    );
    assert_eq!(saved.seq, 3);
    assert_eq!(prefixes_of(&saved), ["10.200.1.0/24", "fd00:200::/48"]);
    assert_eq!(
        fs::metadata(j.path()).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn entries_the_state_file_already_includes_are_not_applied_again() {
    let (dir, state) = scratch("skip");
    // The crash came between the new state file and the trim: the journal
    // still holds entries 1 and 2, which the file (seq 2) includes.
    saved_at(&state, 2);
    let mut j = Journal::open(&state).unwrap();
    j.append(1, &add("10.200.1.0/24")).unwrap();
    j.append(2, &add("10.200.2.0/24")).unwrap();
    j.append(3, &add("10.200.3.0/24")).unwrap();
    let mut saved = state::load(&state).unwrap().unwrap();
    let r = replay(&state, &mut saved).unwrap();
    assert_eq!((r.applied, r.last_seq), (1, 3));
    assert_eq!(prefixes_of(&saved), ["10.200.0.0/24", "10.200.3.0/24"]);
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn a_torn_last_line_is_ignored_reported_and_cut_before_the_next_append() {
    let (dir, state) = scratch("torn");
    saved_at(&state, 0);
    let mut j = Journal::open(&state).unwrap();
    j.append(1, &add("10.200.1.0/24")).unwrap();
    drop(j);
    let path = path_of(&state);
    let mut f = fs::OpenOptions::new().append(true).open(&path).unwrap();
    f.write_all(br#"{"seq":2,"change":{"op":"set_add","na"#)
        .unwrap();
    drop(f);
    let mut saved = state::load(&state).unwrap().unwrap();
    let r = replay(&state, &mut saved).unwrap();
    assert_eq!((r.applied, r.torn, r.last_seq), (1, Some(2), 1));
    // The next append starts a line of its own: entry 2 again.
    let mut j = Journal::open(&state).unwrap();
    assert_eq!(j.entries(), 1);
    j.append(2, &add("10.200.2.0/24")).unwrap();
    let mut saved = state::load(&state).unwrap().unwrap();
    let r = replay(&state, &mut saved).unwrap();
    assert_eq!((r.applied, r.torn), (2, None));
    assert_eq!(
        prefixes_of(&saved),
        ["10.200.0.0/24", "10.200.1.0/24", "10.200.2.0/24"]
    );
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn a_bad_middle_line_is_an_error_naming_the_file_the_line_and_the_fix() {
    struct Case {
        name: &'static str,
        line2: &'static str,
        says: &'static str,
    }
    let cases = [
        Case {
            name: "not JSON",
            line2: "{garbage",
            says: "not a journal entry",
        },
        Case {
            name: "unknown field",
            line2: r#"{"seq":2,"change":{"op":"policy","iface":"x","verdict":"deny"},"x":1}"#,
            says: "not a journal entry",
        },
        Case {
            name: "a gap in the numbers",
            line2: r#"{"seq":5,"change":{"op":"set_add","name":"s","prefixes":["10.200.9.0/24"]}}"#,
            says: "sequence number 5 follows 1",
        },
        Case {
            name: "a change that does not apply",
            line2: r#"{"seq":2,"change":{"op":"set_add","name":"s","prefixes":["10.300.0.0/24"]}}"#,
            says: "the change does not apply",
        },
    ];
    for c in cases {
        let (dir, state) = scratch("bad");
        let before = saved_at(&state, 0);
        let path = path_of(&state);
        let line1 = serde_json::to_string(&Entry {
            seq: 1,
            change: add("10.200.1.0/24"),
        })
        .unwrap();
        let line3 = serde_json::to_string(&Entry {
            seq: 3,
            change: add("10.200.3.0/24"),
        })
        .unwrap();
        fs::write(&path, format!("{line1}\n{}\n{line3}\n", c.line2)).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        let mut saved = state::load(&state).unwrap().unwrap();
        let err = replay(&state, &mut saved).unwrap_err().to_string();
        assert!(
            err.contains(&format!("journal {} line 2: ", path.display())),
            "{}: {err}",
            c.name
        );
        assert!(err.contains(c.says), "{}: {err}", c.name);
        assert!(err.contains("move the journal away"), "{}: {err}", c.name);
        assert_eq!(saved, before, "{}: nothing applied", c.name);
        let _ = fs::remove_dir_all(&dir);
    }
}

#[test]
fn a_journal_that_does_not_continue_the_state_file_is_an_error() {
    let (dir, state) = scratch("gap");
    saved_at(&state, 4);
    let mut j = Journal::open(&state).unwrap();
    j.append(6, &add("10.200.6.0/24")).unwrap();
    let mut saved = state::load(&state).unwrap().unwrap();
    let err = replay(&state, &mut saved).unwrap_err().to_string();
    assert!(
        err.contains("line 1: sequence number 6 where the state file"),
        "{err}"
    );
    assert!(err.contains("ends at 4"), "{err}");
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn compaction_keeps_exactly_the_entries_after_the_saved_number_and_numbers_continue() {
    let (dir, state) = scratch("trim");
    saved_at(&state, 0);
    let mut j = Journal::open(&state).unwrap();
    for seq in 1..=5 {
        j.append(seq, &add(&format!("10.200.{seq}.0/24"))).unwrap();
    }
    // A compaction as of entry 3: the state file with 1..=3, then the trim.
    let mut upto3 = state::load(&state).unwrap().unwrap();
    let mut full = upto3.clone();
    replay(&state, &mut full).unwrap();
    let mut acl = AclState::from_file(&upto3.acl).unwrap();
    for seq in 1..=3 {
        acl = acl.apply(&add(&format!("10.200.{seq}.0/24"))).unwrap();
    }
    upto3.acl = rule_file_of(&acl);
    upto3.seq = 3;
    state::save(&state, &upto3).unwrap();
    j.trim(3).unwrap();
    let kept = read(&state).unwrap();
    assert_eq!(
        kept.entries.iter().map(|e| e.seq).collect::<Vec<_>>(),
        [4, 5]
    );
    assert_eq!((j.entries(), j.bytes()), (2, kept.good_bytes));
    // Appending goes on after the trim with the next number.
    j.append(6, &add("10.200.6.0/24")).unwrap();
    let mut saved = state::load(&state).unwrap().unwrap();
    let r = replay(&state, &mut saved).unwrap();
    assert_eq!((r.applied, r.last_seq, saved.seq), (3, 6, 6));
    let mut expect = prefixes_of(&full);
    expect.push("10.200.6.0/24".into());
    assert_eq!(prefixes_of(&saved), expect);
    // A trim past every entry empties the journal.
    j.trim(6).unwrap();
    assert_eq!(fs::read(path_of(&state)).unwrap(), b"");
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn a_journal_that_is_a_symbolic_link_or_in_an_open_directory_is_refused_and_nothing_is_written() {
    let (dir, state) = scratch("unsafe");
    let victim = dir.join("victim");
    fs::write(&victim, "precious\n").unwrap();
    symlink(&victim, path_of(&state)).unwrap();
    let err = Journal::open(&state).unwrap_err().to_string();
    assert!(err.contains("a symbolic link"), "{err}");
    let err = read(&state).unwrap_err().to_string();
    assert!(err.contains("a symbolic link"), "{err}");
    assert_eq!(fs::read_to_string(&victim).unwrap(), "precious\n");
    fs::remove_file(path_of(&state)).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).unwrap();
    let err = Journal::open(&state).unwrap_err().to_string();
    assert!(err.contains("writable by others (mode 0777)"), "{err}");
    assert!(read(&state).is_err());
    assert!(!path_of(&state).exists(), "no journal was created");
    let _ = fs::remove_dir_all(&dir);
}
