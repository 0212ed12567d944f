//! What a run may receive: the secrets its ref is trusted with, and the pipeline scope its file
//! may use.
//!
//! **Protected refs.** Each watched repository has protected refs (`[[repos]] protected`, globs; a
//! bare name is a branch, default the watched branch, which is always protected). A run at a
//! protected ref gets every secret it declares; a run at any other ref (a feature-branch push, a
//! pull request's head, a fork) gets only secrets set as unprotected, and fails before any step
//! starts when it declares another. Scheduled and manual runs without a ref (before the first
//! sync) run at the watched branch's head; any other run without a ref is not trusted. Local
//! pipelines and `gantry run FILE` are trusted.
//!
//! **Scopes.** A pipeline's own variables and secrets (`source/name`) go to a run only when the
//! file the run was read from is the file the catalog has for that pipeline on the watched branch:
//! a file on a branch cannot claim another pipeline's scope by choosing its `metadata.name`.
//! Otherwise the run sees only global entries.

use std::collections::BTreeMap;

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};

use crate::store::{RunRecord, SecretRelease, Store, StoreError};

/// The protected refs of one repository.
#[derive(Debug, Clone)]
pub struct ProtectedRefs {
    source: String,
    watched: String,
    /// As configured, for messages.
    patterns: Vec<String>,
    set: GlobSet,
}

#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error("protected ref `{pattern}` of `{repo}` is not a valid glob: {error}")]
    Glob {
        repo: String,
        pattern: String,
        error: globset::Error,
    },
}

/// A branch glob stands for `refs/heads/<glob>`; a glob starting with `refs/` names full refs.
fn full_ref(pattern: &str) -> String {
    if pattern.starts_with("refs/") {
        pattern.to_string()
    } else {
        format!("refs/heads/{pattern}")
    }
}

impl ProtectedRefs {
    /// The protected refs of `source`: `patterns`, and always its watched branch. `*` stays
    /// within one path segment (`release/*` covers `release/1.2`, not `release/1/2`; write
    /// `release/**` for that).
    pub fn new(
        source: &str,
        watched_branch: &str,
        patterns: &[String],
    ) -> Result<ProtectedRefs, TrustError> {
        let mut builder = GlobSetBuilder::new();
        for pattern in patterns {
            let glob = GlobBuilder::new(&full_ref(pattern))
                .literal_separator(true)
                .build()
                .map_err(|error| TrustError::Glob {
                    repo: source.to_string(),
                    pattern: pattern.clone(),
                    error,
                })?;
            builder.add(glob);
        }
        let set = builder.build().map_err(|error| TrustError::Glob {
            repo: source.to_string(),
            pattern: patterns.join(", "),
            error,
        })?;
        Ok(ProtectedRefs {
            source: source.to_string(),
            watched: format!("refs/heads/{watched_branch}"),
            patterns: patterns.to_vec(),
            set,
        })
    }

    /// Whether a run at `reference` (a full ref) gets protected secrets.
    pub fn covers(&self, reference: &str) -> bool {
        reference == self.watched || self.set.is_match(reference)
    }

    /// "protected refs of `infra`: main, release/*".
    pub fn describe(&self) -> String {
        let mut listed = self.patterns.clone();
        let branch = self.watched.trim_start_matches("refs/heads/").to_string();
        if !listed.contains(&branch) && !listed.contains(&self.watched) {
            listed.insert(0, branch);
        }
        format!("protected refs of `{}`: {}", self.source, listed.join(", "))
    }
}

/// Which secrets a run is given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Release {
    /// Every secret it declares: a protected ref, or a run Gantry trusts.
    All,
    /// Only secrets set as unprotected: the run is at `reference`, which `rule` does not cover.
    UnprotectedOnly { reference: String, rule: String },
}

impl Release {
    /// The secrets this release lets through.
    pub fn allowed(&self) -> SecretRelease {
        match self {
            Release::All => SecretRelease::Protected,
            Release::UnprotectedOnly { .. } => SecretRelease::Unprotected,
        }
    }

    /// Why `withheld` (declared, set, but protected) are not given, or `None` when nothing was.
    pub fn refusal(&self, withheld: &[String]) -> Option<String> {
        let Release::UnprotectedOnly { reference, rule } = self else {
            return None;
        };
        let first = withheld.first()?;
        let (names, verb) = if withheld.len() == 1 {
            (format!("secret `{first}`"), "is")
        } else {
            let listed: Vec<String> = withheld.iter().map(|n| format!("`{n}`")).collect();
            (format!("secrets {}", listed.join(", ")), "are")
        };
        Some(format!(
            "{names} {verb} protected: runs at `{reference}` get only secrets set with \
             --unprotected; {rule}"
        ))
    }
}

