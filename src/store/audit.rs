//! The audit log: every state change and every credential read, who did it, how and from where.
//! Entries are keyed by a sortable id (as runs are), so the newest come first when read backwards
//! and a page goes on from the last id it showed. The retention loop keeps them as long as runs.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{Store, StoreError, decode};

/// One entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct AuditEntry {
    /// Sortable: newer entries have greater ids.
    #[serde(default)]
    pub id: String,
    pub at: DateTime<Utc>,
    /// The token or user, a forge login (`comment`), or Gantry itself (`schedule`).
    pub who: String,
    /// `api`, `web`, `webhook`, `comment` or `schedule`.
    pub via: String,
    /// What was done, e.g. `POST /api/v1/pipelines/{source}/{name}/runs` or `run started`.
    pub action: String,
    /// What it was done to: the request's path, or `source/pipeline #number`.
    pub target: String,
    /// The peer address, for requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// The HTTP status of the answer, for requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
}

/// What to list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditQuery {
    /// Only entries of this `who`.
    pub who: Option<String>,
    /// Only entries whose action or target contains this text.
    pub text: Option<String>,
    /// Only entries older than this id (the last one of the previous page).
    pub before: Option<String>,
    pub limit: usize,
}

impl Store {
    /// Records `entry` (its `id` and `at` are set here).
    pub fn audit(&self, mut entry: AuditEntry) -> Result<(), StoreError> {
        let now = Utc::now();
        entry.at = now;
        entry.id = super::new_run_id(now);
        let key = entry.id.clone();
        self.put_json(&self.inner.audit, key.as_bytes(), &entry)
    }

    /// Entries, newest first, as `query` says; and whether older ones match too.
    pub fn audit_entries(&self, query: &AuditQuery) -> Result<(Vec<AuditEntry>, bool), StoreError> {
        let iter = match &query.before {
            Some(before) => self.inner.audit.range(..before.as_bytes().to_vec()),
            None => self.inner.audit.range::<Vec<u8>, _>(..),
        };
        let mut out = Vec::new();
        for item in iter.rev() {
            let (k, v) = item.map_err(|e| self.db_err(e))?;
            let entry: AuditEntry = decode(&k, &v)?;
            if query.who.as_ref().is_some_and(|w| *w != entry.who) {
                continue;
            }
            if let Some(text) = &query.text
                && !entry.action.contains(text.as_str())
                && !entry.target.contains(text.as_str())
            {
                continue;
            }
            if out.len() == query.limit {
                return Ok((out, true));
            }
            out.push(entry);
        }
        Ok((out, false))
    }

    /// Removes entries older than `cutoff`; returns how many.
    pub fn prune_audit(&self, cutoff: DateTime<Utc>) -> Result<usize, StoreError> {
        let bound = super::runs::id_bound(cutoff);
        let mut removed = 0;
        for item in self.inner.audit.range(..bound.into_bytes()) {
            let (k, _) = item.map_err(|e| self.db_err(e))?;
            self.inner.audit.remove(&k).map_err(|e| self.db_err(e))?;
            removed += 1;
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(who: &str, action: &str) -> AuditEntry {
        AuditEntry {
            id: String::new(),
            at: Utc::now(),
            who: who.into(),
            via: "api".into(),
            action: action.into(),
            target: "/api/v1/x".into(),
            from: Some("127.0.0.1".into()),
            status: Some(204),
        }
    }

    #[test]
    fn entries_come_newest_first_filtered_and_paged() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        for i in 0..5 {
            store.audit(entry("ann", &format!("PUT {i}"))).unwrap();
        }
        store.audit(entry("bob", "DELETE x")).unwrap();
        let all = AuditQuery {
            limit: 10,
            ..Default::default()
        };
        let (list, more) = store.audit_entries(&all).unwrap();
        assert_eq!(list.len(), 6);
        assert!(!more);
        assert_eq!(list[0].who, "bob");
        assert_eq!(list[1].action, "PUT 4");
        let page = AuditQuery {
            who: Some("ann".into()),
            limit: 2,
            ..Default::default()
        };
        let (first, more) = store.audit_entries(&page).unwrap();
        assert_eq!((first.len(), more), (2, true));
        let (second, _) = store
            .audit_entries(&AuditQuery {
                before: Some(first[1].id.clone()),
                ..page.clone()
            })
            .unwrap();
        assert_eq!(second[0].action, "PUT 2");
        let (found, _) = store
            .audit_entries(&AuditQuery {
                text: Some("DELETE".into()),
                limit: 10,
                ..Default::default()
            })
            .unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(
            store
                .prune_audit(Utc::now() + chrono::Duration::seconds(1))
                .unwrap(),
            6
        );
    }
}
