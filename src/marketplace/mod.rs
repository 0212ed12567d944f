//! The internal marketplace: resources published by pipelines (connection details and
//! per-environment credentials), found by application developers, who create connections that
//! hand their applications the credentials.
//!
//! The rules live here; the records and their sealing in `store` (`store/marketplace.rs`):
//! - A run's `gantry/marketplace-publish@v1` step makes a new version of its resource when the
//!   publish changed something (description, tags, properties, the credentials of the
//!   environments it names), and is recorded as matching the newest version when it did not.
//!   Versions are numbered 1, 2, 3, ...; the publisher's own version is kept beside the number
//!   when it is semver. A publish names some environments: the others carry over from the
//!   version before, so a resource published for `dev` by one run and `prod` by another has
//!   both.
//! - A resource belongs to the pipeline that first published it; another pipeline publishing
//!   the same name is refused.
//! - Unpublishing (a resource, or one environment) keeps every version; a connection no longer
//!   resolves to what was unpublished until it is published again. A deprecated resource stays
//!   listed, with its reason.
//! - A connection names a resource, one environment and a version constraint (a version number
//!   or a semver requirement); it resolves to the newest version within the constraint that has
//!   its environment, so it follows republishing, and records which version that was.

pub mod binding;

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::executor::Publication;
use crate::spec::model::Category;
use crate::store::{
    ConnectionRecord, CredentialValue, Deprecation, Provenance, PublishedAs, ResourceOwner,
    ResourceRecord, ResourceVersion, RunRecord, Store, StoreError,
};

/// The longest resource or connection name.
pub const MAX_NAME: usize = 100;

#[derive(Debug, thiserror::Error)]
pub enum MarketError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("no resource named `{0}` in the marketplace (`gantry marketplace list` shows them)")]
    NoSuchResource(String),
    #[error("no connection named `{0}` (`gantry connection list` shows them)")]
    NoSuchConnection(String),
    #[error(
        "a connection named `{0}` exists already; remove it first (`gantry connection rm {0}`)"
    )]
    ConnectionExists(String),
    #[error(
        "`{name}` is not a valid {what} name: 1 to {MAX_NAME} letters, digits, `.`, `_` or `-`, starting with a letter or digit"
    )]
    BadName { what: &'static str, name: String },
    #[error(
        "resource `{resource}` is published by pipeline {owner}; pipeline {by} may not publish under its name"
    )]
    NotOwner {
        resource: String,
        owner: String,
        by: String,
    },
    /// An earlier attempt of the same publish was refused, for this reason.
    #[error("{0}")]
    Refused(String),
    #[error("resource `{0}` was unpublished; publish it again to connect to it")]
    Unpublished(String),
    #[error("environment `{env}` of resource `{resource}` was unpublished")]
    Withdrawn { resource: String, env: String },
    #[error("resource `{resource}` has no environment `{env}` (it has: {have})")]
    NoSuchEnvironment {
        resource: String,
        env: String,
        have: String,
    },
    #[error(
        "`{0}` is not a version constraint: give a version number (`3`) or a semver requirement (`^1.2`, `>=1.0, <2`)"
    )]
    BadVersionReq(String),
    #[error("no version of resource `{resource}` matches `{req}` with environment `{env}`")]
    NoMatch {
        resource: String,
        req: String,
        env: String,
    },
    #[error("`{key}` is not a credential key of resource `{resource}` (its keys: {have})")]
    UnknownKey {
        resource: String,
        key: String,
        have: String,
    },
    #[error(
        "`{0}` is not an environment variable name: letters, digits and `_`, not starting with a digit"
    )]
    BadVarName(String),
    #[error("credential keys `{first}` and `{second}` would both be ${var}; map one elsewhere")]
    SameVar {
        first: String,
        second: String,
        var: String,
    },
}

/// Whether `name` may name a resource or a connection.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn check_name(what: &'static str, name: &str) -> Result<(), MarketError> {
    if valid_name(name) {
        Ok(())
    } else {
        Err(MarketError::BadName {
            what,
            name: name.to_string(),
        })
    }
}