/// How a refusal names the ref of a run that has none.
const UNKNOWN_REF: &str = "an unknown ref";

/// The release of a run from its source, its ref and (for a run without a ref) its trigger.
pub fn release_for(run: &RunRecord, protected: &BTreeMap<String, ProtectedRefs>) -> Release {
    if run.source == super::FILE_SOURCE || run.source == LOCAL_SOURCE {
        return Release::All;
    }
    let reference = run
        .git
        .as_ref()
        .map(|g| g.reference.as_str())
        .unwrap_or_default();
    if reference.is_empty() {
        // Scheduled runs (and manual ones before the first sync, and reruns of those) carry no
        // ref: they run at the watched branch's head. Any other run without one (a Bitbucket
        // comment command on a fork's pull request) is not trusted.
        if matches!(run.trigger.kind.as_str(), "schedule" | "manual") {
            return Release::All;
        }
        return Release::UnprotectedOnly {
            reference: UNKNOWN_REF.to_string(),
            rule: match protected.get(&run.source) {
                Some(refs) => refs.describe(),
                None => format!("`{}` has no protected refs configured", run.source),
            },
        };
    }
    match protected.get(&run.source) {
        Some(refs) if refs.covers(reference) => Release::All,
        Some(refs) => Release::UnprotectedOnly {
            reference: reference.to_string(),
            rule: refs.describe(),
        },
        None => Release::UnprotectedOnly {
            reference: reference.to_string(),
            rule: format!("`{}` has no protected refs configured", run.source),
        },
    }
}

/// The source of pipelines defined in Gantry (the catalog's `LOCAL_SOURCE`; `run` does not import
/// the catalog).
const LOCAL_SOURCE: &str = "local";

/// The scope a run may use for the pipeline's own variables and secrets, or why it may not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    Own(String),
    /// Only global entries: the run's file is `path`, the catalog's file of `scope` is `catalog`
    /// (`None` when the catalog has no such pipeline on the watched branch).
    GlobalOnly {
        scope: String,
        path: String,
        catalog: Option<String>,
    },
}

impl Scope {
    pub fn own(&self) -> Option<&str> {
        match self {
            Scope::Own(s) => Some(s),
            Scope::GlobalOnly { .. } => None,
        }
    }

    /// A sentence for a refusal: why the pipeline's own entries did not count.
    pub fn note(&self) -> Option<String> {
        let Scope::GlobalOnly {
            scope,
            path,
            catalog,
        } = self
        else {
            return None;
        };
        Some(match catalog {
            Some(c) => format!(
                "the variables and secrets of `{scope}` go only to its file `{c}`, and this run's \
                 file is `{path}`, so it sees only global ones"
            ),
            None => format!(
                "`{scope}` is not a pipeline of the watched branch, so this run (file `{path}`) \
                 sees only global variables and secrets"
            ),
        })
    }
}

/// The scope of `run`'s pipeline `name`: `source/name` for a file run or a local pipeline; for a
/// repository's run only when the pipeline version it runs was read from the path the catalog has
/// for `source/name` (a current, not retired, pipeline of the watched branch).
pub fn scope_for(store: &Store, run: &RunRecord, name: &str) -> Result<Scope, StoreError> {
    scope_of(store, &run.source, name, run.version)
}

