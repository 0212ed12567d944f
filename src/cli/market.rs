//! `gantry marketplace ...` and `gantry connection ...`: finding published resources and
//! connecting applications to them, in the data dir or on a server (`--server`). Only
//! `connection env` and `connection binding` print or write secret values.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use chrono::Utc;
use reqwest::Method;
use serde_json::{Value, json};

use super::remote::{Client, Failure, report, wait};
use super::{exit, open_store};
use crate::marketplace::binding::{self, Format};
use crate::marketplace::{
    self, ConnectionState, Filter, MarketError, NewConnection, Resolved, ResourceSummary,
    ResourceView, category_name,
};
use crate::store::{ConnectionRecord, Store};

#[derive(Debug, clap::Args)]
pub struct MarketArgs {
    #[command(subcommand)]
    pub action: MarketAction,
}

#[derive(Debug, clap::Subcommand)]
pub enum MarketAction {
    /// List published resources
    List {
        /// A category (database, storage, ...) or a kind (postgresql, s3, ...)
        #[arg(long = "type", value_name = "TYPE")]
        kind: Option<String>,
        #[arg(long)]
        tag: Option<String>,
        /// Text in the name, description, kind or tags
        #[arg(long)]
        search: Option<String>,
        /// Unpublished resources too
        #[arg(long)]
        all: bool,
        #[arg(long)]
        json: bool,
    },
    /// Show a resource: versions, environments and credential keys (never secret values)
    Show {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Unpublish a resource, or one of its environments; its versions are kept
    Unpublish {
        name: String,
        #[arg(long, value_name = "ENV")]
        env: Option<String>,
    },
    /// Mark a resource deprecated (it stays listed and connectable), or take the mark back
    Deprecate {
        name: String,
        /// Why, for whoever finds it
        #[arg(long, required_unless_present = "undo")]
        reason: Option<String>,
        /// Take the mark back
        #[arg(long, conflicts_with = "reason")]
        undo: bool,
    },
}

#[derive(Debug, clap::Args)]
pub struct ConnectionArgs {
    #[command(subcommand)]
    pub action: ConnectionAction,
}

#[derive(Debug, clap::Subcommand)]
pub enum ConnectionAction {
    /// Connect to a resource's environment
    #[command(after_help = "\
A credential key is handed over as <CONNECTION>_<KEY> upper-cased (connection orders-db, key
DB_HOST: ORDERS_DB_DB_HOST) unless --map names another variable. --version takes a version number
(3: exactly that one) or a semver requirement on the publisher's version (^1.2); without it the
connection follows the newest version that has its environment.

Example: gantry connection create orders --resource orders-db --env dev --map DB_PASSWORD=PGPASSWORD")]
    Create {
        name: String,
        #[arg(long)]
        resource: String,
        #[arg(long = "env", value_name = "ENV")]
        environment: String,
        #[arg(long, value_name = "REQ")]
        version: Option<String>,
        /// Credential key to environment variable name (repeatable)
        #[arg(long = "map", value_name = "KEY=VAR", value_parser = super::key_value)]
        map: Vec<(String, String)>,
        /// Who uses it: an application's name
        #[arg(long)]
        consumer: Option<String>,
    },
    /// List connections
    List {
        #[arg(long)]
        json: bool,
    },
    /// Show a connection and what it resolves to now (secret values left out)
    Show {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Remove a connection
    Rm { name: String },
    /// Print a connection's credentials, secret values included
    #[command(after_help = "Example: eval \"$(gantry connection env orders)\"")]
    Env {
        name: String,
        /// shell (export lines), dotenv or json
        #[arg(long, default_value = "shell", value_parser = ["shell", "dotenv", "json"])]
        format: String,
    },
    /// Write a connection's credentials as a Service Binding directory (servicebinding.io)
    #[command(after_help = "\
Writes DIR/NAME/type, DIR/NAME/provider and one file per credential, named by its well-known
name when Gantry recognises its key (DB_HOST: host, DB_PASSWORD: password, ...), else by the key.
The folder is 0700 and its files 0600; an earlier binding of the same name is replaced whole.")]
    Binding {
        name: String,
        #[arg(long, value_name = "DIR")]
        dir: std::path::PathBuf,
    },
}

/// Where the marketplace is: the data dir's store, or a server.
enum Backend<'a> {
    Store(Store),
    Server(&'a Client),
}

fn market_failure(e: MarketError) -> Failure {
    Failure {
        code: match e {
            MarketError::Store(_) => exit::FAILURE,
            _ => exit::USAGE,
        },
        message: e.to_string(),
    }
}

/// The API path of a named resource or connection; a name that cannot be one is refused here
/// (it would not be found anyway).
fn named(base: &str, what: &'static str, name: &str) -> Result<String, Failure> {
    if marketplace::valid_name(name) {
        return Ok(format!("{base}/{name}"));
    }
    Err(market_failure(MarketError::BadName {
        what,
        name: name.to_string(),
    }))
}

const RESOURCES: &str = "/api/v1/marketplace/resources";
const CONNECTIONS: &str = "/api/v1/connections";

impl Backend<'_> {
    fn open<'a>(data_dir: &Path, client: Option<&'a Client>) -> Option<Backend<'a>> {
        match client {
            Some(c) => Some(Backend::Server(c)),
            None => open_store(data_dir).map(Backend::Store),
        }
    }

    fn list(&self, filter: &Filter) -> Result<Vec<ResourceSummary>, Failure> {
        match self {
            Backend::Store(s) => marketplace::summaries(s, filter).map_err(market_failure),
            Backend::Server(c) => {
                let mut query = Vec::new();
                for (k, v) in [
                    ("type", &filter.kind),
                    ("tag", &filter.tag),
                    ("search", &filter.search),
                ] {
                    if let Some(v) = v {
                        query.push((k, v.clone()));
                    }
                }
                if filter.all {
                    query.push(("all", "true".to_string()));
                }
                let body: Value = wait(c.call(Method::GET, RESOURCES, &query, None))?;
                serde_json::from_value(body["resources"].clone()).map_err(|e| Failure {
                    message: format!("unexpected resource list: {e}"),
                    code: exit::FAILURE,
                })
            }
        }
    }

    fn show(&self, name: &str) -> Result<ResourceView, Failure> {
        match self {
            Backend::Store(s) => marketplace::show(s, name).map_err(market_failure),
            Backend::Server(c) => {
                wait(c.call(Method::GET, &named(RESOURCES, "resource", name)?, &[], None))
            }
        }
    }

    fn unpublish(&self, name: &str, env: Option<&str>) -> Result<ResourceSummary, Failure> {
        match self {
            Backend::Store(s) => marketplace::unpublish(s, name, env, Utc::now())
                .and_then(|r| marketplace::summary(s, r))
                .map_err(market_failure),
            Backend::Server(c) => {
                let query: Vec<(&str, String)> =
                    env.map(|e| ("env", e.to_string())).into_iter().collect();
                wait(c.call(
                    Method::DELETE,
                    &named(RESOURCES, "resource", name)?,
                    &query,
                    None,
                ))
            }
        }
    }

    fn deprecate(&self, name: &str, reason: Option<&str>) -> Result<ResourceSummary, Failure> {
        match self {
            Backend::Store(s) => marketplace::deprecate(s, name, reason, Utc::now())
                .and_then(|r| marketplace::summary(s, r))
                .map_err(market_failure),
            Backend::Server(c) => {
                let path = format!("{}/deprecate", named(RESOURCES, "resource", name)?);
                wait(c.call(Method::POST, &path, &[], Some(&json!({ "reason": reason }))))
            }
        }
    }

    fn create(&self, new: NewConnection) -> Result<Resolved, Failure> {
        match self {
            Backend::Store(s) => {
                marketplace::create_connection(s, new, Utc::now()).map_err(market_failure)
            }
            Backend::Server(c) => {
                let body = json!({
                    "name": new.name, "resource": new.resource, "environment": new.environment,
                    "version": new.version, "consumer": new.consumer, "map": new.mapping,
                });
                wait(c.call(Method::POST, CONNECTIONS, &[], Some(&body)))
            }
        }
    }

    fn connections(&self) -> Result<Vec<ConnectionRecord>, Failure> {
        match self {
            Backend::Store(s) => s.list_connections().map_err(|e| market_failure(e.into())),
            Backend::Server(c) => {
                let body: Value = wait(c.call(Method::GET, CONNECTIONS, &[], None))?;
                serde_json::from_value(body["connections"].clone()).map_err(|e| Failure {
                    message: format!("unexpected connection list: {e}"),
                    code: exit::FAILURE,
                })
            }
        }
    }

    fn connection(&self, name: &str) -> Result<ConnectionState, Failure> {
        match self {
            Backend::Store(s) => marketplace::state(s, name, Utc::now()).map_err(market_failure),
            Backend::Server(c) => wait(c.call(
                Method::GET,
                &named(CONNECTIONS, "connection", name)?,
                &[],
                None,
            )),
        }
    }

    fn remove(&self, name: &str) -> Result<(), Failure> {
        match self {
            Backend::Store(s) => marketplace::remove_connection(s, name).map_err(market_failure),
            Backend::Server(c) => wait(c.delete(&named(CONNECTIONS, "connection", name)?)),
        }
    }

    /// The connection resolved with its secret values.
    fn credentials(&self, name: &str) -> Result<Resolved, Failure> {
        match self {
            Backend::Store(s) => {
                marketplace::resolve(s, name, true, Utc::now()).map_err(market_failure)
            }
            Backend::Server(c) => {
                let path = format!("{}/credentials", named(CONNECTIONS, "connection", name)?);
                wait(c.call(Method::GET, &path, &[], None))
            }
        }
    }
}