/// The name a category has in the API, the CLI and the index.
pub fn category_name(c: Category) -> &'static str {
    Category::ALL
        .iter()
        .find(|(_, k)| *k == c)
        .map(|(n, _)| *n)
        .unwrap_or("other")
}

/// The publisher's version when it reads as semver (a leading `v` allowed).
fn semver_of(version: &str) -> Option<String> {
    let v = version.trim();
    let v = v.strip_prefix('v').unwrap_or(v);
    semver::Version::parse(v).ok().map(|v| v.to_string())
}

/// The run a publish came from.
#[derive(Debug, Clone)]
pub struct Origin {
    pub source: String,
    pub pipeline: String,
    pub run_id: String,
    pub run_number: u64,
    pub commit: Option<String>,
    pub git_ref: Option<String>,
}

impl Origin {
    pub fn of(run: &RunRecord) -> Origin {
        Origin {
            source: run.source.clone(),
            pipeline: run.pipeline.clone(),
            run_id: run.id.clone(),
            run_number: run.number,
            commit: run.git.as_ref().map(|g| g.sha.clone()),
            git_ref: run.git.as_ref().map(|g| g.reference.clone()),
        }
    }
}

/// Takes what a run's publish step resolved into the marketplace: a new version when it changed
/// something, else the newest version is recorded as what the step published. Done once per run
/// and step: a second call answers what the first did.
pub fn publish(
    store: &Store,
    origin: &Origin,
    step: &str,
    publication: &Publication,
    now: DateTime<Utc>,
) -> Result<PublishedAs, MarketError> {
    if let Some((_, done)) = store
        .published_as(&origin.run_id)?
        .into_iter()
        .find(|(s, _)| s == step)
    {
        return match done.error {
            Some(e) => Err(MarketError::Refused(e)),
            None => Ok(done),
        };
    }
    let name = publication.name.trim().to_string();
    let refuse = |e: MarketError| -> Result<PublishedAs, MarketError> {
        store.put_published_as(
            &origin.run_id,
            step,
            &PublishedAs {
                resource: name.clone(),
                version: 0,
                new: false,
                error: Some(e.to_string()),
            },
        )?;
        Err(e)
    };
    if let Err(e) = check_name("resource", &name) {
        return refuse(e);
    }
    let owner = ResourceOwner {
        source: origin.source.clone(),
        pipeline: origin.pipeline.clone(),
    };
    let existing = store.get_resource(&name)?;
    if let Some(r) = &existing
        && r.owner != owner
    {
        return refuse(MarketError::NotOwner {
            resource: name.clone(),
            owner: format!("{}/{}", r.owner.source, r.owner.pipeline),
            by: format!("{}/{}", owner.source, owner.pipeline),
        });
    }
    let previous = match &existing {
        Some(r) => store.resource_version(&name, r.latest, true)?,
        None => None,
    };
    let mut environments = previous
        .as_ref()
        .map(|p| p.environments.clone())
        .unwrap_or_default();
    let mut named = Vec::new();
    for set in &publication.credentials {
        for env in &set.environments {
            let creds = environments.entry(env.clone()).or_insert_with(Vec::new);
            if !named.contains(env) {
                creds.clear();
                named.push(env.clone());
            }
            for p in &set.parameters {
                let value = CredentialValue {
                    key: p.key.clone(),
                    secret: p.is_secret,
                    value: Some(p.value.clone()),
                };
                match creds.iter_mut().find(|c| c.key == p.key) {
                    Some(c) => *c = value,
                    None => creds.push(value),
                }
            }
        }
    }
    let semver = semver_of(&publication.version);
    let changed = match (&existing, &previous) {
        (Some(r), Some(p)) => {
            r.category != publication.category
                || r.unpublished_at.is_some()
                || named.iter().any(|e| r.withdrawn.contains_key(e))
                || p.semver != semver
                || p.description != publication.description
                || p.tags != publication.tags
                || p.properties != publication.properties
                || p.environments != environments
        }
        _ => true,
    };
    if !changed {
        let latest = existing.as_ref().map_or(0, |r| r.latest);
        let done = PublishedAs {
            resource: name,
            version: latest,
            new: false,
            error: None,
        };
        store.put_published_as(&origin.run_id, step, &done)?;
        return Ok(done);
    }
    let number = existing.as_ref().map_or(1, |r| r.latest + 1);
    let mut record = existing.unwrap_or_else(|| ResourceRecord {
        name: name.clone(),
        category: publication.category,
        kind: None,
        description: None,
        tags: Vec::new(),
        owner,
        latest: 0,
        created_at: now,
        updated_at: now,
        deprecated: None,
        unpublished_at: None,
        withdrawn: BTreeMap::new(),
    });
    record.category = publication.category;
    record.kind = publication
        .properties
        .get("type")
        .filter(|t| !t.trim().is_empty())
        .map(|t| t.trim().to_ascii_lowercase());
    record.description = publication.description.clone();
    record.tags = publication.tags.clone();
    record.latest = number;
    record.updated_at = now;
    record.unpublished_at = None;
    for env in &named {
        record.withdrawn.remove(env);
    }
    let version = ResourceVersion {
        number,
        semver,
        provenance: Provenance {
            run_id: origin.run_id.clone(),
            run_number: origin.run_number,
            step: step.to_string(),
            commit: origin.commit.clone(),
            git_ref: origin.git_ref.clone(),
            published_at: now,
        },
        description: publication.description.clone(),
        tags: publication.tags.clone(),
        properties: publication.properties.clone(),
        environments,
    };
    store.put_resource_version(&record, &version)?;
    Ok(PublishedAs {
        resource: name,
        version: number,
        new: true,
        error: None,
    })
}

