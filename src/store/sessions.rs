//! Web sessions: a browser that logged in holds a random session id in a cookie; the store keeps
//! only the id's SHA-256, with who logged in and until when. So a copy of the store opens no
//! session, logout and expiry take effect at once, and a server restart keeps people logged in.

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{Store, StoreError, crypto};

/// One logged-in browser.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    /// Who: the name of the API token or user that logged in.
    pub who: String,
    /// How: `token` or `password`.
    pub method: String,
    pub created_at: DateTime<Utc>,
    /// Refreshed while the session is used (at most once a minute).
    pub last_seen: DateTime<Utc>,
    /// The session ends at this time whatever its use.
    pub expires_at: DateTime<Utc>,
}

/// How long a session lives at most, and how long it may sit unused.
#[derive(Debug, Clone, Copy)]
pub struct SessionLimits {
    pub absolute: Duration,
    pub idle: Duration,
}

impl Default for SessionLimits {
    fn default() -> SessionLimits {
        SessionLimits {
            absolute: Duration::hours(12),
            idle: Duration::hours(2),
        }
    }
}

fn session_key(id: &str) -> Vec<u8> {
    let digest = Sha256::digest(id.as_bytes());
    crypto::encode_hex(&digest).into_bytes()
}

impl Store {
    /// Starts a session for `who`; returns the id the browser holds (64 hex characters).
    pub fn create_session(
        &self,
        who: &str,
        method: &str,
        limits: SessionLimits,
    ) -> Result<String, StoreError> {
        let mut raw = [0u8; 32];
        crypto::random_bytes(&mut raw);
        let id = crypto::encode_hex(&raw);
        let now = Utc::now();
        let record = SessionRecord {
            who: who.to_string(),
            method: method.to_string(),
            created_at: now,
            last_seen: now,
            expires_at: now + limits.absolute,
        };
        self.put_json(&self.inner.sessions, &session_key(&id), &record)?;
        Ok(id)
    }

    /// The live session of `id`, refreshing its last use; an expired or idle one is removed and
    /// reads as none.
    pub fn session(
        &self,
        id: &str,
        limits: SessionLimits,
    ) -> Result<Option<SessionRecord>, StoreError> {
        if id.len() != 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(None);
        }
        let k = session_key(id);
        let Some(mut record) = self.get_json::<SessionRecord>(&self.inner.sessions, &k)? else {
            return Ok(None);
        };
        let now = Utc::now();
        if now >= record.expires_at || now - record.last_seen >= limits.idle {
            self.inner.sessions.remove(&k).map_err(|e| self.db_err(e))?;
            return Ok(None);
        }
        if now - record.last_seen >= Duration::minutes(1) {
            record.last_seen = now;
            self.put_json(&self.inner.sessions, &k, &record)?;
        }
        Ok(Some(record))
    }

    /// Ends the session of `id` (logout); nothing when there is none.
    pub fn end_session(&self, id: &str) -> Result<(), StoreError> {
        self.inner
            .sessions
            .remove(session_key(id))
            .map_err(|e| self.db_err(e))?;
        Ok(())
    }

    /// Removes sessions that have ended; returns how many.
    pub fn prune_sessions(&self, limits: SessionLimits) -> Result<usize, StoreError> {
        let now = Utc::now();
        let mut removed = 0;
        for entry in self.inner.sessions.iter() {
            let (k, v) = entry.map_err(|e| self.db_err(e))?;
            let ended = match super::decode::<SessionRecord>(&k, &v) {
                Ok(r) => now >= r.expires_at || now - r.last_seen >= limits.idle,
                Err(_) => true,
            };
            if ended {
                self.inner.sessions.remove(&k).map_err(|e| self.db_err(e))?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_is_found_by_its_id_only_until_it_ends() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let limits = SessionLimits::default();
        let id = store.create_session("ci", "token", limits).unwrap();
        assert_eq!(id.len(), 64);
        let found = store.session(&id, limits).unwrap().unwrap();
        assert_eq!(found.who, "ci");
        // Only the hash is stored: the id itself appears nowhere in the tree.
        for entry in store.inner.sessions.iter() {
            let (k, v) = entry.unwrap();
            assert!(!String::from_utf8_lossy(&k).contains(&id));
            assert!(!String::from_utf8_lossy(&v).contains(&id));
        }
        assert_eq!(store.session(&"0".repeat(64), limits).unwrap(), None);
        assert_eq!(store.session("short", limits).unwrap(), None);
        store.end_session(&id).unwrap();
        assert_eq!(store.session(&id, limits).unwrap(), None);
    }

    #[test]
    fn an_expired_or_idle_session_reads_as_none_and_is_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let gone = SessionLimits {
            absolute: Duration::zero(),
            idle: Duration::hours(1),
        };
        let id = store.create_session("ci", "token", gone).unwrap();
        assert_eq!(store.session(&id, SessionLimits::default()).unwrap(), None);
        let idle = SessionLimits {
            absolute: Duration::hours(1),
            idle: Duration::zero(),
        };
        let _ = store.create_session("a", "token", idle).unwrap();
        let kept = store
            .create_session("b", "token", SessionLimits::default())
            .unwrap();
        assert_eq!(store.prune_sessions(idle).unwrap(), 2);
        // Under a zero idle time every session has ended, the young one too.
        assert!(
            store
                .session(&kept, SessionLimits::default())
                .unwrap()
                .is_none()
        );
        let young = store
            .create_session("c", "token", SessionLimits::default())
            .unwrap();
        assert_eq!(store.prune_sessions(SessionLimits::default()).unwrap(), 0);
        assert!(
            store
                .session(&young, SessionLimits::default())
                .unwrap()
                .is_some()
        );
    }
}
