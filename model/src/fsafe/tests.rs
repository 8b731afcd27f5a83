use std::{
    fs,
    os::unix::fs::{MetadataExt as _, PermissionsExt as _, symlink},
    path::PathBuf,
};

use super::*;

/// A unique directory under the system's temporary directory, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        let p = std::env::temp_dir().join(format!(
            "xdpgate-fsafe-{tag}-{}-{:x}",
            std::process::id(),
            random_u64()
        ));
        fs::create_dir(&p).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o700)).unwrap();
        Scratch(p)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn victim(s: &Scratch) -> PathBuf {
    let v = s.0.join("victim");
    fs::write(&v, b"precious\n").unwrap();
    v
}

#[test]
fn an_atomic_write_creates_a_private_file_and_leaves_no_temporary() {
    let s = Scratch::new("write");
    let dir = SafeDir::create(&s.0.join("a/b"), 0o700).unwrap();
    dir.write_atomic(OsStr::new("state.json"), b"one").unwrap();
    dir.write_atomic(OsStr::new("state.json"), b"two").unwrap();
    let p = s.0.join("a/b/state.json");
    assert_eq!(fs::read(&p).unwrap(), b"two");
    assert_eq!(fs::metadata(&p).unwrap().mode() & 0o777, 0o600);
    assert_eq!(fs::metadata(s.0.join("a")).unwrap().mode() & 0o777, 0o700);
    let names: Vec<_> = fs::read_dir(s.0.join("a/b")).unwrap().collect();
    assert_eq!(names.len(), 1, "{names:?}");
}

#[test]
fn a_symbolic_link_at_the_target_is_replaced_and_its_victim_is_untouched() {
    let s = Scratch::new("target");
    let v = victim(&s);
    symlink(&v, s.0.join("state.json")).unwrap();
    let dir = SafeDir::open(&s.0).unwrap();
    dir.write_atomic(OsStr::new("state.json"), b"new").unwrap();
    assert_eq!(fs::read(&v).unwrap(), b"precious\n");
    let md = fs::symlink_metadata(s.0.join("state.json")).unwrap();
    assert!(md.is_file());
}

#[test]
fn planted_temporaries_of_the_old_predictable_name_are_never_opened() {
    let s = Scratch::new("tmp");
    let v = victim(&s);
    let pid = std::process::id();
    symlink(&v, s.0.join(format!(".state.json.tmp.{pid}"))).unwrap();
    let dir = SafeDir::open(&s.0).unwrap();
    dir.write_atomic(OsStr::new("state.json"), b"new").unwrap();
    assert_eq!(fs::read(&v).unwrap(), b"precious\n");
    assert_eq!(fs::read(s.0.join("state.json")).unwrap(), b"new");
}

#[test]
fn a_directory_others_may_write_to_is_refused_with_the_fix() {
    let s = Scratch::new("mode");
    fs::set_permissions(&s.0, fs::Permissions::from_mode(0o777)).unwrap();
    let err = SafeDir::open(&s.0).unwrap_err().to_string();
    assert!(err.contains(&s.0.display().to_string()), "{err}");
    assert!(err.contains("writable by others (mode 0777)"), "{err}");
    assert!(
        err.contains(&format!("chmod 0755 {}", s.0.display())),
        "{err}"
    );
    // Group-writable alone is refused as well.
    fs::set_permissions(&s.0, fs::Permissions::from_mode(0o770)).unwrap();
    assert!(SafeDir::open(&s.0).unwrap_err().is_unsafe());
}

#[test]
fn a_directory_of_another_user_is_refused_with_the_fix() {
    if euid() != 0 {
        eprintln!("skipped: chown needs root");
        return;
    }
    let s = Scratch::new("owner");
    std::os::unix::fs::chown(&s.0, Some(65534), Some(65534)).unwrap();
    let err = SafeDir::open(&s.0).unwrap_err().to_string();
    assert!(err.contains("owned by uid 65534"), "{err}");
    assert!(
        err.contains(&format!("chown root {}", s.0.display())),
        "{err}"
    );
}

#[test]
fn a_directory_that_is_a_symbolic_link_is_refused() {
    let s = Scratch::new("dirlink");
    fs::create_dir(s.0.join("real")).unwrap();
    symlink(s.0.join("real"), s.0.join("link")).unwrap();
    let err = SafeDir::open(&s.0.join("link")).unwrap_err();
    assert!(err.is_unsafe());
    assert!(err.to_string().contains("a symbolic link"), "{err}");
    let err = SafeDir::create(&s.0.join("link"), 0o700).unwrap_err();
    assert!(err.is_unsafe(), "{err}");
}

#[test]
fn a_planted_symbolic_link_is_not_opened_as_a_file() {
    let s = Scratch::new("open");
    let v = victim(&s);
    symlink(&v, s.0.join("xdpgate.lock")).unwrap();
    let dir = SafeDir::open(&s.0).unwrap();
    let err = dir.open_file(OsStr::new("xdpgate.lock")).unwrap_err();
    assert!(err.to_string().contains("a symbolic link"), "{err}");
    assert_eq!(fs::read(&v).unwrap(), b"precious\n");
    // A hard link to another file is refused as well.
    fs::hard_link(&v, s.0.join("other.lock")).unwrap();
    let err = dir.open_file(OsStr::new("other.lock")).unwrap_err();
    assert!(err.to_string().contains("2 hard links"), "{err}");
}

#[test]
fn a_symbolic_link_of_another_user_is_called_foreign() {
    let s = Scratch::new("foreign");
    let v = victim(&s);
    let link = s.0.join("state.json");
    symlink(&v, &link).unwrap();
    let dir = SafeDir::open(&s.0).unwrap();
    assert!(dir.check_link(OsStr::new("state.json")).unwrap());
    assert!(!dir.check_link(OsStr::new("victim")).unwrap());
    if euid() == 0 {
        std::os::unix::fs::lchown(&link, Some(65534), Some(65534)).unwrap();
        let err = dir.check_link(OsStr::new("state.json")).unwrap_err();
        assert!(err.to_string().contains("owned by uid 65534"), "{err}");
    }
}