fn print_json<T: serde::Serialize>(value: &T) -> u8 {
    match serde_json::to_string_pretty(value) {
        Ok(text) => {
            println!("{text}");
            exit::OK
        }
        Err(e) => {
            eprintln!("gantry: cannot print JSON: {e}");
            exit::FAILURE
        }
    }
}

/// A resource's type in words: its category, and its kind when it has one.
fn type_of(category: crate::spec::model::Category, kind: Option<&str>) -> String {
    match kind {
        Some(k) => format!("{}/{k}", category_name(category)),
        None => category_name(category).to_string(),
    }
}

fn or_none(items: &[String]) -> String {
    if items.is_empty() {
        "-".to_string()
    } else {
        items.join(",")
    }
}

pub fn marketplace(data_dir: &Path, client: Option<&Client>, args: &MarketArgs) -> u8 {
    let Some(backend) = Backend::open(data_dir, client) else {
        return exit::USAGE;
    };
    report(match &args.action {
        MarketAction::List {
            kind,
            tag,
            search,
            all,
            json,
        } => {
            let filter = Filter {
                kind: kind.clone(),
                tag: tag.clone(),
                search: search.clone(),
                all: *all,
            };
            backend.list(&filter).map(|items| {
                if *json {
                    return print_json(&items);
                }
                if items.is_empty() {
                    println!(
                        "no resources published{}",
                        if kind.is_some() || tag.is_some() || search.is_some() {
                            " that match"
                        } else {
                            ""
                        }
                    );
                    return exit::OK;
                }
                print_resources(&items);
                exit::OK
            })
        }
        MarketAction::Show { name, json } => backend.show(name).map(|view| {
            if *json {
                return print_json(&view);
            }
            print_resource(&view);
            exit::OK
        }),
        MarketAction::Unpublish { name, env } => backend.unpublish(name, env.as_deref()).map(|r| {
            match env {
                Some(e) => println!(
                    "unpublished environment {e} of {} (versions kept; environments left: {})",
                    r.record.name,
                    or_none(&r.environments)
                ),
                None => println!(
                    "unpublished {} (its {} version(s) kept)",
                    r.record.name, r.record.latest
                ),
            }
            exit::OK
        }),
        MarketAction::Deprecate { name, reason, undo } => {
            let reason = if *undo { None } else { reason.as_deref() };
            backend.deprecate(name, reason).map(|r| {
                match &r.record.deprecated {
                    Some(d) => println!("{} is deprecated: {}", r.record.name, d.reason),
                    None => println!("{} is no longer deprecated", r.record.name),
                }
                exit::OK
            })
        }
    })
}

