//! The state file's journal at the daemon (issue 16, deliverable 3): an ACL
//! change is answered once it is appended to the journal, not after a save
//! of the whole state; a change acknowledged to the CLI survives a SIGKILL
//! of the daemon right after it (the restart replays it from the journal),
//! and a clean shutdown compacts the journal into the state file.
use std::{fs, path::Path};

use xdpgate_model::state::journal;
use xdpgate_tests::{
    lab::{Lab, serial},
    traffic::ping_ok,
    xdpgate::{Daemon, StateDirs, xdp_on},
};

/// The state file as the daemon left it.
fn saved(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&fs::read(path).unwrap()).unwrap()
}

/// The prefixes of set `name` as `xdpgate set list NAME` reports them.
fn set_prefixes(dirs: &StateDirs, lab: &Lab, name: &str) -> Vec<String> {
    let out = dirs.run_ok(&lab.a, &["set", "list", name, "-o", "json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["prefixes"]
        .as_array()
        .unwrap_or_else(|| panic!("no prefixes in {out}"))
        .iter()
        .map(|p| p.as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn a_change_acknowledged_to_the_cli_survives_a_sigkill_right_after_and_a_clean_stop_compacts_the_journal()
 {
    let _g = serial();
    let lab = Lab::new("stjrnl", 206).unwrap();
    let iface = lab.a_end.ifname.clone();
    let a4 = std::net::IpAddr::V4(lab.a_end.ipv4);
    let dirs = StateDirs::unique("stjrnl");
    let state = dirs.state_file.clone();
    let jpath = journal::path_of(&state);
    // Removed even when the test fails (StateDirs removes the state file).
    struct RemoveOnDrop(std::path::PathBuf);
    impl Drop for RemoveOnDrop {
        fn drop(&mut self) {
            let _ = fs::remove_file(&self.0);
        }
    }
    let _journal = RemoveOnDrop(jpath.clone());

    let d = Daemon::start_in(&lab.a, dirs, &[&iface], "skb", &[]).unwrap();
    assert!(ping_ok(&lab, a4), "allowed before the changes");
    d.dirs.run_ok(
        &lab.a,
        &["set", "add", "blk", "198.51.100.7/32", "2001:db8::7/128"],
    );
    d.dirs.run_ok(&lab.a, &["policy", &iface, "deny"]);
    // Acknowledged: the journal holds both, the state file neither.
    let lines = fs::read_to_string(&jpath).unwrap();
    assert_eq!(lines.lines().count(), 2, "{lines}");
    let file = saved(&state);
    assert_eq!(file["acl"]["policy"][&iface], "allow", "{file}");
    assert_eq!(file["acl"]["sets"].get("blk"), None, "{file}");
    let (st, dirs) = d.stop_keeping_state(libc::SIGKILL);
    assert!(!st.success(), "{st}");
    // Remove the datapath: the restart is cold and enforces only what it
    // installs from the state file and the journal.
    dirs.run_ok(&lab.a, &["down"]);
    assert!(!xdp_on(&lab.a, &iface));
    assert!(ping_ok(&lab, a4), "nothing enforces while no daemon runs");

    let d = Daemon::start_in(&lab.a, dirs, &[&iface], "skb", &[]).unwrap();
    let log = d.log();
    assert!(log.contains("replayed 2 change(s) of the journal"), "{log}");
    assert!(
        !ping_ok(&lab, a4),
        "the journalled default deny is enforced"
    );
    assert_eq!(
        set_prefixes(&d.dirs, &lab, "blk"),
        ["198.51.100.7/32", "2001:db8::7/128"]
    );
    // The start saved the whole state and trimmed the journal.
    let file = saved(&state);
    assert_eq!(file["acl"]["policy"][&iface], "deny", "{file}");
    assert_eq!(file["seq"], 2, "{file}");
    assert_eq!(fs::read_to_string(&jpath).unwrap(), "");

    // One more change, then a clean stop: compacted into the state file.
    d.dirs
        .run_ok(&lab.a, &["set", "del", "blk", "198.51.100.7/32"]);
    assert_eq!(fs::read_to_string(&jpath).unwrap().lines().count(), 1);
    let (st, dirs) = d.stop_keeping_state(libc::SIGTERM);
    assert!(st.success(), "{st}");
    let file = saved(&state);
    assert_eq!(file["seq"], 3, "{file}");
    assert_eq!(
        file["acl"]["sets"]["blk"],
        serde_json::json!(["2001:db8::7/128"]),
        "{file}"
    );
    assert_eq!(fs::read_to_string(&jpath).unwrap(), "");
    dirs.run_ok(&lab.a, &["down"]);
}