/// A publish step of a run, and what became of its publication.
pub type StepPublished = (String, Result<PublishedAs, MarketError>);

/// Publishes what an ended run's publish steps resolved (each once, see [`publish`]); what
/// could not be published is returned with its step.
pub fn publish_run(
    store: &Store,
    run: &RunRecord,
    now: DateTime<Utc>,
) -> Result<Vec<StepPublished>, StoreError> {
    if run.status.is_active() {
        return Ok(Vec::new());
    }
    let origin = Origin::of(run);
    let mut out = Vec::new();
    for (step, publication) in store.publications(&run.id, true)? {
        let done = publish(store, &origin, &step, &publication, now);
        out.push((step, done));
    }
    Ok(out)
}

/// Publishes what ended runs published but the marketplace does not have yet (a crash between
/// a run's end and its publishing); run at start. Returns what failed, by run and step.
pub fn catch_up(store: &Store, now: DateTime<Utc>) -> Result<Vec<String>, StoreError> {
    let mut failed = Vec::new();
    for id in store.runs_with_unlisted_publications()? {
        let Some(run) = store.get_run(&id)? else {
            continue;
        };
        for (step, done) in publish_run(store, &run, now)? {
            if let Err(e) = done {
                failed.push(format!("run {} step {step}: {e}", run.id));
            }
        }
    }
    Ok(failed)
}

/// What one of a run's publish steps published, as its API answer and its PR comment show it:
/// the resource, the version it made or matched (or why it was refused), environments,
/// non-secret properties and credential keys, never a value.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct RunPublication {
    pub step: String,
    pub resource: String,
    /// `None` until the marketplace took it, or when it refused it.
    pub version: Option<u64>,
    /// Whether the publish made that version (false: it changed nothing).
    pub new_version: Option<bool>,
    pub error: Option<String>,
    pub publisher_version: String,
    pub category: Category,
    /// In the publisher's order, each once.
    pub environments: Vec<String>,
    pub properties: BTreeMap<String, String>,
    pub credentials: Vec<CredentialKey>,
}

/// A credential's key, and whether its value is secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct CredentialKey {
    pub key: String,
    pub secret: bool,
}