/// `scope_for` of a run not yet recorded: `version` of `source/name`.
pub fn scope_of(
    store: &Store,
    source: &str,
    name: &str,
    version: u32,
) -> Result<Scope, StoreError> {
    let scope = super::config_scope(source, name);
    if source == super::FILE_SOURCE || source == LOCAL_SOURCE {
        return Ok(Scope::Own(scope));
    }
    let path = store
        .get_version(source, name, version)?
        .map(|v| v.path)
        .unwrap_or_default();
    let catalog = store
        .get_pipeline(source, name)?
        .filter(|p| !p.retired)
        .map(|p| p.path);
    if catalog.as_deref() == Some(path.as_str()) {
        Ok(Scope::Own(scope))
    } else {
        Ok(Scope::GlobalOnly {
            scope,
            path,
            catalog,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refs(patterns: &[&str]) -> ProtectedRefs {
        let patterns: Vec<String> = patterns.iter().map(|s| s.to_string()).collect();
        ProtectedRefs::new("infra", "main", &patterns).expect("valid")
    }

    #[test]
    fn bare_names_are_branches_and_full_refs_are_refs() {
        let r = refs(&["release/*", "refs/tags/v*"]);
        assert!(r.covers("refs/heads/main"), "the watched branch always");
        assert!(r.covers("refs/heads/release/1.2"));
        assert!(!r.covers("refs/heads/release/1/2"));
        assert!(r.covers("refs/tags/v1.0"));
        assert!(!r.covers("refs/heads/v1.0"));
        assert!(!r.covers("refs/heads/feature/x"));
        assert!(!r.covers("refs/pull/7/head"));
        assert!(!r.covers("refs/heads/mainline"));
        assert_eq!(
            r.describe(),
            "protected refs of `infra`: main, release/*, refs/tags/v*"
        );
        assert_eq!(
            refs(&["main"]).describe(),
            "protected refs of `infra`: main"
        );
    }

    fn run(source: &str, kind: &str, reference: Option<&str>) -> RunRecord {
        RunRecord {
            id: "RUN".into(),
            number: 1,
            source: source.into(),
            pipeline: "deploy".into(),
            version: 1,
            parameters: BTreeMap::new(),
            trigger: crate::store::Trigger {
                kind: kind.into(),
                detail: None,
            },
            status: crate::store::RunStatus::Queued,
            git: reference.map(|r| crate::executor::GitInfo {
                sha: "abc".into(),
                reference: r.into(),
                repo: "acme/infra".into(),
            }),
            created_at: chrono::Utc::now(),
            started_at: None,
            finished_at: None,
            message: None,
            steps: Vec::new(),
            owner: None,
            concurrency: None,
            pr: None,
            writeback_error: None,
            idempotency_key: None,
            executor: None,
            external_id: None,
            retry_of: None,
        }
    }

    #[test]
    fn the_release_follows_the_source_the_ref_and_for_no_ref_the_trigger() {
        let protected: BTreeMap<String, ProtectedRefs> =
            [("infra".to_string(), refs(&["refs/tags/v*"]))].into();
        let all = |r: &RunRecord| release_for(r, &protected) == Release::All;
        assert!(all(&run("file", "manual", None)));
        assert!(all(&run("local", "push", Some("refs/heads/x"))));
        assert!(all(&run("infra", "manual", Some("refs/heads/main"))));
        assert!(all(&run("infra", "manual", None)));
        assert!(all(&run("infra", "schedule", Some(""))));
        assert!(all(&run("infra", "push", Some("refs/heads/main"))));
        assert!(all(&run("infra", "push", Some("refs/tags/v2"))));
        assert!(!all(&run("infra", "push", Some("refs/heads/feature/x"))));
        assert!(!all(&run("infra", "pullRequest", Some("refs/pull/3/head"))));
        assert!(!all(&run("infra", "comment", Some(""))));
        assert!(!all(&run("infra", "comment", None)));
        assert!(!all(&run("gone", "push", Some("refs/heads/main"))));
        assert_eq!(
            release_for(&run("infra", "comment", Some("")), &protected),
            Release::UnprotectedOnly {
                reference: "an unknown ref".into(),
                rule: "protected refs of `infra`: main, refs/tags/v*".into()
            }
        );
    }

    #[test]
    fn a_refusal_names_the_secret_the_ref_and_the_rule() {
        let release = Release::UnprotectedOnly {
            reference: "refs/heads/feature/x".into(),
            rule: refs(&["main"]).describe(),
        };
        assert_eq!(
            release.refusal(&["apply_key".into()]).as_deref(),
            Some(
                "secret `apply_key` is protected: runs at `refs/heads/feature/x` get only \
                 secrets set with --unprotected; protected refs of `infra`: main"
            )
        );
        assert_eq!(
            release.refusal(&["a".into(), "b".into()]).as_deref(),
            Some(
                "secrets `a`, `b` are protected: runs at `refs/heads/feature/x` get only \
                 secrets set with --unprotected; protected refs of `infra`: main"
            )
        );
        assert_eq!(release.refusal(&[]), None);
        assert_eq!(Release::All.refusal(&["a".into()]), None);
    }
}
