//! `gantry pipeline apply|rollback|list`: pipelines defined in Gantry (source `local`), in the
//! data dir or, with `--server`, through a running server.

use std::path::{Path, PathBuf};

use super::remote::{Client, block_on};
use super::{exit, open_store};
use crate::catalog::{self, LOCAL_SOURCE};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub command: PipelineCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum PipelineCommand {
    /// Create or update a pipeline defined in Gantry from a file; each change is a new version.
    Apply {
        /// The pipeline file
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        /// The executor its runs go to (a name of `[executor.NAME]`; "" for the server's
        /// default); left as it was when not given
        #[arg(long, value_name = "NAME")]
        executor: Option<String>,
    },
    /// Make an earlier version of a local pipeline current again (recorded as a new version).
    Rollback {
        /// local/NAME (or NAME)
        pipeline: String,
        /// The version to return to
        #[arg(long)]
        to: u32,
    },
    /// List pipelines with their current version and validity.
    List,
}

fn local_name(given: &str) -> Result<&str, String> {
    match given.split_once('/') {
        None => Ok(given),
        Some((LOCAL_SOURCE, name)) => Ok(name),
        Some((source, _)) => Err(format!(
            "only `{LOCAL_SOURCE}` pipelines can be rolled back here; `{source}` pipelines follow \
             their repository (revert the commit there)"
        )),
    }
}

pub fn run(data_dir: &Path, server: Option<&Client>, args: &Args) -> u8 {
    match &args.command {
        PipelineCommand::Apply { file, executor } => {
            if let Some(e) = executor.as_deref().filter(|e| !e.is_empty())
                && let Err(m) = crate::config::check_executor_name(e)
            {
                eprintln!("gantry: {m}");
                return exit::USAGE;
            }
            apply(data_dir, server, file, executor.as_deref())
        }
        PipelineCommand::Rollback { pipeline, to } => {
            let name = match local_name(pipeline) {
                Ok(n) => n,
                Err(e) => {
                    eprintln!("gantry: {e}");
                    return exit::USAGE;
                }
            };
            if let Some(client) = server {
                return block_on(async {
                    let p = client.rollback(name, *to).await?;
                    println!(
                        "{LOCAL_SOURCE}/{name} is at version {} (the text of version {to})",
                        p["version"]
                    );
                    Ok(exit::OK)
                });
            }
            let Some(store) = open_store(data_dir) else {
                return exit::USAGE;
            };
            match catalog::rollback_local(&store, name, *to) {
                Ok(a) => {
                    println!(
                        "{LOCAL_SOURCE}/{name} is at version {} (the text of version {to})",
                        a.record.version.unwrap_or(0)
                    );
                    exit::OK
                }
                Err(e) => {
                    eprintln!("gantry: {e}");
                    exit::FAILURE
                }
            }
        }
        PipelineCommand::List => list(data_dir, server),
    }
}

fn apply(data_dir: &Path, server: Option<&Client>, file: &Path, executor: Option<&str>) -> u8 {
    let shown = file.display().to_string();
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("gantry: cannot read {shown}: {e}");
            return exit::USAGE;
        }
    };
    // A valid Choreo-shaped file is applied in Gantry's form, named after its file if need be.
    let checked = crate::spec::check_file(&text, Some(&shown));
    let text = crate::spec::self_contained(&text, Some(&shown), &checked).into_owned();
    if let Some(client) = server {
        let checked = crate::spec::check(&text);
        let Some(name) = checked.name.clone() else {
            eprint!("{}", catalog::render_errors(&shown, &text, &checked));
            return exit::FAILURE;
        };
        return block_on(async {
            let p = client.apply(&name, &text, executor).await?;
            let verb = if p["changed"] == true {
                "is now at"
            } else {
                "unchanged at"
            };
            println!("{LOCAL_SOURCE}/{name} {verb} version {}", p["version"]);
            Ok(exit::OK)
        });
    }
    let Some(store) = open_store(data_dir) else {
        return exit::USAGE;
    };
    let applied = catalog::apply_local(&store, &text, &shown, None).and_then(|mut a| {
        if let Some(e) = executor {
            let chosen = (!e.is_empty()).then(|| e.to_string());
            a.record = catalog::set_local_executor(&store, &a.record.name, chosen)?;
        }
        Ok(a)
    });
    match applied {
        Ok(a) => {
            let verb = if a.changed {
                "is now at"
            } else {
                "unchanged at"
            };
            println!(
                "{LOCAL_SOURCE}/{} {verb} version {}",
                a.record.name,
                a.record.version.unwrap_or(0)
            );
            exit::OK
        }
        Err(catalog::CatalogError::Invalid(rendered)) => {
            eprintln!("{rendered}");
            eprintln!("gantry: {shown} is invalid; nothing was changed");
            exit::FAILURE
        }
        Err(e) => {
            eprintln!("gantry: {e}");
            exit::FAILURE
        }
    }
}

fn list(data_dir: &Path, server: Option<&Client>) -> u8 {
    let rows: Vec<serde_json::Value> = if let Some(client) = server {
        let mut rows = Vec::new();
        let code = block_on(async {
            let body = client.pipelines().await?;
            rows = body["pipelines"].as_array().cloned().unwrap_or_default();
            Ok(exit::OK)
        });
        if code != exit::OK {
            return code;
        }
        rows
    } else {
        let Some(store) = open_store(data_dir) else {
            return exit::USAGE;
        };
        match store.list_pipelines(None) {
            Ok(list) => list
                .iter()
                .filter_map(|p| serde_json::to_value(p).ok())
                .collect(),
            Err(e) => {
                eprintln!("gantry: {e}");
                return exit::FAILURE;
            }
        }
    };
    println!(
        "{:<40}  {:>7}  {:<8}  ERRORS",
        "PIPELINE", "VERSION", "STATE"
    );
    for p in rows {
        let name = format!(
            "{}/{}",
            p["source"].as_str().unwrap_or("?"),
            p["name"].as_str().unwrap_or("?")
        );
        let state = if p["retired"] == true {
            "retired"
        } else if p["valid"] == true {
            "valid"
        } else {
            "invalid"
        };
        let errors = p["errors"].as_array().map_or(0, Vec::len);
        let version = p["version"]
            .as_u64()
            .map_or("-".to_string(), |v| v.to_string());
        println!("{name:<40}  {version:>7}  {state:<8}  {errors}");
    }
    exit::OK
}
