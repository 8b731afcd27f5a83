//! Limits and SYN cookies on the daemon's side: whether they can be used
//! (the kernel took the DDoS program that runs both; for SYN cookies also
//! `net.ipv4.tcp_syncookies` = 2 in the daemon's network namespace), the
//! refusal of rules with a limit or `syncookie = true` when they cannot,
//! and the datapath's SYN-cookie configuration
//! (`XG_SYNCOOKIE`), written at start and with every ACL change and reload
//! from the sysctls and `[ddos]`. See `docs/design/ddos.md`.
use serde::Serialize;
use xdpgate_common::limit::{LimitSpec, SYNCOOKIE_ENABLED, SyncookieConfig, key};
use xdpgate_model::{
    acl::{Change, Rule},
    config::DdosSettings,
};

use super::{Daemon, DaemonError};
use crate::{datapath::Datapath, sys::sysctl::TcpSysctls};

/// The SYN-ACK window xdpgate announces (unscaled, as in any SYN-ACK).
pub const SYNACK_WINDOW: u32 = 65_535;

/// Whether SYN cookies can be used, and why not (`status`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Readiness {
    /// The datapath answers SYNs of `syncookie` rules with cookies.
    pub enabled: bool,
    /// Why not, when not.
    pub reason: Option<String>,
    /// What cookie connections lose with these settings (timestamps other
    /// than 2), when enabled.
    pub warning: Option<String>,
}

/// Decides readiness from what the kernel said of the SYN-cookie program
/// (`unavailable`: why it refused it) and the sysctls as read.
pub fn readiness(unavailable: Option<&str>, sysctls: &Result<TcpSysctls, String>) -> Readiness {
    let refused = |reason: String| Readiness {
        enabled: false,
        reason: Some(reason),
        warning: None,
    };
    if let Some(why) = unavailable {
        return refused(why.to_owned());
    }
    match sysctls {
        Err(e) => refused(e.clone()),
        Ok(s) => match s.syncookie_refusal() {
            Some(why) => refused(why),
            None => Readiness {
                enabled: true,
                reason: None,
                warning: s.timestamps_warning(),
            },
        },
    }
}

/// The datapath's SYN-cookie configuration: `SYNCOOKIE_ENABLED` only when
/// `ready`, the options and window scale the sysctls allow (none when they
/// could not be read), the refresh interval and reflector limit of `[ddos]`.
pub fn syncookie_config(
    sysctls: Option<&TcpSysctls>,
    ready: bool,
    ddos: &DdosSettings,
) -> SyncookieConfig {
    let mut flags = sysctls.map_or(0, TcpSysctls::syncookie_options);
    if ready {
        flags |= SYNCOOKIE_ENABLED;
    }
    SyncookieConfig {
        flags,
        wscale: sysctls.map_or(0, TcpSysctls::wscale),
        window: SYNACK_WINDOW,
        _pad: 0,
        refresh_ns: u64::try_from(ddos.syncookie_refresh.as_nanos()).unwrap_or(u64::MAX),
        synack: LimitSpec::new(
            key::SRC,
            u32::from(ddos.synack_v4_prefix),
            u32::from(ddos.synack_v6_prefix),
            Some((ddos.synack_pps, ddos.synack_burst)),
            None,
        ),
    }
}

/// The rules of a state or a change that need the DDoS program: ids of
/// those with a limit and of those with `syncookie`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Needs {
    /// Rules with a limit.
    pub limit: Vec<u32>,
    /// Rules with `syncookie = true`.
    pub syncookie: Vec<u32>,
}

impl Needs {
    /// What `rules` need.
    pub fn of<'a>(rules: impl IntoIterator<Item = &'a Rule>) -> Needs {
        let mut n = Needs::default();
        for r in rules {
            if r.limit.is_some() {
                n.limit.push(r.id);
            }
            if r.syncookie {
                n.syncookie.push(r.id);
            }
        }
        n
    }

    /// What the rules `change` adds need (nothing for changes that add no
    /// rule).
    pub fn of_change(change: &Change) -> Needs {
        match change {
            Change::RuleAdd { rules } => Needs::of(rules),
            Change::Replace { file } => Needs::of(&file.rules),
            Change::SetAdd { .. }
            | Change::SetDel { .. }
            | Change::RuleDel { .. }
            | Change::Policy { .. } => Needs::default(),
        }
    }
}

/// `rule 7 has` / `rules 7, 8 have`.
fn rules_have(ids: &[u32]) -> String {
    let list: Vec<String> = ids.iter().map(u32::to_string).collect();
    if ids.len() == 1 {
        format!("rule {} has", list[0])
    } else {
        format!("rules {} have", list.join(", "))
    }
}