fn print_resources(items: &[ResourceSummary]) {
    let rows: Vec<[String; 6]> = items
        .iter()
        .map(|s| {
            let r = &s.record;
            let mut note = r.description.clone().unwrap_or_default();
            if let Some(d) = &r.deprecated {
                note = format!("DEPRECATED ({}) {note}", d.reason);
            }
            if r.unpublished_at.is_some() {
                note = format!("UNPUBLISHED {note}");
            }
            [
                r.name.clone(),
                type_of(r.category, r.kind.as_deref()),
                r.latest.to_string(),
                or_none(&s.environments),
                or_none(&r.tags),
                note.trim_end().to_string(),
            ]
        })
        .collect();
    print_table(
        [
            "NAME",
            "TYPE",
            "VERSION",
            "ENVIRONMENTS",
            "TAGS",
            "DESCRIPTION",
        ],
        &rows,
    );
}

/// Columns padded to their widest cell; the last one as it is.
fn print_table<const N: usize>(header: [&str; N], rows: &[[String; N]]) {
    let mut widths = header.map(str::len);
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == N {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<width$}  ", width = widths[i]));
            }
        }
        println!("{}", out.trim_end());
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

fn print_resource(view: &ResourceView) {
    let r = &view.record;
    println!(
        "{}  ({})  version {}",
        r.name,
        type_of(r.category, r.kind.as_deref()),
        r.latest
    );
    if let Some(d) = &r.description {
        println!("  {d}");
    }
    println!("  owner:        {}/{}", r.owner.source, r.owner.pipeline);
    println!("  tags:         {}", or_none(&r.tags));
    println!("  environments: {}", or_none(&view.environments));
    if let Some(d) = &r.deprecated {
        println!(
            "  deprecated:   {} (since {})",
            d.reason,
            d.at.format("%Y-%m-%d %H:%M UTC")
        );
    }
    if let Some(at) = r.unpublished_at {
        println!("  unpublished:  {}", at.format("%Y-%m-%d %H:%M UTC"));
    }
    for (env, at) in &r.withdrawn {
        println!(
            "  unpublished:  environment {env} ({})",
            at.format("%Y-%m-%d %H:%M UTC")
        );
    }
    if let Some(newest) = view.versions.first() {
        if !newest.properties.is_empty() {
            println!("  properties:");
            for (k, v) in &newest.properties {
                println!("    {k} = {v}");
            }
        }
        for (env, creds) in &newest.environments {
            let keys: Vec<String> = creds
                .iter()
                .map(|c| {
                    if c.secret {
                        format!("{} (secret)", c.key)
                    } else {
                        c.key.clone()
                    }
                })
                .collect();
            println!("  credentials ({env}): {}", keys.join(", "));
        }
    }
    println!("versions:");
    for v in &view.versions {
        let p = &v.provenance;
        let commit = p
            .commit
            .as_deref()
            .map(|c| format!(" at {}", &c[..c.len().min(12)]))
            .unwrap_or_default();
        let envs: Vec<String> = v.environments.keys().cloned().collect();
        println!(
            "  {:>3}  {:<10} {}  run #{} ({}{commit}), environments {}",
            v.number,
            v.semver.as_deref().unwrap_or("-"),
            p.published_at.format("%Y-%m-%d %H:%M UTC"),
            p.run_number,
            p.run_id,
            or_none(&envs)
        );
    }
}

