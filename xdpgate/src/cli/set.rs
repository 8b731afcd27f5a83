//! `xdpgate set`: prefix sets.
use std::path::PathBuf;

use clap::Subcommand;
use xdpgate_model::acl::Change;

use super::{CliError, Output, apply, call, print_json, render};
use crate::{
    api::{
        Request,
        protocol::{SetList, SetShow},
    },
    paths::Paths,
};

/// `xdpgate set` verbs.
#[derive(Debug, Subcommand)]
pub enum SetCmd {
    /// Add prefixes to a set (created if needed).
    Add {
        /// Set name.
        name: String,
        /// Prefixes of either family.
        prefixes: Vec<String>,
        /// Also read prefixes from a file, one per line (# comments allowed).
        #[arg(long)]
        file: Option<PathBuf>,
    },
    /// Delete prefixes from a set, or the whole set when none are given.
    Del {
        /// Set name.
        name: String,
        /// Prefixes to remove.
        prefixes: Vec<String>,
    },
    /// List sets, or the prefixes of one set.
    List {
        /// One set.
        name: Option<String>,
        /// Output format.
        #[arg(long, short = 'o', value_enum, default_value_t = Output::Text)]
        output: Output,
    },
}

/// `xdpgate set ...`.
pub fn set_cmd(paths: &Paths, cmd: SetCmd) -> Result<(), CliError> {
    match cmd {
        SetCmd::Add {
            name,
            mut prefixes,
            file,
        } => {
            if let Some(f) = file {
                let text = std::fs::read_to_string(&f).map_err(|source| CliError::Read {
                    path: f.clone(),
                    source,
                })?;
                let before = prefixes.len();
                prefixes.extend(
                    text.lines()
                        .map(|l| l.split('#').next().unwrap_or("").trim())
                        .filter(|l| !l.is_empty())
                        .map(str::to_owned),
                );
                eprintln!(
                    "read {} prefixes from {}; sending to the daemon",
                    prefixes.len() - before,
                    f.display()
                );
            }
            if prefixes.is_empty() {
                return Err(CliError::BadInput("no prefixes given".into()));
            }
            apply(paths, Change::SetAdd { name, prefixes })
        }
        SetCmd::Del { name, prefixes } => apply(paths, Change::SetDel { name, prefixes }),
        SetCmd::List { name: None, output } => {
            let list: SetList = call(paths, &Request::SetList { name: None })?;
            match output {
                Output::Json => print_json(&list),
                Output::Text => {
                    print!("{}", render::set_list(&list));
                    Ok(())
                }
            }
        }
        SetCmd::List {
            name: Some(name),
            output,
        } => {
            let set: SetShow = call(paths, &Request::SetList { name: Some(name) })?;
            match output {
                Output::Json => print_json(&set),
                Output::Text => {
                    print!("{}", render::set_show(&set));
                    Ok(())
                }
            }
        }
    }
}
