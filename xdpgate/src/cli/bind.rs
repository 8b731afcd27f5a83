//! `xdpgate bind`: address bindings.
use clap::Subcommand;
use xdpgate_model::bind::BindRequest;

use super::{CliError, Output, call, print_json, render};
use crate::{
    api::{
        Request,
        protocol::{BindList, BindReport},
    },
    paths::Paths,
};

/// `xdpgate bind` verbs.
#[derive(Debug, Subcommand)]
pub enum BindCmd {
    /// Bind addresses: each SPEC is an address, a prefix (every address in it)
    /// or a range A-B. Addresses already on the interface are adopted.
    Add {
        /// Addresses, prefixes or ranges.
        #[arg(required = true, value_name = "SPEC")]
        specs: Vec<String>,
        /// Interface (one the daemon is attached to).
        #[arg(long, short = 'i', value_name = "IF")]
        iface: String,
        /// On-link prefix length of each address (default 32 or 128).
        #[arg(long)]
        plen: Option<u8>,
        /// IPv6: skip duplicate address detection.
        #[arg(long)]
        nodad: bool,
    },
    /// Remove bindings; addresses xdpgate added are removed from the
    /// interface, adopted ones stay.
    Del {
        /// Addresses, prefixes or ranges.
        #[arg(required = true, value_name = "SPEC")]
        specs: Vec<String>,
        /// Interface.
        #[arg(long, short = 'i', value_name = "IF")]
        iface: String,
    },
    /// List the bindings.
    List {
        /// Output format.
        #[arg(long, short = 'o', value_enum, default_value_t = Output::Text)]
        output: Output,
    },
}

/// `xdpgate bind ...`.
pub fn bind_cmd(paths: &Paths, cmd: BindCmd) -> Result<(), CliError> {
    let reqs = |specs: Vec<String>, iface: String, plen, nodad| -> Vec<BindRequest> {
        specs
            .into_iter()
            .map(|spec| BindRequest {
                iface: iface.clone(),
                spec,
                plen,
                nodad,
            })
            .collect()
    };
    match cmd {
        BindCmd::Add {
            specs,
            iface,
            plen,
            nodad,
        } => {
            let binds = reqs(specs, iface, plen, nodad);
            let r: BindReport = call(paths, &Request::BindAdd { binds })?;
            print!("{}", render::bind_report(&r));
        }
        BindCmd::Del { specs, iface } => {
            let binds = reqs(specs, iface, None, false);
            let r: BindReport = call(paths, &Request::BindDel { binds })?;
            print!("{}", render::bind_report(&r));
        }
        BindCmd::List { output } => {
            let list: BindList = call(paths, &Request::BindList)?;
            match output {
                Output::Json => print_json(&list)?,
                Output::Text => print!("{}", render::bind_list(&list)),
            }
        }
    }
    Ok(())
}
