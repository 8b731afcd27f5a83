//! The daemon's side of the control API: each request of the protocol
//! (`api::protocol`) executed against the [`Daemon`] and answered with its
//! typed answer, or refused with the daemon's errors and whether the caller
//! was at fault ([`DaemonError::is_invalid_input`]).
use std::time::UNIX_EPOCH;

use xdpgate_model::{
    acl::{AclState, Change},
    config::ConfigError,
};

use super::{Daemon, DaemonError, Origin};
use crate::{
    acl::ApplyError,
    api::protocol::{
        AclList, Answer, AttachedIface, BindList, CacheStats, CounterRow, DecapRow, DefaultRow,
        HealthTarget, LbList, LimitCounters, Message, ReasonRow, ReloadInfo, Request, Response,
        RuleRow, SetList, SetRow, SetShow, StartedFrom, Stats, StatsReport, Status,
        SyncookieStatus,
    },
    bind::BindError,
    datapath::stats,
    lb::{self, LbError, health::TargetStatus},
    paths::Paths,
};

/// Executes `req` against the daemon (`shared` decides when: changes one at
/// a time, reads live or from a snapshot).
pub(super) fn execute(d: &mut Daemon, req: Request) -> Response {
    respond(answer(d, req))
}

/// The response to an answer or an error.
pub(super) fn respond(r: Result<Answer, DaemonError>) -> Response {
    match r {
        Ok(a) => Response::answer(a),
        Err(e) => Response::refused(messages(&e), e.is_invalid_input()),
    }
}

/// The errors listed in a refusal: one per problem where the error carries a
/// list, else its message.
fn messages(e: &DaemonError) -> Vec<String> {
    fn each<E: ToString>(errs: &[E]) -> Vec<String> {
        errs.iter().map(ToString::to_string).collect()
    }
    match e {
        DaemonError::Acl(ApplyError::Invalid(errs)) => each(errs),
        DaemonError::Bind(BindError::Invalid(errs)) => each(errs),
        DaemonError::Lb(LbError::Invalid(errs)) => errs.clone(),
        DaemonError::Config(ConfigError::Invalid { path, issues }) => issues
            .iter()
            .map(|i| format!("{}: {i}", path.display()))
            .collect(),
        e => vec![e.to_string()],
    }
}

/// The answer to one request, or why there is none.
fn answer(d: &mut Daemon, req: Request) -> Result<Answer, DaemonError> {
    Ok(match req {
        Request::BindAdd { binds } => {
            let r = d.bind_add(&binds)?;
            log::info!("bind add: {r}");
            Answer::BindReport(r)
        }
        Request::BindDel { binds } => {
            let r = d.bind_del(&binds)?;
            log::info!("bind del: {r}");
            Answer::BindReport(r)
        }
        Request::LbAdd { service, replace } => {
            d.lb_add(&service, replace)?;
            message(format!("service {} in force", service.service))
        }
        Request::LbDel { service } => {
            d.lb_del(&service)?;
            message(format!("service {service} removed"))
        }
        Request::LbList => Answer::LbList(lb_list(d)?),
        Request::BindList => Answer::BindList(BindList {
            bindings: d.binds.list().to_vec(),
            drop_unbound: d
                .config
                .interfaces
                .iter()
                .filter(|i| i.drop_unbound)
                .map(|i| i.name.clone())
                .collect(),
        }),
        Request::Reload => match d.reload() {
            Ok(msg) => {
                log::info!("{msg}");
                message(msg)
            }
            Err(e) => {
                log::error!("reload failed, the running configuration stays in force: {e}");
                return Err(e);
            }
        },
        Request::Stats => stats_answer(&d.paths)?,
        Request::Status => Answer::Status(Box::new(status(d))),
        Request::Apply { change } => match d.apply(&change) {
            Ok(applied) => {
                log::info!(
                    "applied {}: {} rules, {} prefixes, compile {:?}, install {:?}",
                    change_name(&change),
                    applied.rules,
                    applied.prefixes,
                    applied.compile,
                    applied.install
                );
                Answer::Applied(applied)
            }
            Err(e) => {
                if !e.is_invalid_input() {
                    log::error!("applying {}: {e}", change_name(&change));
                }
                return Err(e);
            }
        },
        Request::AclList => Answer::AclList(acl_list(d)?),
        Request::SetList { name } => set_list(d.ctl.state(), name)?,
    })
}

/// `set_list`: every set, or one set's prefixes.
pub(super) fn set_list(state: &AclState, name: Option<String>) -> Result<Answer, DaemonError> {
    Ok(match name {
        None => Answer::SetList(SetList {
            sets: state
                .sets
                .iter()
                .map(|(n, s)| SetRow {
                    name: n.clone(),
                    ipv4: s.v4.len(),
                    ipv6: s.v6.len(),
                    used_by: state.set_users(n),
                })
                .collect(),
        }),
        Some(name) => {
            let s = state
                .sets
                .get(&name)
                .ok_or_else(|| DaemonError::NoSet(name.clone()))?;
            let prefixes =
                s.v4.iter()
                    .map(ToString::to_string)
                    .chain(s.v6.iter().map(ToString::to_string))
                    .collect();
            Answer::SetShow(SetShow { name, prefixes })
        }
    })
}