/// The refusal of the rules `needs` names, if they cannot be honoured:
/// rules with a limit when the kernel refused the DDoS program
/// (`unavailable`), rules with `syncookie` when SYN cookies are not ready.
pub fn refusal(needs: &Needs, unavailable: Option<&str>, r: &Readiness) -> Option<DaemonError> {
    if let Some(why) = unavailable
        && !needs.limit.is_empty()
    {
        return Some(DaemonError::Ddos(format!(
            "{} a limit, but rate limits are unavailable: {why} (nothing was changed)",
            rules_have(&needs.limit)
        )));
    }
    let reason = r.reason.as_ref()?;
    (!needs.syncookie.is_empty()).then(|| {
        DaemonError::Ddos(format!(
            "{} syncookie = true, but SYN cookies are unavailable: {reason} (nothing was changed)",
            rules_have(&needs.syncookie)
        ))
    })
}

/// Reads the sysctls and decides (see [`readiness`]).
pub fn check(dp: &Datapath) -> (Readiness, Option<TcpSysctls>) {
    let sysctls = TcpSysctls::read().map_err(|e| e.to_string());
    let r = readiness(dp.ddos_unavailable(), &sysctls);
    (r, sysctls.ok())
}

/// Refuses what `needs` names when it cannot be honoured (see [`refusal`]).
pub fn refuse(dp: &Datapath, needs: &Needs) -> Result<(), DaemonError> {
    let (r, _) = check(dp);
    refusal(needs, dp.ddos_unavailable(), &r).map_or(Ok(()), Err)
}

/// The start's and every change's step: refuses the rules `needs` names
/// when they cannot be honoured, else writes the SYN-cookie configuration
/// (`ddos`, the sysctls as they are now) and logs the timestamps warning the
/// first time a rule needs cookies (`warned`).
pub fn prepare(
    dp: &mut Datapath,
    ddos: &DdosSettings,
    needs: &Needs,
    warned: &mut bool,
) -> Result<Readiness, DaemonError> {
    let (r, sysctls) = check(dp);
    if let Some(e) = refusal(needs, dp.ddos_unavailable(), &r) {
        return Err(e);
    }
    dp.set_syncookie_config(&syncookie_config(sysctls.as_ref(), r.enabled, ddos))?;
    if !needs.syncookie.is_empty()
        && !*warned
        && let Some(w) = &r.warning
    {
        log::warn!("{w}");
        *warned = true;
    }
    Ok(r)
}

impl Daemon {
    /// Checks the rules `added` and writes the SYN-cookie configuration (see
    /// [`prepare`]), and remembers the readiness for
    /// `status`. A datapath that loses SYN cookies while rules need them
    /// (a sysctl changed behind the daemon) says so in the log: those rules
    /// then pass only established connections.
    pub(super) fn refresh_syncookies(
        &mut self,
        ddos: &DdosSettings,
        added: &Needs,
    ) -> Result<(), DaemonError> {
        let r = prepare(&mut self.dp, ddos, added, &mut self.timestamps_warned)?;
        let in_force = Needs::of(self.ctl.state().rules.values()).syncookie;
        if !r.enabled && self.syncookies.enabled && !in_force.is_empty() {
            log::error!(
                "SYN cookies are no longer available ({}): rules {:?} now pass only established connections",
                r.reason.as_deref().unwrap_or("unknown"),
                in_force
            );
        }
        self.syncookies = r;
        Ok(())
    }

