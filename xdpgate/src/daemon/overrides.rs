//! Command-line settings that override the configuration file, and the
//! checks the result must pass again.
use std::{net::SocketAddr, path::PathBuf};

use xdpgate_model::{
    acl::{AclState, RuleFile, Verdict, compile::compile_for},
    bind::BindRequest,
    config::{self, Config, ConfigError},
    iface::{Malformed, XdpMode},
};

use super::DaemonError;

/// Command-line settings that override the configuration file, kept so a
/// reload applies them again.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    /// `--iface` (replaces the file's interface list; settings of interfaces
    /// named in both are kept).
    pub ifaces: Vec<String>,
    /// `--mode` (every interface).
    pub mode: Option<XdpMode>,
    /// `--malformed`.
    pub malformed: Option<Malformed>,
    /// `--metrics-listen` (replaces the file's list).
    pub metrics_listen: Vec<SocketAddr>,
    /// `--no-metrics`.
    pub no_metrics: bool,
    /// `--state-file`.
    pub state_file: Option<PathBuf>,
    /// `--acl-file`: sets and rules from a rule file instead of the config.
    pub acl_file: Option<PathBuf>,
    /// `--decap`: decapsulate on every interface.
    pub decap: bool,
}

/// Applies the command-line overrides to a configuration read from a file
/// (or built from flags).
pub fn apply_overrides(mut cfg: Config, o: &Overrides) -> Result<Config, DaemonError> {
    if !o.ifaces.is_empty() {
        let old = std::mem::take(&mut cfg.interfaces);
        for name in &o.ifaces {
            let kept = old.iter().find(|i| &i.name == name).cloned();
            cfg.interfaces.push(kept.unwrap_or(config::Interface {
                name: name.clone(),
                mode: XdpMode::Native,
                policy: Verdict::Allow,
                drop_unbound: false,
                decap: false,
            }));
        }
        // Rules and bindings of interfaces no longer named are refused by
        // validation below, like any other reference to an unknown interface.
    }
    if let Some(m) = o.mode {
        for i in &mut cfg.interfaces {
            i.mode = m;
        }
    }
    if let Some(m) = o.malformed {
        cfg.malformed = m;
    }
    if o.decap {
        for i in &mut cfg.interfaces {
            i.decap = true;
        }
    }
    if !o.metrics_listen.is_empty() {
        cfg.metrics_listen = o.metrics_listen.clone();
    }
    if o.no_metrics {
        cfg.metrics_listen.clear();
    }
    if let Some(f) = &o.state_file {
        cfg.state_file = f.clone();
    }
    if let Some(f) = &o.acl_file {
        let text = std::fs::read_to_string(f).map_err(|e| DaemonError::RuleFile {
            path: f.clone(),
            why: e.to_string(),
        })?;
        let file: RuleFile = toml::from_str(&text).map_err(|e| DaemonError::RuleFile {
            path: f.clone(),
            why: e.to_string(),
        })?;
        cfg.acl.sets = file.sets;
        cfg.acl.rules = file.rules;
        cfg.acl.policy.extend(file.policy);
        cfg.digest = config::digest(&format!("{}{text}", cfg.digest));
    }
    if cfg.interfaces.is_empty() {
        return Err(DaemonError::NoInterface);
    }
    for i in &cfg.interfaces {
        cfg.acl.policy.entry(i.name.clone()).or_insert(i.policy);
    }
    // Re-validate what the overrides may have changed.
    let names = cfg.iface_names();
    let mut issues = Vec::new();
    if let Err(errs) = AclState::from_file(&cfg.acl)
        .map_err(|e| e.into_iter().map(|e| e.to_string()).collect::<Vec<_>>())
        .and_then(|s| {
            compile_for(&s, &cfg.slots(), &cfg.capacities)
                .map(|_| ())
                .map_err(|e| e.into_iter().map(|e| e.to_string()).collect())
        })
    {
        issues.extend(errs);
    }
    for p in cfg.acl.policy.keys() {
        if !names.contains(p) {
            issues.push(format!(
                "default policy for {p}, which is not an attached interface"
            ));
        }
    }
    for b in &cfg.bindings {
        if !names.contains(&b.iface) {
            issues.push(format!(
                "binding {} on {}, which is not an attached interface",
                b.spec, b.iface
            ));
        }
    }
    if !issues.is_empty() {
        return Err(ConfigError::Invalid {
            path: cfg.path.clone(),
            issues: issues
                .into_iter()
                .map(|message| config::Issue { at: None, message })
                .collect(),
        }
        .into());
    }
    Ok(cfg)
}

/// The binding requests of a configuration.
pub fn bind_requests(cfg: &Config) -> Vec<BindRequest> {
    cfg.bindings
        .iter()
        .map(|b| BindRequest {
            iface: b.iface.clone(),
            spec: b.spec.clone(),
            plen: b.plen,
            nodad: b.nodad,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn example() -> Config {
        config::parse(
            include_str!("../../../deploy/xdpgate.toml"),
            Path::new("deploy/xdpgate.toml"),
        )
        .unwrap()
    }

    #[test]
    fn flags_override_the_file() {
        let cfg = example();
        let o = Overrides {
            mode: Some(XdpMode::Skb),
            malformed: Some(Malformed::Pass),
            metrics_listen: vec!["[::]:9100".parse().unwrap()],
            state_file: Some("/tmp/x.json".into()),
            ..Default::default()
        };
        let c = apply_overrides(cfg.clone(), &o).unwrap();
        assert_eq!(c.interfaces[0].mode, XdpMode::Skb);
        assert_eq!(c.malformed, Malformed::Pass);
        assert_eq!(c.metrics_listen, ["[::]:9100".parse().unwrap()]);
        assert_eq!(c.state_file, Path::new("/tmp/x.json"));
        // Without flags the file stands as it is.
        assert_eq!(
            apply_overrides(cfg.clone(), &Overrides::default()).unwrap(),
            cfg
        );
        let c = apply_overrides(
            cfg.clone(),
            &Overrides {
                no_metrics: true,
                ..Default::default()
            },
        )
        .unwrap();
        assert!(c.metrics_listen.is_empty());
    }

    #[test]
    fn an_iface_flag_keeps_the_settings_of_interfaces_it_names() {
        let mut cfg = example();
        cfg.bindings.clear();
        cfg.interfaces[0].policy = Verdict::Deny;
        cfg.acl.policy.clear();
        let c = apply_overrides(
            cfg.clone(),
            &Overrides {
                ifaces: vec!["eth0".into(), "eth1".into()],
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(c.iface_names(), ["eth0", "eth1"]);
        assert_eq!(c.interfaces[0].policy, Verdict::Deny);
        assert_eq!(c.interfaces[1].policy, Verdict::Allow);
        assert_eq!(c.acl.policy["eth0"], Verdict::Deny);
    }

    #[test]
    fn an_iface_flag_that_drops_a_bound_interface_is_refused() {
        let err = apply_overrides(
            example(),
            &Overrides {
                ifaces: vec!["eth1".into()],
                ..Default::default()
            },
        )
        .unwrap_err();
        assert!(matches!(err, DaemonError::Config(_)), "{err}");
        assert!(err.to_string().contains("eth0"), "{err}");
        assert!(matches!(
            apply_overrides(
                Config::from_flags(&[], XdpMode::Native, Malformed::Drop),
                &Overrides::default()
            ),
            Err(DaemonError::NoInterface)
        ));
    }
}