pub fn connection(data_dir: &Path, client: Option<&Client>, args: &ConnectionArgs) -> u8 {
    let Some(backend) = Backend::open(data_dir, client) else {
        return exit::USAGE;
    };
    report(match &args.action {
        ConnectionAction::Create {
            name,
            resource,
            environment,
            version,
            map,
            consumer,
        } => {
            let new = NewConnection {
                name: name.clone(),
                consumer: consumer.clone(),
                resource: resource.clone(),
                environment: environment.clone(),
                version: version.clone(),
                mapping: map.iter().cloned().collect::<BTreeMap<_, _>>(),
            };
            backend.create(new).map(|r| {
                println!(
                    "connection {} → {} ({}), version {}",
                    r.connection.name,
                    r.connection.resource,
                    r.connection.environment,
                    r.resolved.version
                );
                print_bound(&r.resolved);
                println!(
                    "print them with: gantry connection env {}",
                    r.connection.name
                );
                exit::OK
            })
        }
        ConnectionAction::List { json } => backend.connections().map(|list| {
            if *json {
                return print_json(&list);
            }
            if list.is_empty() {
                println!("no connections");
                return exit::OK;
            }
            let rows: Vec<[String; 6]> = list
                .iter()
                .map(|c| {
                    [
                        c.name.clone(),
                        c.resource.clone(),
                        c.environment.clone(),
                        c.version.clone().unwrap_or_else(|| "latest".into()),
                        c.resolved_version
                            .map(|v| v.to_string())
                            .unwrap_or_else(|| "-".into()),
                        c.consumer.clone().unwrap_or_default(),
                    ]
                })
                .collect();
            print_table(
                ["NAME", "RESOURCE", "ENV", "WANTS", "RESOLVED", "CONSUMER"],
                &rows,
            );
            exit::OK
        }),
        ConnectionAction::Show { name, json } => backend.connection(name).map(|s| {
            if *json {
                return print_json(&s);
            }
            let c = &s.connection;
            println!("connection {} → {} ({})", c.name, c.resource, c.environment);
            if let Some(consumer) = &c.consumer {
                println!("  consumer: {consumer}");
            }
            println!(
                "  wants:    {}",
                c.version.as_deref().unwrap_or("the newest version")
            );
            match (&s.resolved, &s.error) {
                (Some(r), _) => {
                    let semver = r
                        .semver
                        .as_deref()
                        .map(|v| format!(" ({v})"))
                        .unwrap_or_default();
                    println!("  resolves to version {}{semver}", r.version);
                    if let Some(d) = &r.resource.deprecated {
                        println!("  the resource is deprecated: {}", d.reason);
                    }
                    print_bound(r);
                }
                (None, Some(e)) => println!("  does not resolve: {e}"),
                (None, None) => {}
            }
            exit::OK
        }),
        ConnectionAction::Rm { name } => backend.remove(name).map(|()| {
            println!("removed connection {name}");
            exit::OK
        }),
        ConnectionAction::Env { name, format } => backend.credentials(name).map(|r| {
            let format = Format::parse(format).unwrap_or(Format::Shell);
            print!("{}", binding::render_env(&r, format));
            exit::OK
        }),
        ConnectionAction::Binding { name, dir } => backend
            .credentials(name)
            .and_then(|r| write_binding(&r, dir)),
    })
}