/// What a run's publish steps published.
pub fn run_publications(store: &Store, run_id: &str) -> Result<Vec<RunPublication>, StoreError> {
    let made: BTreeMap<String, PublishedAs> = store.published_as(run_id)?.into_iter().collect();
    let mut out = Vec::new();
    for (step, p) in store.publications(run_id, false)? {
        let mut environments: Vec<String> = Vec::new();
        for e in p.credentials.iter().flat_map(|c| &c.environments) {
            if !environments.contains(e) {
                environments.push(e.clone());
            }
        }
        let mut credentials: Vec<CredentialKey> = Vec::new();
        for k in p.credentials.iter().flat_map(|c| &c.parameters) {
            let key = CredentialKey {
                key: k.key.clone(),
                secret: k.is_secret,
            };
            if !credentials.contains(&key) {
                credentials.push(key);
            }
        }
        let done = made.get(&step);
        let taken = done.filter(|d| d.error.is_none());
        out.push(RunPublication {
            resource: p.name,
            version: taken.map(|d| d.version),
            new_version: taken.map(|d| d.new),
            error: done.and_then(|d| d.error.clone()),
            publisher_version: p.version,
            category: p.category,
            environments,
            properties: p.properties,
            credentials,
            step,
        });
    }
    Ok(out)
}

/// What to find resources by; every given part must match.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// A category (`database`) or a kind (`postgresql`).
    pub kind: Option<String>,
    pub tag: Option<String>,
    /// Text in the name, description, kind or tags, in any case.
    pub search: Option<String>,
    /// Include unpublished resources.
    pub all: bool,
}

/// The resources that match, by name.
pub fn list(store: &Store, filter: &Filter) -> Result<Vec<ResourceRecord>, MarketError> {
    let mut names: Option<Vec<String>> = None;
    let mut narrow = |found: Vec<String>| {
        names = Some(match names.take() {
            None => found,
            Some(have) => have.into_iter().filter(|n| found.contains(n)).collect(),
        });
    };
    if let Some(kind) = &filter.kind {
        narrow(store.resource_names_by("type", &kind.to_ascii_lowercase())?);
    }
    if let Some(tag) = &filter.tag {
        narrow(store.resource_names_by("tag", tag)?);
    }
    let records = match names {
        Some(names) => {
            let mut out = Vec::with_capacity(names.len());
            for n in names {
                out.extend(store.get_resource(&n)?);
            }
            out
        }
        None => store.list_resources()?,
    };
    let needle = filter.search.as_deref().map(str::to_lowercase);
    Ok(records
        .into_iter()
        .filter(|r| filter.all || r.unpublished_at.is_none())
        .filter(|r| match &needle {
            None => true,
            Some(n) => {
                r.name.to_lowercase().contains(n)
                    || r.description
                        .as_deref()
                        .is_some_and(|d| d.to_lowercase().contains(n))
                    || r.kind.as_deref().is_some_and(|k| k.contains(n))
                    || r.tags.iter().any(|t| t.to_lowercase().contains(n))
            }
        })
        .collect())
}

/// A resource as a list shows it: its record and the environments it has now.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[schemars(rename = "Resource")]
pub struct ResourceSummary {
    #[serde(flatten)]
    pub record: ResourceRecord,
    /// The newest version's environments, without the unpublished ones.
    pub environments: Vec<String>,
}

/// The summary of a resource (one read of its newest version).
pub fn summary(store: &Store, record: ResourceRecord) -> Result<ResourceSummary, MarketError> {
    let environments = store
        .resource_version(&record.name, record.latest, false)?
        .map(|v| {
            v.environments
                .into_keys()
                .filter(|e| !record.withdrawn.contains_key(e))
                .collect()
        })
        .unwrap_or_default();
    Ok(ResourceSummary {
        record,
        environments,
    })
}

/// `list`, as summaries.
pub fn summaries(store: &Store, filter: &Filter) -> Result<Vec<ResourceSummary>, MarketError> {
    list(store, filter)?
        .into_iter()
        .map(|r| summary(store, r))
        .collect()
}

/// A resource with its versions, newest first; secret values are never in it.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[schemars(rename = "ResourceDetail")]
pub struct ResourceView {
    #[serde(flatten)]
    pub record: ResourceRecord,
    /// The environments the newest version has, without the unpublished ones.
    pub environments: Vec<String>,
    pub versions: Vec<ResourceVersion>,
}

