//! `xdpgate lb`: load-balanced services.
use clap::{Subcommand, ValueEnum};

use super::{CliError, Output, call, print_json, render};
use crate::{
    api::{
        Request,
        protocol::{LbList, Message},
    },
    paths::Paths,
};

/// `xdpgate lb` verbs.
#[derive(Debug, Subcommand)]
pub enum LbCmd {
    /// Add a service: `lb add 192.0.2.10:80/tcp --backend 10.200.2.2
    /// --backend fd00:200:2::3 weight=2`. The ring is rebuilt and swapped
    /// atomically; all or nothing.
    Add {
        /// VIP:PORT/PROTO (IPv6 VIPs in brackets), or VIP/PROTO for every port.
        service: String,
        /// A backend address of either family, optionally followed by
        /// weight=N (default 1; 0 drains it). Repeat for each backend.
        #[arg(long = "backend", short = 'b', num_args = 1..=2, value_name = "ADDR [weight=N]", required = true)]
        backends: Vec<String>,
        /// How packets reach the backends: encap (IPIP/IP6IP6/mixed; the
        /// backends run `xdpgate run --decap`) or l2dsr (MAC rewrite; the
        /// backends are on-link).
        #[arg(long, value_enum, default_value_t = ForwardArg::Encap)]
        forward: ForwardArg,
        /// Health check of each backend: tcp, http or udp (none by default).
        #[arg(long, value_enum)]
        health: Option<HealthArg>,
        /// Port probed (default: the service's).
        #[arg(long, requires = "health")]
        health_port: Option<u16>,
        /// Seconds between probes (default 2).
        #[arg(long, requires = "health")]
        interval: Option<f64>,
        /// Seconds one probe may take (default 1).
        #[arg(long, requires = "health")]
        timeout: Option<f64>,
        /// Successful probes that bring a backend back (default 2).
        #[arg(long, requires = "health")]
        rise: Option<u32>,
        /// Failed probes that take a backend out (default 3).
        #[arg(long, requires = "health")]
        fall: Option<u32>,
        /// HTTP: path to GET (default /).
        #[arg(long, requires = "health")]
        http_path: Option<String>,
        /// HTTP: expected status (default 200).
        #[arg(long, requires = "health")]
        http_status: Option<u16>,
        /// UDP: probe payload (default "ping").
        #[arg(long, requires = "health")]
        udp_payload: Option<String>,
        /// Replace an existing service with the same VIP, protocol and port.
        #[arg(long)]
        replace: bool,
    },
    /// Remove a service.
    Del {
        /// VIP:PORT/PROTO.
        service: String,
    },
    /// List services, backends, their health, ring shares and counters.
    List {
        /// Output format.
        #[arg(long, short = 'o', value_enum, default_value_t = Output::Text)]
        output: Output,
    },
}

/// Forwarding method of a service.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum ForwardArg {
    /// Encapsulation.
    Encap,
    /// L2 direct server return.
    L2dsr,
}

/// Health-check type.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum HealthArg {
    /// TCP connect.
    Tcp,
    /// HTTP GET with an expected status.
    Http,
    /// UDP probe expecting a reply.
    Udp,
}

/// `xdpgate lb ...`.
pub fn lb_cmd(paths: &Paths, cmd: LbCmd) -> Result<(), CliError> {
    match cmd {
        LbCmd::Add {
            service,
            backends,
            forward,
            health,
            health_port,
            interval,
            timeout,
            rise,
            fall,
            http_path,
            http_status,
            udp_payload,
            replace,
        } => {
            // Validated here first, so a typo gets a usage error without a
            // round trip (the daemon validates again).
            let tokens = xdpgate_model::lb::parse_backends(&backends)
                .map_err(|e| CliError::BadInput(e.to_string()))?;
            let entry = xdpgate_model::lb::ServiceEntry {
                service,
                forward: Some(
                    match forward {
                        ForwardArg::Encap => "encap",
                        ForwardArg::L2dsr => "l2dsr",
                    }
                    .into(),
                ),
                backends: tokens
                    .iter()
                    .map(|b| format!("{} weight={}", b.addr, b.weight))
                    .collect(),
                health: health.map(|h| xdpgate_model::lb::HealthEntry {
                    kind: Some(
                        match h {
                            HealthArg::Tcp => "tcp",
                            HealthArg::Http => "http",
                            HealthArg::Udp => "udp",
                        }
                        .into(),
                    ),
                    port: health_port,
                    interval,
                    timeout,
                    rise,
                    fall,
                    path: http_path,
                    host: None,
                    status: http_status,
                    payload: udp_payload,
                }),
            };
            if let Err(problems) = entry.to_spec() {
                return Err(CliError::BadInput(problems.join("; ")));
            }
            let r: Message = call(
                paths,
                &Request::LbAdd {
                    service: entry,
                    replace,
                },
            )?;
            println!("{}", r.message);
        }
        LbCmd::Del { service } => {
            let r: Message = call(paths, &Request::LbDel { service })?;
            println!("{}", r.message);
        }
        LbCmd::List { output } => {
            let list: LbList = call(paths, &Request::LbList)?;
            match output {
                Output::Json => print_json(&list)?,
                Output::Text => print!("{}", render::lb_list(&list)),
            }
        }
    }
    Ok(())
}
