//! `gantry vars ...` and `gantry secrets ...`: plain variables and write-only secrets, global or
//! per pipeline, in the data dir or on a server (`--server`). Secret values are read from standard input, never from the command line (where
//! `ps` and shell history would see them), and no command ever prints one.

use std::io::{IsTerminal, Read};
use std::path::Path;

use super::remote::{Client, ConfigKind, Failure, report, wait};
use super::{exit, open_store};
use crate::spec::values::{is_identifier, is_pipeline_name};
use crate::store::{ConfigEntry, SecretRelease, Store};

#[derive(Debug, clap::Args)]
pub struct VarsArgs {
    #[command(subcommand)]
    pub action: VarsAction,
}

#[derive(Debug, clap::Subcommand)]
pub enum VarsAction {
    /// Set a variable
    Set {
        name: String,
        value: String,
        /// Only for this pipeline (overrides the global value)
        #[arg(long)]
        pipeline: Option<String>,
    },
    /// List variables with their values
    List {
        #[arg(long)]
        json: bool,
    },
    /// Remove a variable
    Rm {
        name: String,
        #[arg(long)]
        pipeline: Option<String>,
    },
}

#[derive(Debug, clap::Args)]
pub struct SecretsArgs {
    #[command(subcommand)]
    pub action: SecretsAction,
}

#[derive(Debug, clap::Subcommand)]
pub enum SecretsAction {
    /// Set a secret; the value is read from standard input
    #[command(
        after_help = "Example: printf %s \"$TOKEN\" | gantry secrets set api_token --pipeline deploy\n\n\
A secret is protected unless set with --unprotected: only runs at a protected ref of their\n\
repository ([[repos]] protected, default the watched branch) get it."
    )]
    Set {
        name: String,
        /// Only for this pipeline (overrides the global value)
        #[arg(long)]
        pipeline: Option<String>,
        /// Also release it to runs at unprotected refs (feature branches, pull request heads,
        /// forks); for read-only credentials such as a plan's
        #[arg(long)]
        unprotected: bool,
    },
    /// List secret names (never values)
    List {
        #[arg(long)]
        json: bool,
    },
    /// Remove a secret
    Rm {
        name: String,
        #[arg(long)]
        pipeline: Option<String>,
    },
}

fn check_name(name: &str, what: &str) -> bool {
    if is_identifier(name) {
        true
    } else {
        eprintln!("gantry: invalid {what} name `{name}`: it must match ^[a-zA-Z_][a-zA-Z0-9_]*$");
        false
    }
}

/// A `--pipeline` scope must be a pipeline name (for `gantry run FILE`) or `source/name` (for a
/// server's pipeline); an empty one would quietly mean global.
fn check_scope(pipeline: Option<&str>) -> bool {
    let Some(p) = pipeline else {
        return true;
    };
    let name = match p.split_once('/') {
        Some((source, name)) if !source.is_empty() && !source.contains('/') => name,
        Some(_) => "",
        None => p,
    };
    if is_pipeline_name(name) {
        return true;
    }
    eprintln!(
        "gantry: invalid pipeline `{p}` for --pipeline: expected NAME or SOURCE/NAME, the name \
         matching ^[a-z][a-z0-9-]{{0,62}}$"
    );
    false
}

fn print_entries(entries: &[ConfigEntry], json: bool, empty: &str) -> u8 {
    if json {
        return match serde_json::to_string_pretty(entries) {
            Ok(text) => {
                println!("{text}");
                exit::OK
            }
            Err(e) => {
                eprintln!("gantry: {e}");
                exit::USAGE
            }
        };
    }
    if entries.is_empty() {
        eprintln!("{empty}");
    }
    for e in entries {
        let scope = e
            .pipeline
            .as_deref()
            .map(|p| format!("{p}/"))
            .unwrap_or_default();
        match &e.value {
            Some(v) => println!("{scope}{}={v}", e.name),
            None if e.unprotected => println!("{scope}{} (unprotected)", e.name),
            None => println!("{scope}{}", e.name),
        }
    }
    exit::OK
}