pub fn show(store: &Store, name: &str) -> Result<ResourceView, MarketError> {
    let record = store
        .get_resource(name)?
        .ok_or_else(|| MarketError::NoSuchResource(name.to_string()))?;
    let mut versions = store.resource_versions(name, false)?;
    versions.reverse();
    let environments = versions
        .first()
        .map(|v| {
            v.environments
                .keys()
                .filter(|e| !record.withdrawn.contains_key(*e))
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    Ok(ResourceView {
        record,
        environments,
        versions,
    })
}

/// Unpublishes a resource, or one of its environments; its versions are kept.
pub fn unpublish(
    store: &Store,
    name: &str,
    env: Option<&str>,
    now: DateTime<Utc>,
) -> Result<ResourceRecord, MarketError> {
    let mut record = store
        .get_resource(name)?
        .ok_or_else(|| MarketError::NoSuchResource(name.to_string()))?;
    match env {
        None => record.unpublished_at = Some(now),
        Some(env) => {
            let latest = store.resource_version(name, record.latest, false)?;
            let have: Vec<String> = latest
                .map(|v| v.environments.into_keys().collect())
                .unwrap_or_default();
            if !have.iter().any(|e| e == env) {
                return Err(MarketError::NoSuchEnvironment {
                    resource: name.to_string(),
                    env: env.to_string(),
                    have: listing(&have),
                });
            }
            record.withdrawn.insert(env.to_string(), now);
        }
    }
    record.updated_at = now;
    store.put_resource(&record)?;
    Ok(record)
}

/// Marks a resource deprecated (it stays listed and connectable), or takes the mark back with
/// `reason: None`.
pub fn deprecate(
    store: &Store,
    name: &str,
    reason: Option<&str>,
    now: DateTime<Utc>,
) -> Result<ResourceRecord, MarketError> {
    let mut record = store
        .get_resource(name)?
        .ok_or_else(|| MarketError::NoSuchResource(name.to_string()))?;
    record.deprecated = reason.map(|r| Deprecation {
        reason: r.to_string(),
        at: now,
    });
    record.updated_at = now;
    store.put_resource(&record)?;
    Ok(record)
}

fn listing(items: &[String]) -> String {
    if items.is_empty() {
        "none".to_string()
    } else {
        items.join(", ")
    }
}

// ---- connections ----------------------------------------------------------------------------

/// Which versions of a resource a connection accepts.
#[derive(Debug, Clone)]
pub enum VersionReq {
    /// The newest.
    Latest,
    /// Exactly this version number.
    Number(u64),
    /// Versions whose publisher's semver matches.
    Semver(semver::VersionReq),
}

impl VersionReq {
    pub fn parse(text: Option<&str>) -> Result<VersionReq, MarketError> {
        let Some(t) = text.map(str::trim).filter(|t| !t.is_empty()) else {
            return Ok(VersionReq::Latest);
        };
        if t == "latest" {
            return Ok(VersionReq::Latest);
        }
        if t.bytes().all(|b| b.is_ascii_digit()) {
            return t
                .parse()
                .map(VersionReq::Number)
                .map_err(|_| MarketError::BadVersionReq(t.to_string()));
        }
        semver::VersionReq::parse(t)
            .map(VersionReq::Semver)
            .map_err(|_| MarketError::BadVersionReq(t.to_string()))
    }

    fn accepts(&self, v: &ResourceVersion) -> bool {
        match self {
            VersionReq::Latest => true,
            VersionReq::Number(n) => v.number == *n,
            VersionReq::Semver(req) => v
                .semver
                .as_deref()
                .and_then(|s| semver::Version::parse(s).ok())
                .is_some_and(|s| req.matches(&s)),
        }
    }
}

/// What a new connection is asked for.
#[derive(Debug, Clone, Default)]
pub struct NewConnection {
    pub name: String,
    pub consumer: Option<String>,
    pub resource: String,
    pub environment: String,
    pub version: Option<String>,
    pub mapping: BTreeMap<String, String>,
}

/// One credential as a connection hands it over.
#[derive(Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[schemars(rename = "BoundCredential")]
pub struct Bound {
    pub key: String,
    /// The environment variable it is handed over as.
    pub var: String,
    pub secret: bool,
    /// `None` for a secret unless revealed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

impl std::fmt::Debug for Bound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bound")
            .field("key", &self.key)
            .field("var", &self.var)
            .field("secret", &self.secret)
            .finish_non_exhaustive()
    }
}

/// A connection with what it resolves to now: the API's answer, and what `binding` renders.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[schemars(rename = "ResolvedConnection")]
pub struct Resolved {
    #[serde(flatten)]
    pub connection: ConnectionRecord,
    pub resolved: Resolution,
}

/// The version a connection resolves to, and the credentials it hands over from it.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Resolution {
    pub version: u64,
    /// The publisher's semver of that version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub semver: Option<String>,
    pub resource: ResourceRef,
    /// The resource's non-secret properties at that version.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
    pub credentials: Vec<Bound>,
}

