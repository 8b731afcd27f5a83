//! `xdpgate acl`: rules (default policies are `xdpgate policy`).
use std::path::PathBuf;

use clap::Subcommand;
use xdpgate_model::acl::{AclError, Change, Limit, LimitKey, Rule, RuleFile, model::proto};

use super::{CliError, Output, VerdictArg, apply, call, print_json, render};
use crate::{
    api::{Request, protocol::AclList},
    paths::Paths,
};

/// `xdpgate acl` verbs.
#[derive(Debug, Subcommand)]
pub enum AclCmd {
    /// Add a rule.
    Add(Box<RuleArgs>),
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
    /// Rate limit: packets per second. Any --limit-* flag gives the rule a
    /// limit (action allow): packets over it are dropped (`rate_limited`).
    #[arg(long, value_name = "N")]
    limit_pps: Option<u64>,
    /// Packets that may pass at once above --limit-pps (default: a tenth
    /// of the rate, at least 1).
    #[arg(long, value_name = "N")]
    limit_burst: Option<u64>,
    /// Rate limit: bytes per second (whole frames).
    #[arg(long, value_name = "N")]
    limit_bytes_per_sec: Option<u64>,
    /// Bytes that may pass at once above --limit-bytes-per-sec (default: a
    /// tenth of the rate, at least 16384; at least 1514).
    #[arg(long, value_name = "N")]
    limit_burst_bytes: Option<u64>,
    /// What a bucket is shared by: the whole rule, or each source or
    /// destination prefix (default src).
    #[arg(long, value_name = "KEY", value_parser = ["rule", "src", "dst"])]
    limit_per: Option<String>,
    /// IPv4 prefix length of src/dst buckets (1-32, default 32).
    #[arg(long, value_name = "N")]
    limit_v4_prefix: Option<u8>,
    /// IPv6 prefix length of src/dst buckets (1-128, default 64).
    #[arg(long, value_name = "N")]
    limit_v6_prefix: Option<u8>,
    /// Answer SYNs with SYN cookies in XDP (action allow, proto tcp, --dport).
    #[arg(long)]
    syncookie: bool,
}

/// The flag of each field of a limit, for messages.
const LIMIT_FLAGS: &[(&str, &str)] = &[
    ("pps", "--limit-pps"),
    ("burst_packets", "--limit-burst"),
    ("bytes_per_sec", "--limit-bytes-per-sec"),
    ("burst_bytes", "--limit-burst-bytes"),
    ("v4_prefix", "--limit-v4-prefix"),
    ("v6_prefix", "--limit-v6-prefix"),
    ("limit", "--limit-*"),
];

/// The limit the `--limit-*` flags describe, if any is given.
fn limit_of(a: &RuleArgs) -> Option<Limit> {
    let given = a.limit_pps.is_some()
        || a.limit_burst.is_some()
        || a.limit_bytes_per_sec.is_some()
        || a.limit_burst_bytes.is_some()
        || a.limit_per.is_some()
        || a.limit_v4_prefix.is_some()
        || a.limit_v6_prefix.is_some();
    given.then(|| Limit {
        pps: a.limit_pps,
        burst_packets: a.limit_burst,
        bytes_per_sec: a.limit_bytes_per_sec,
        burst_bytes: a.limit_burst_bytes,
        // clap admits only the names LimitKey parses.
        per: a
            .limit_per
            .as_deref()
            .and_then(LimitKey::parse)
            .unwrap_or_default(),
        v4_prefix: a.limit_v4_prefix,
        v6_prefix: a.limit_v6_prefix,
    })
}

/// A problem of `Rule::check` in the words of the command line: a limit's
/// field (`limit.pps: ...`) becomes its flag.
fn in_flags(e: &AclError) -> String {
    let text = e.to_string();
    for (field, flag) in LIMIT_FLAGS {
        let named = format!("limit.{field}:");
        if text.contains(&named) {
            return text.replacen(&named, &format!("{flag}:"), 1);
        }
    }
    text
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
    let limit = limit_of(&a);
    let rule = Rule {
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
        limit,
        syncookie: a.syncookie,
    };
    // Checked here too, so that a bad limit is told in terms of its flags.
    let errs = rule.check();
    if !errs.is_empty() {
        let why: Vec<String> = errs.iter().map(in_flags).collect();
        return Err(CliError::BadInput(why.join("; ")));
    }
    Ok(rule)
}