    /// Whether SYN cookies can be used, and why not.
    pub fn syncookie_readiness(&self) -> &Readiness {
        &self.syncookies
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use xdpgate_common::limit::{SYNCOOKIE_SACK, SYNCOOKIE_TIMESTAMPS, SYNCOOKIE_WSCALE};

    use super::*;

    fn sysctls(syncookies: u64, timestamps: u64) -> TcpSysctls {
        TcpSysctls {
            syncookies,
            timestamps,
            sack: 1,
            window_scaling: 1,
            tcp_rmem_max: 6_291_456,
            rmem_max: 212_992,
        }
    }

    #[test]
    fn cookies_are_enabled_only_with_the_program_loaded_and_syncookies_2() {
        // (why the kernel refused the program, the sysctls as read) ->
        // enabled, a word of the reason.
        type Case = (
            Option<&'static str>,
            Result<TcpSysctls, String>,
            bool,
            &'static str,
        );
        let table: [Case; 5] = [
            (None, Ok(sysctls(2, 2)), true, ""),
            (None, Ok(sysctls(2, 1)), true, ""),
            (None, Ok(sysctls(1, 2)), false, "tcp_syncookies is 1"),
            (
                Some("the kernel refused the SYN-cookie program"),
                Ok(sysctls(2, 2)),
                false,
                "refused the SYN-cookie program",
            ),
            (
                None,
                Err("cannot read /proc/sys".into()),
                false,
                "cannot read",
            ),
        ];
        for (unavailable, s, enabled, why) in table {
            let r = readiness(unavailable, &s);
            assert_eq!(r.enabled, enabled, "{unavailable:?} {s:?}");
            assert_eq!(r.reason.is_none(), enabled);
            if let Some(reason) = &r.reason {
                assert!(reason.contains(why), "{reason}");
            }
        }
        let warned = readiness(None, &Ok(sysctls(2, 1)));
        assert!(warned.warning.expect("timestamps 1 warns").contains("SACK"));
    }

    fn needs(limit: &[u32], syncookie: &[u32]) -> Needs {
        Needs {
            limit: limit.to_vec(),
            syncookie: syncookie.to_vec(),
        }
    }

    #[test]
    fn a_refusal_names_the_rules_and_the_sysctl_and_is_the_callers_fault() {
        let r = readiness(None, &Ok(sysctls(1, 2)));
        assert!(
            refusal(&needs(&[7], &[]), None, &r).is_none(),
            "limits need no sysctl"
        );
        let e = refusal(&needs(&[], &[200, 300]), None, &r).expect("refused");
        let msg = e.to_string();
        assert!(
            msg.starts_with("rules 200, 300 have syncookie = true"),
            "{msg}"
        );
        assert!(msg.contains("net.ipv4.tcp_syncookies is 1"), "{msg}");
        assert!(msg.contains("sysctl -w net.ipv4.tcp_syncookies=2"), "{msg}");
        assert!(e.is_invalid_input());
        let ok = readiness(None, &Ok(sysctls(2, 0)));
        assert!(refusal(&needs(&[7], &[200]), None, &ok).is_none());
        // Without the DDoS program, limits are refused too.
        let why = "the kernel refused the DDoS program xdpgate_ddos: E2BIG";
        let gone = readiness(Some(why), &Ok(sysctls(2, 2)));
        let e = refusal(&needs(&[7], &[]), Some(why), &gone).expect("refused");
        let msg = e.to_string();
        assert!(
            msg.starts_with(
                "rule 7 has a limit, but rate limits are unavailable: the kernel refused"
            ),
            "{msg}"
        );
        assert!(e.is_invalid_input());
        assert!(refusal(&Needs::default(), Some(why), &gone).is_none());
    }

    #[test]
    fn the_config_carries_the_sysctl_options_and_the_ddos_settings() {
        let ddos = DdosSettings {
            synack_pps: 1000,
            synack_burst: 50,
            synack_v4_prefix: 24,
            synack_v6_prefix: 48,
            syncookie_refresh: Duration::from_secs(30),
            ..DdosSettings::default()
        };
        let s = sysctls(2, 2);
        let c = syncookie_config(Some(&s), true, &ddos);
        assert_eq!(
            c.flags,
            SYNCOOKIE_ENABLED | SYNCOOKIE_TIMESTAMPS | SYNCOOKIE_SACK | SYNCOOKIE_WSCALE
        );
        assert_eq!((c.wscale, c.window), (7, 65_535));
        assert_eq!(c.refresh_ns, 30_000_000_000);
        assert_eq!(
            c.synack,
            LimitSpec::new(key::SRC, 24, 48, Some((1000, 50)), None)
        );
        // Not ready: the options stay as the sysctls say, ENABLED is off.
        let off = syncookie_config(Some(&sysctls(1, 1)), false, &ddos);
        assert_eq!(off.flags, SYNCOOKIE_SACK | SYNCOOKIE_WSCALE);
        // Unreadable sysctls: no options, no window scale.
        let none = syncookie_config(None, false, &ddos);
        assert_eq!((none.flags, none.wscale), (0, 0));
    }

    #[test]
    fn only_rule_additions_and_replacements_bring_rules_that_need_the_ddos_program() {
        let rule = |id, syncookie| Rule {
            syncookie,
            ..Rule::new(id, 10, xdpgate_model::acl::Verdict::Allow)
        };
        let limited = Rule {
            limit: Some(xdpgate_model::acl::limit::Limit {
                pps: Some(10),
                ..Default::default()
            }),
            ..rule(5, false)
        };
        let add = Change::RuleAdd {
            rules: vec![rule(1, false), rule(2, true), limited],
        };
        assert_eq!(Needs::of_change(&add), needs(&[5], &[2]));
        let replace = Change::Replace {
            file: xdpgate_model::acl::RuleFile {
                rules: vec![rule(3, true), rule(4, true)],
                ..Default::default()
            },
        };
        assert_eq!(Needs::of_change(&replace), needs(&[], &[3, 4]));
        assert_eq!(
            Needs::of_change(&Change::RuleDel { ids: vec![2] }),
            Needs::default()
        );
    }
}