/// What a connection's answer says of its resource.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ResourceRef {
    pub name: String,
    pub category: Category,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deprecated: Option<Deprecation>,
}

/// Whether `name` is a portable environment variable name.
pub fn valid_var(name: &str) -> bool {
    !name.is_empty()
        && !name.as_bytes()[0].is_ascii_digit()
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// The variable a credential is handed over as by default: `<CONNECTION>_<KEY>`, upper-cased,
/// every character that cannot be in a variable name made `_`.
pub fn default_var(connection: &str, key: &str) -> String {
    format!("{connection}_{key}")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect()
}

/// Creates a connection after checking that it resolves (resource, environment, version, the
/// keys it maps); records the version it resolved to.
pub fn create_connection(
    store: &Store,
    new: NewConnection,
    now: DateTime<Utc>,
) -> Result<Resolved, MarketError> {
    check_name("connection", &new.name)?;
    if store.get_connection(&new.name)?.is_some() {
        return Err(MarketError::ConnectionExists(new.name));
    }
    // What to connect to first: a request for nothing that exists is a 404, whatever else it
    // says.
    if store.get_resource(&new.resource)?.is_none() {
        return Err(MarketError::NoSuchResource(new.resource));
    }
    VersionReq::parse(new.version.as_deref())?;
    for var in new.mapping.values() {
        if !valid_var(var) {
            return Err(MarketError::BadVarName(var.clone()));
        }
    }
    let connection = ConnectionRecord {
        name: new.name,
        consumer: new.consumer.filter(|c| !c.trim().is_empty()),
        resource: new.resource,
        environment: new.environment,
        version: new.version.filter(|v| !v.trim().is_empty()),
        mapping: new.mapping,
        created_at: now,
        resolved_version: None,
        resolved_at: None,
    };
    let resolved = resolve_record(store, connection, false, now)?;
    let credentials = &resolved.resolved.credentials;
    for key in resolved.connection.mapping.keys() {
        if !credentials.iter().any(|b| &b.key == key) {
            let have: Vec<String> = credentials.iter().map(|b| b.key.clone()).collect();
            return Err(MarketError::UnknownKey {
                resource: resolved.connection.resource.clone(),
                key: key.clone(),
                have: listing(&have),
            });
        }
    }
    store.put_connection(&resolved.connection)?;
    Ok(resolved)
}

/// What connection `name` resolves to now; with `reveal`, with the secret values. Records the
/// version when it moved.
pub fn resolve(
    store: &Store,
    name: &str,
    reveal: bool,
    now: DateTime<Utc>,
) -> Result<Resolved, MarketError> {
    let connection = store
        .get_connection(name)?
        .ok_or_else(|| MarketError::NoSuchConnection(name.to_string()))?;
    let before = connection.resolved_version;
    let resolved = resolve_record(store, connection, reveal, now)?;
    if before != resolved.connection.resolved_version {
        store.put_connection(&resolved.connection)?;
    }
    Ok(resolved)
}

fn resolve_record(
    store: &Store,
    mut connection: ConnectionRecord,
    reveal: bool,
    now: DateTime<Utc>,
) -> Result<Resolved, MarketError> {
    let resource = store
        .get_resource(&connection.resource)?
        .ok_or_else(|| MarketError::NoSuchResource(connection.resource.clone()))?;
    if resource.unpublished_at.is_some() {
        return Err(MarketError::Unpublished(resource.name));
    }
    let env = connection.environment.clone();
    if resource.withdrawn.contains_key(&env) {
        return Err(MarketError::Withdrawn {
            resource: resource.name,
            env,
        });
    }
    let req = VersionReq::parse(connection.version.as_deref())?;
    let versions = store.resource_versions(&resource.name, false)?;
    let Some(found) = versions
        .iter()
        .rev()
        .find(|v| req.accepts(v) && v.environments.contains_key(&env))
    else {
        let newest: Vec<String> = versions
            .last()
            .map(|v| v.environments.keys().cloned().collect())
            .unwrap_or_default();
        if !newest.contains(&env) && matches!(req, VersionReq::Latest) {
            return Err(MarketError::NoSuchEnvironment {
                resource: resource.name,
                env,
                have: listing(&newest),
            });
        }
        return Err(MarketError::NoMatch {
            resource: resource.name,
            req: connection
                .version
                .clone()
                .unwrap_or_else(|| "latest".into()),
            env,
        });
    };
    let version = if reveal {
        store
            .resource_version(&resource.name, found.number, true)?
            .unwrap_or_else(|| found.clone())
    } else {
        found.clone()
    };
    let mut credentials = Vec::new();
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    for c in version.environments.get(&env).into_iter().flatten() {
        let var = connection
            .mapping
            .get(&c.key)
            .cloned()
            .unwrap_or_else(|| default_var(&connection.name, &c.key));
        if let Some(first) = seen.insert(var.clone(), c.key.clone()) {
            return Err(MarketError::SameVar {
                first,
                second: c.key.clone(),
                var,
            });
        }
        credentials.push(Bound {
            key: c.key.clone(),
            var,
            secret: c.secret,
            value: c.value.clone(),
        });
    }
    if connection.resolved_version != Some(version.number) {
        connection.resolved_version = Some(version.number);
        connection.resolved_at = Some(now);
    }
    Ok(Resolved {
        connection,
        resolved: Resolution {
            version: version.number,
            semver: version.semver.clone(),
            resource: ResourceRef {
                name: resource.name,
                category: resource.category,
                kind: resource.kind,
                deprecated: resource.deprecated,
            },
            properties: version.properties,
            credentials,
        },
    })
}

/// A connection with what it resolves to now, or why it does not resolve (its resource or
/// environment unpublished, no version within its constraint).
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ConnectionState {
    #[serde(flatten)]
    pub connection: ConnectionRecord,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved: Option<Resolution>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Connection `name` as `gantry connection show` and the API show it: secret values left out.
pub fn state(
    store: &Store,
    name: &str,
    now: DateTime<Utc>,
) -> Result<ConnectionState, MarketError> {
    match resolve(store, name, false, now) {
        Ok(r) => Ok(ConnectionState {
            connection: r.connection,
            resolved: Some(r.resolved),
            error: None,
        }),
        Err(MarketError::Store(e)) => Err(e.into()),
        Err(MarketError::NoSuchConnection(n)) => Err(MarketError::NoSuchConnection(n)),
        Err(e) => {
            let connection = store
                .get_connection(name)?
                .ok_or_else(|| MarketError::NoSuchConnection(name.to_string()))?;
            Ok(ConnectionState {
                connection,
                resolved: None,
                error: Some(e.to_string()),
            })
        }
    }
}

/// Removes a connection.
pub fn remove_connection(store: &Store, name: &str) -> Result<(), MarketError> {
    if store.remove_connection(name)? {
        Ok(())
    } else {
        Err(MarketError::NoSuchConnection(name.to_string()))
    }
}

#[cfg(test)]
mod tests;