/// `stats`: read from the pinned maps, so it needs nothing of the daemon
/// but its paths (and never waits for a change).
pub(super) fn stats_answer(paths: &Paths) -> Result<Answer, DaemonError> {
    Ok(Answer::Stats(Stats {
        report: stats_report(stats::read(paths)?),
    }))
}

fn message(message: String) -> Answer {
    Answer::Message(Message { message })
}

fn acl_list(d: &Daemon) -> Result<AclList, DaemonError> {
    let (dp, ctl) = (&d.dp, &d.ctl);
    let rules = ctl
        .rule_counters(dp)?
        .into_iter()
        .map(|r| RuleRow {
            rule: r.rule,
            packets: r.packets,
            bytes: r.bytes,
            limit_counters: r
                .limits
                .map(|l| LimitCounters::from_packets(l.map(|c| c.packets))),
        })
        .collect();
    let defaults = ctl
        .slots()
        .keys()
        .map(|iface| {
            let (packets, bytes) = ctl.default_counters(dp, iface).unwrap_or_default();
            DefaultRow {
                iface: iface.clone(),
                policy: ctl.state().policy(iface),
                packets,
                bytes,
            }
        })
        .collect();
    Ok(AclList { rules, defaults })
}

fn lb_list(d: &Daemon) -> Result<LbList, DaemonError> {
    let services = d.lb.status(&d.dp)?;
    let health = d
        .health
        .as_ref()
        .map(lb::health::HealthMonitor::status)
        .unwrap_or_default()
        .into_iter()
        .map(health_target)
        .collect();
    let decap = d
        .decap_counters()
        .unwrap_or_default()
        .into_iter()
        .map(|(interface, outer, inner, packets, bytes)| DecapRow {
            interface,
            outer: outer.to_owned(),
            inner: inner.to_owned(),
            packets,
            bytes,
        })
        .collect();
    let specs =
        d.lb.specs()
            .iter()
            .map(xdpgate_model::lb::ServiceEntry::from_spec)
            .collect();
    Ok(LbList {
        services,
        health,
        decap,
        specs,
    })
}

fn health_target(t: TargetStatus) -> HealthTarget {
    HealthTarget {
        key: t.key,
        addr: t.addr,
        up: t.up,
        consecutive_successes: t.consecutive_successes,
        consecutive_failures: t.consecutive_failures,
        checks_total: t.checks_total,
        failures_total: t.failures_total,
        last_error: t.last_error,
        last_change: t
            .last_change
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    }
}

fn stats_report(r: stats::Report) -> StatsReport {
    StatsReport {
        counters: r
            .counters
            .into_iter()
            .map(|c| CounterRow {
                interface: c.interface,
                ifindex: c.ifindex,
                family: c.family.to_owned(),
                action: c.action.to_owned(),
                packets: c.packets,
                bytes: c.bytes,
            })
            .collect(),
        malformed: r
            .malformed
            .into_iter()
            .map(|m| ReasonRow {
                interface: m.interface,
                ifindex: m.ifindex,
                reason: m.reason.to_owned(),
                packets: m.packets,
                bytes: m.bytes,
            })
            .collect(),
        decision_cache: CacheStats {
            hits: r.decision_cache.hits,
            misses: r.decision_cache.misses,
            walks: r.decision_cache.walks,
        },
        limits: LimitCounters::from_packets(r.limits),
    }
}

pub(super) fn status(d: &Daemon) -> Status {
    Status {
        pid: std::process::id(),
        uptime_seconds: d.started.elapsed().as_secs(),
        config: d.config.path.clone(),
        state_file: d.config.state_file.clone(),
        started_from: match d.origin {
            Origin::Config => StartedFrom::Config,
            Origin::StateFile => StartedFrom::StateFile,
        },
        interfaces: d
            .dp
            .attached()
            .iter()
            .map(|a| AttachedIface {
                interface: a.iface.clone(),
                ifindex: a.ifindex,
                mode: a.mode,
                prog_id: a.prog_id,
                drop_unbound: d
                    .config
                    .interfaces
                    .iter()
                    .any(|i| i.name == a.iface && i.drop_unbound),
            })
            .collect(),
        rules: d.ctl.state().rules.len(),
        sets: d.ctl.state().sets.len(),
        bindings: d.binds.list().len(),
        metrics_listen: d.config.metrics_listen.clone(),
        reload: ReloadInfo {
            attempts: d.reload.attempts,
            last_ok: d.reload.last_ok,
            last_success_unix: d.reload.last_success_unix,
            last_error: d.reload.last_error.clone(),
        },
        busy: None,
        state_not_saved: d.save_status().unsaved.as_ref().map(|u| u.reason.clone()),
        state_save_failures: d.save_status().failures,
        warnings: d.warnings().to_vec(),
        syncookies: SyncookieStatus {
            enabled: d.syncookie_readiness().enabled,
            reason: d.syncookie_readiness().reason.clone(),
            warning: d.syncookie_readiness().warning.clone(),
        },
    }
}

fn change_name(c: &Change) -> &'static str {
    match c {
        Change::SetAdd { .. } => "set add",
        Change::SetDel { .. } => "set del",
        Change::RuleAdd { .. } => "acl add",
        Change::RuleDel { .. } => "acl del",
        Change::Replace { .. } => "acl replace",
        Change::Policy { .. } => "policy",
    }
}