/// Where variables and secrets are kept: this data dir's store, or a server's API.
enum Backend<'a> {
    Store(Store),
    Server(&'a Client),
}

impl Backend<'_> {
    fn open<'a>(data_dir: &Path, client: Option<&'a Client>) -> Option<Backend<'a>> {
        match client {
            Some(c) => Some(Backend::Server(c)),
            None => open_store(data_dir).map(Backend::Store),
        }
    }

    fn set(
        &self,
        kind: ConfigKind,
        scope: Option<&str>,
        name: &str,
        value: &str,
        release: SecretRelease,
    ) -> Result<(), Failure> {
        match self {
            Backend::Store(store) => match kind {
                ConfigKind::Variable => store.set_var(scope, name, value),
                ConfigKind::Secret => store.set_secret_with(scope, name, value, release),
            }
            .map_err(store_failure),
            Backend::Server(client) => {
                let unprotected = release == SecretRelease::Unprotected;
                wait(client.set_config(kind, scope, name, value, unprotected))
            }
        }
    }

    /// Removes an entry; `Ok(Err(words))` when there was none.
    fn remove(
        &self,
        kind: ConfigKind,
        scope: Option<&str>,
        name: &str,
    ) -> Result<Result<(), String>, Failure> {
        match self {
            Backend::Store(store) => {
                let existed = match kind {
                    ConfigKind::Variable => store.remove_var(scope, name),
                    ConfigKind::Secret => store.remove_secret(scope, name),
                }
                .map_err(store_failure)?;
                let what = match kind {
                    ConfigKind::Variable => "variable",
                    ConfigKind::Secret => "secret",
                };
                Ok(if existed {
                    Ok(())
                } else {
                    Err(format!("no {what} `{name}`{}", scope_words(scope)))
                })
            }
            Backend::Server(client) => wait(client.remove_config(kind, scope, name)),
        }
    }

    fn list(&self, kind: ConfigKind) -> Result<Vec<ConfigEntry>, Failure> {
        match self {
            Backend::Store(store) => match kind {
                ConfigKind::Variable => store.list_vars(),
                ConfigKind::Secret => store.list_secrets(),
            }
            .map_err(store_failure),
            Backend::Server(client) => wait(client.list_config(kind)),
        }
    }
}

fn store_failure(e: crate::store::StoreError) -> Failure {
    Failure {
        message: e.to_string(),
        code: exit::USAGE,
    }
}

pub fn vars(data_dir: &Path, client: Option<&Client>, args: &VarsArgs) -> u8 {
    let scope = match &args.action {
        VarsAction::Set { pipeline, .. } | VarsAction::Rm { pipeline, .. } => pipeline.as_deref(),
        VarsAction::List { .. } => None,
    };
    if !check_scope(scope) {
        return exit::USAGE;
    }
    if let VarsAction::Set { name, .. } = &args.action
        && !check_name(name, "variable")
    {
        return exit::USAGE;
    }
    let Some(backend) = Backend::open(data_dir, client) else {
        return exit::USAGE;
    };
    let kind = ConfigKind::Variable;
    report(match &args.action {
        VarsAction::Set {
            name,
            value,
            pipeline,
        } => backend
            .set(
                kind,
                pipeline.as_deref(),
                name,
                value,
                SecretRelease::Protected,
            )
            .map(|()| exit::OK),
        VarsAction::List { json } => backend
            .list(kind)
            .map(|entries| print_entries(&entries, *json, "no variables")),
        VarsAction::Rm { name, pipeline } => {
            backend.remove(kind, pipeline.as_deref(), name).map(removed)
        }
    })
}

/// The exit code of an `rm`, with a message when there was nothing to remove.
fn removed(outcome: Result<(), String>) -> u8 {
    match outcome {
        Ok(()) => exit::OK,
        Err(words) => {
            eprintln!("gantry: {words}");
            exit::FAILURE
        }
    }
}

fn scope_words(pipeline: Option<&str>) -> String {
    pipeline
        .map(|p| format!(" for pipeline `{p}`"))
        .unwrap_or_else(|| " in the global scope".into())
}