fn print_bound(r: &marketplace::Resolution) {
    for b in &r.credentials {
        let secret = if b.secret { " (secret)" } else { "" };
        println!("  ${:<28} {}{secret}", b.var, b.key);
    }
}

/// Writes the binding folder `dir/<connection>` whole: into a fresh folder beside it, then
/// renamed over the old one, so a reader never sees half of it.
fn write_binding(r: &Resolved, dir: &Path) -> Result<u8, Failure> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let fail = |what: String, e: std::io::Error| Failure {
        message: format!("{what}: {e}"),
        code: exit::FAILURE,
    };
    let name = &r.connection.name;
    let target = dir.join(name);
    std::fs::create_dir_all(dir)
        .map_err(|e| fail(format!("cannot create {}", dir.display()), e))?;
    let fresh = dir.join(format!(".{name}.new-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&fresh);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&fresh)
        .map_err(|e| fail(format!("cannot create {}", fresh.display()), e))?;
    let (files, skipped) = binding::binding_files(r);
    for (file, value) in &files {
        let path = fresh.join(file);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| fail(format!("cannot write {}", path.display()), e))?;
        f.write_all(value.as_bytes())
            .map_err(|e| fail(format!("cannot write {}", path.display()), e))?;
    }
    let old = dir.join(format!(".{name}.old-{}", std::process::id()));
    let had_old = target.exists();
    if had_old {
        std::fs::rename(&target, &old)
            .map_err(|e| fail(format!("cannot move the old {} aside", target.display()), e))?;
    }
    std::fs::rename(&fresh, &target)
        .map_err(|e| fail(format!("cannot put {} in place", target.display()), e))?;
    if had_old {
        let _ = std::fs::remove_dir_all(&old);
    }
    let kind = files.first().map(|(_, v)| v.as_str()).unwrap_or("");
    println!(
        "wrote binding {name} to {} (type {kind}, {} credential file(s))",
        target.display(),
        files.len().saturating_sub(2)
    );
    for key in skipped {
        eprintln!(
            "gantry: warning: credential key `{key}` cannot be a file name; left out of the binding"
        );
    }
    Ok(exit::OK)
}
