//! `xdpgate acl`: rules (default policies are `xdpgate policy`).
use std::path::PathBuf;

use clap::Subcommand;
use xdpgate_model::acl::{AclError, Change, Rule, RuleFile, model::proto};

use super::{CliError, Output, VerdictArg, apply, call, print_json, render};
use crate::{
    api::{Request, protocol::AclList},
    paths::Paths,
};

/// `xdpgate acl` verbs.
#[derive(Debug, Subcommand)]
pub enum AclCmd {
    /// Add a rule.
    Add(RuleArgs),
    /// Delete rules by id.
    Del {
        /// Rule ids.
        #[arg(required = true)]
        ids: Vec<u32>,
    },
    /// List rules in evaluation order with their counters.
    List {
        /// Output format.
        #[arg(long, short = 'o', value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// Replace every set, rule and policy with the contents of a TOML file.
    Replace {
        /// The rule file.
        #[arg(long)]
        file: PathBuf,
    },
}

/// The fields of one rule (see README, "ACL").
#[derive(Debug, clap::Args)]
pub struct RuleArgs {
    /// Unique id.
    #[arg(long)]
    id: u32,
    /// Lower is evaluated first; ties by id.
    #[arg(long)]
    priority: u32,
    /// Source prefix or @set.
    #[arg(long)]
    src: Option<String>,
    /// Destination prefix or @set.
    #[arg(long)]
    dst: Option<String>,
    /// Protocol: tcp, udp, sctp, icmp, icmpv6 or a number.
    #[arg(long)]
    proto: Option<String>,
    /// Source port or range A-B.
    #[arg(long)]
    sport: Option<String>,
    /// Destination port or range A-B.
    #[arg(long)]
    dport: Option<String>,
    /// ICMP or ICMPv6 type.
    #[arg(long)]
    icmp_type: Option<u8>,
    /// ICMP or ICMPv6 code.
    #[arg(long)]
    icmp_code: Option<u8>,
    /// Ingress interface.
    #[arg(long)]
    iface: Option<String>,
    /// allow or deny.
    #[arg(long, value_enum)]
    action: VerdictArg,
}

/// The rule `acl add` describes; a bad value is the caller's fault.
pub fn rule_of(a: RuleArgs) -> Result<Rule, CliError> {
    fn parse<T: std::str::FromStr<Err = AclError>>(
        s: Option<String>,
    ) -> Result<Option<T>, CliError> {
        s.map(|s| {
            s.parse()
                .map_err(|e: AclError| CliError::BadInput(e.to_string()))
        })
        .transpose()
    }
    Ok(Rule {
        id: a.id,
        priority: a.priority,
        src: parse(a.src)?,
        dst: parse(a.dst)?,
        proto: a
            .proto
            .map(|p| proto::parse(&p))
            .transpose()
            .map_err(|e| CliError::BadInput(e.to_string()))?,
        sport: parse(a.sport)?,
        dport: parse(a.dport)?,
        icmp_type: a.icmp_type,
        icmp_code: a.icmp_code,
        iface: a.iface,
        action: a.action.into(),
        limit: None,
        syncookie: false,
    })
}

/// `xdpgate acl ...`.
pub fn acl_cmd(paths: &Paths, cmd: AclCmd) -> Result<(), CliError> {
    match cmd {
        AclCmd::Add(args) => apply(
            paths,
            Change::RuleAdd {
                rules: vec![rule_of(args)?],
            },
        ),
        AclCmd::Del { ids } => apply(paths, Change::RuleDel { ids }),
        AclCmd::Replace { file } => {
            let text = std::fs::read_to_string(&file).map_err(|source| CliError::Read {
                path: file.clone(),
                source,
            })?;
            let file: RuleFile = toml::from_str(&text)
                .map_err(|e| CliError::BadInput(format!("{}: {e}", file.display())))?;
            apply(paths, Change::Replace { file })
        }
        AclCmd::List { output } => {
            let list: AclList = call(paths, &Request::AclList)?;
            match output {
                Output::Json => print_json(&list)?,
                Output::Text => print!("{}", render::acl_list(&list)),
            }
            Ok(())
        }
    }
}