/// Reads a secret value from standard input: everything, minus one trailing newline. On a
/// terminal, echo is turned off while the value is typed.
fn read_secret(name: &str) -> Result<String, String> {
    let stdin = std::io::stdin();
    let mut value = String::new();
    if stdin.is_terminal() {
        eprint!("value for {name} (input hidden, end with Enter): ");
        let _echo = EchoOff::new();
        stdin
            .read_line(&mut value)
            .map_err(|e| format!("cannot read the value: {e}"))?;
        eprintln!();
    } else {
        stdin
            .lock()
            .read_to_string(&mut value)
            .map_err(|e| format!("cannot read the value from stdin: {e}"))?;
    }
    if value.ends_with('\n') {
        value.pop();
        if value.ends_with('\r') {
            value.pop();
        }
    }
    if value.is_empty() {
        return Err(
            "the value is empty; pipe it in, e.g. `printf %s \"$VALUE\" | gantry secrets set NAME`"
                .into(),
        );
    }
    Ok(value)
}

/// Turns terminal echo off for as long as it lives.
struct EchoOff {
    saved: Option<libc::termios>,
}

impl EchoOff {
    fn new() -> EchoOff {
        // SAFETY: tcgetattr/tcsetattr on fd 0 with a zeroed, then filled, termios struct.
        unsafe {
            let mut term: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(0, &mut term) != 0 {
                return EchoOff { saved: None };
            }
            let saved = term;
            term.c_lflag &= !libc::ECHO;
            if libc::tcsetattr(0, libc::TCSANOW, &term) != 0 {
                return EchoOff { saved: None };
            }
            EchoOff { saved: Some(saved) }
        }
    }
}

impl Drop for EchoOff {
    fn drop(&mut self) {
        if let Some(saved) = &self.saved {
            // SAFETY: restores the settings read in `new`.
            unsafe {
                libc::tcsetattr(0, libc::TCSANOW, saved);
            }
        }
    }
}

pub fn secrets(data_dir: &Path, client: Option<&Client>, args: &SecretsArgs) -> u8 {
    let scope = match &args.action {
        SecretsAction::Set { pipeline, .. } | SecretsAction::Rm { pipeline, .. } => {
            pipeline.as_deref()
        }
        SecretsAction::List { .. } => None,
    };
    if !check_scope(scope) {
        return exit::USAGE;
    }
    if let SecretsAction::Set { name, .. } = &args.action
        && !check_name(name, "secret")
    {
        return exit::USAGE;
    }
    // Read the value before opening the store, so a failed read changes nothing.
    let value = match &args.action {
        SecretsAction::Set { name, .. } => match read_secret(name) {
            Ok(v) => Some(v),
            Err(e) => {
                eprintln!("gantry: {e}");
                return exit::USAGE;
            }
        },
        _ => None,
    };
    let Some(backend) = Backend::open(data_dir, client) else {
        return exit::USAGE;
    };
    let kind = ConfigKind::Secret;
    report(match &args.action {
        SecretsAction::Set {
            name,
            pipeline,
            unprotected,
        } => {
            let release = if *unprotected {
                SecretRelease::Unprotected
            } else {
                SecretRelease::Protected
            };
            backend
                .set(
                    kind,
                    pipeline.as_deref(),
                    name,
                    value.as_deref().unwrap_or_default(),
                    release,
                )
                .map(|()| {
                    let words = if *unprotected {
                        " (unprotected: runs at any ref get it)"
                    } else {
                        " (protected: only runs at protected refs get it)"
                    };
                    eprintln!(
                        "secret `{name}` set{}{words}",
                        scope_words(pipeline.as_deref())
                    );
                    exit::OK
                })
        }
        SecretsAction::List { json } => backend
            .list(kind)
            .map(|entries| print_entries(&entries, *json, "no secrets")),
        SecretsAction::Rm { name, pipeline } => {
            backend.remove(kind, pipeline.as_deref(), name).map(removed)
        }
    })
}
