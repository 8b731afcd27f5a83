//! Maps the configuration sizes (`[lb] max_services`/`table_size` for the
//! Maglev rings, `[ddos] limit_buckets` for the rate-limit buckets) keep the
//! size the datapath was started with: a daemon restarted on its pins with
//! another size is refused, exit 64, with a message that names the setting,
//! both sizes and the way out, and the running datapath is left as it was
//! (still enforcing, its pins unchanged); started again with the old size
//! it adopts them.
use std::path::PathBuf;

use xdpgate_tests::{
    lab::{Lab, serial},
    xdpgate::{Daemon, xdp_on},
};

/// A file removed on drop.
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn config(iface: &str, max_services: u32) -> String {
    format!(
        "[daemon]\nshutdown_grace_seconds = 3\n\n[metrics]\nlisten = []\n\n\
         [[interface]]\nname = \"{iface}\"\nmode = \"skb\"\n\n\
         [lb]\nmax_services = {max_services}\ntable_size = 257\n"
    )
}

#[test]
fn a_restart_with_another_table_size_is_refused_with_the_setting_and_the_way_out() {
    let _g = serial();
    let lab = Lab::new("mapsize", 94).expect("lab");
    let iface = lab.a_end.ifname.clone();
    let cfg =
        TempFile(std::env::temp_dir().join(format!("xdpgate-mapsize-{}.toml", std::process::id())));
    std::fs::write(&cfg.0, config(&iface, 4)).unwrap();
    let d = Daemon::start_in(
        &lab.a,
        xdpgate_tests::xdpgate::StateDirs::unique("msz"),
        &[],
        "",
        &["--config".as_ref(), cfg.0.as_os_str()],
    )
    .expect("start with 4 services x 257");
    let (_, dirs) = d.stop_keeping_state(libc::SIGTERM);
    let rings = dirs
        .bpffs
        .join(xdpgate::paths::maps_dir(
            xdpgate_common::pins::SCHEMA_VERSION,
        ))
        .join(xdpgate_common::maps::LB_RINGS);
    let pinned = std::fs::metadata(&rings)
        .expect("rings pinned")
        .modified()
        .unwrap();

    std::fs::write(&cfg.0, config(&iface, 8)).unwrap();
    dirs.run_refused(
        &lab.a,
        &cfg.0,
        &[
            "XG_LB_RINGS",
            "was made with 2056 entries",
            "asks for 4112",
            "[lb] max_services and table_size",
            "xdpgate down",
        ],
    );
    assert!(
        xdp_on(&lab.a, &iface),
        "the running datapath still enforces"
    );
    assert_eq!(
        std::fs::metadata(&rings).unwrap().modified().unwrap(),
        pinned,
        "its rings were not touched"
    );

    std::fs::write(&cfg.0, config(&iface, 4)).unwrap();
    let d = Daemon::start_in(
        &lab.a,
        dirs,
        &[],
        "",
        &["--config".as_ref(), cfg.0.as_os_str()],
    )
    .expect("the old size adopts the pins");
    assert!(d.log().contains("adopting the datapath"), "{}", d.log());
}

#[test]
fn a_restart_with_another_limit_buckets_is_refused_naming_ddos_limit_buckets() {
    let _g = serial();
    let lab = Lab::new("bucksize", 95).expect("lab");
    let iface = lab.a_end.ifname.clone();
    let cfg = TempFile(
        std::env::temp_dir().join(format!("xdpgate-bucksize-{}.toml", std::process::id())),
    );
    let config = |buckets: u32| {
        format!(
            "[daemon]\nshutdown_grace_seconds = 3\n\n[metrics]\nlisten = []\n\n\
             [[interface]]\nname = \"{iface}\"\nmode = \"skb\"\n\n\
             [ddos]\nlimit_buckets = {buckets}\n"
        )
    };
    std::fs::write(&cfg.0, config(2048)).unwrap();
    let args = ["--config".as_ref(), cfg.0.as_os_str()];
    let d = Daemon::start_in(
        &lab.a,
        xdpgate_tests::xdpgate::StateDirs::unique("bsz"),
        &[],
        "",
        &args,
    )
    .expect("start with 2048 buckets");
    let (_, dirs) = d.stop_keeping_state(libc::SIGTERM);
    let buckets = dirs
        .bpffs
        .join(xdpgate::paths::maps_dir(
            xdpgate_common::pins::SCHEMA_VERSION,
        ))
        .join(xdpgate_common::limit::maps::LIMIT_BUCKETS);
    let capacity = || {
        let out = std::process::Command::new("bpftool")
            .args(["-j", "map", "show", "pinned"])
            .arg(&buckets)
            .output()
            .expect("bpftool");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("bpftool JSON");
        v["max_entries"].as_u64()
    };
    assert_eq!(capacity(), Some(2048), "sized from [ddos] limit_buckets");

    std::fs::write(&cfg.0, config(4096)).unwrap();
    dirs.run_refused(
        &lab.a,
        &cfg.0,
        &[
            "XG_LIMIT_BUCKETS",
            "was made with 2048 entries",
            "asks for 4096",
            "Set [ddos] limit_buckets back to 2048",
            "xdpgate down",
        ],
    );
    assert!(
        xdp_on(&lab.a, &iface),
        "the running datapath still enforces"
    );
    assert_eq!(capacity(), Some(2048), "its bucket table is the same");

    std::fs::write(&cfg.0, config(2048)).unwrap();
    let d = Daemon::start_in(&lab.a, dirs, &[], "", &args).expect("the old size adopts the pins");
    assert!(d.log().contains("adopting the datapath"), "{}", d.log());
}