/// `xdpgate acl ...`.
pub fn acl_cmd(paths: &Paths, cmd: AclCmd) -> Result<(), CliError> {
    match cmd {
        AclCmd::Add(args) => apply(
            paths,
            Change::RuleAdd {
                rules: vec![rule_of(*args)?],
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

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;
    use crate::cli::{Cli, Command, EXIT_USAGE};

    /// The rule of `xdpgate acl add ARGS`.
    fn add(args: &[&str]) -> Result<Rule, CliError> {
        let argv = ["xdpgate", "acl", "add", "--id", "7", "--priority", "7"];
        let cli = Cli::try_parse_from(argv.iter().chain(args)).expect("valid flags");
        match cli.command {
            Command::Acl {
                cmd: AclCmd::Add(a),
            } => rule_of(*a),
            other => panic!("not acl add: {other:?}"),
        }
    }

    #[test]
    fn limit_flags_make_a_limit_and_syncookie_sets_the_flag() {
        let r = add(&[
            "--proto",
            "udp",
            "--action",
            "allow",
            "--limit-pps",
            "1000",
            "--limit-burst",
            "50",
            "--limit-bytes-per-sec",
            "1000000",
            "--limit-burst-bytes",
            "20000",
            "--limit-per",
            "dst",
            "--limit-v4-prefix",
            "24",
            "--limit-v6-prefix",
            "48",
        ])
        .unwrap();
        assert_eq!(
            r.limit,
            Some(Limit {
                pps: Some(1000),
                burst_packets: Some(50),
                bytes_per_sec: Some(1_000_000),
                burst_bytes: Some(20_000),
                per: LimitKey::Dst,
                v4_prefix: Some(24),
                v6_prefix: Some(48),
            })
        );
        assert!(!r.syncookie);
        let r = add(&[
            "--proto",
            "tcp",
            "--dport",
            "443",
            "--action",
            "allow",
            "--syncookie",
        ])
        .unwrap();
        assert!(r.syncookie && r.limit.is_none());
        let r = add(&[
            "--action",
            "allow",
            "--limit-per",
            "rule",
            "--limit-pps",
            "5",
        ])
        .unwrap();
        assert_eq!(
            r.limit.map(|l| (l.per, l.packet_burst())),
            Some((LimitKey::Rule, Some(1)))
        );
    }

    #[test]
    fn a_bad_limit_is_a_usage_error_naming_its_flag() {
        let cases: &[(&str, &[&str], &str)] = &[
            (
                "zero rate",
                &["--limit-pps", "0"],
                "rule 7: --limit-pps: 0 is not a rate from 1 to",
            ),
            (
                "burst without its rate",
                &["--limit-pps", "10", "--limit-burst-bytes", "2000"],
                "rule 7: --limit-burst-bytes: needs the rate it is a burst of",
            ),
            (
                "byte burst below one frame",
                &[
                    "--limit-bytes-per-sec",
                    "10000",
                    "--limit-burst-bytes",
                    "1000",
                ],
                "--limit-burst-bytes: 1000 is not a burst from 1514",
            ),
            (
                "prefix /33",
                &["--limit-pps", "10", "--limit-v4-prefix", "33"],
                "--limit-v4-prefix: /33 is not a prefix length from 1 to 32",
            ),
            (
                "a prefix on a rule-wide limit",
                &[
                    "--limit-pps",
                    "10",
                    "--limit-per",
                    "rule",
                    "--limit-v6-prefix",
                    "48",
                ],
                "--limit-v6-prefix: a rule-wide limit",
            ),
            (
                "no rate",
                &["--limit-per", "src"],
                "--limit-*: names no rate: give pps and/or bytes_per_sec",
            ),
            (
                "syncookie without dport",
                &["--proto", "tcp", "--syncookie"],
                "syncookie needs dport",
            ),
        ];
        for (case, args, phrase) in cases {
            let mut all = vec!["--action", "allow"];
            all.extend_from_slice(args);
            let e = add(&all).expect_err(case);
            assert!(matches!(e, CliError::BadInput(_)), "{case}: {e:?}");
            assert_eq!(e.exit_code(), EXIT_USAGE, "{case}");
            assert!(e.to_string().contains(phrase), "{case}: {e}");
        }
        let e = add(&["--action", "deny", "--limit-pps", "10"]).unwrap_err();
        assert!(e.to_string().contains("a limit needs action allow"), "{e}");
    }

    #[test]
    fn a_limit_value_that_is_not_a_number_or_key_is_refused_by_the_parser() {
        for args in [
            &["--limit-pps", "fast"][..],
            &["--limit-pps", "-1"][..],
            &["--limit-v6-prefix", "300"][..],
            &["--limit-per", "host"][..],
        ] {
            let argv = [
                "xdpgate",
                "acl",
                "add",
                "--id",
                "7",
                "--priority",
                "7",
                "--action",
                "allow",
            ];
            let e = Cli::try_parse_from(argv.iter().chain(args)).expect_err("refused");
            assert!(e.use_stderr(), "{args:?}: a usage error (exit 64)");
        }
    }
}
