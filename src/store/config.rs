//! Variables (plain) and secrets (sealed, write-only), each global or scoped to one pipeline.
//!
//! A pipeline-scoped entry overrides the global one of the same name. Secret values come out of
//! the store only through `resolve_secrets`, for a run that declared them.
//!
//! Each secret carries its release (schema version 2): `Protected` secrets go only to runs at a
//! protected ref, `Unprotected` ones to any run. The stored value is one flag byte (0 protected,
//! 1 unprotected) followed by the sealed value; the flag is also part of the associated data of an
//! unprotected secret, so flipping the byte in the database makes the value unreadable instead of
//! releasing it.

use std::collections::BTreeMap;

use super::records::{ConfigEntry, SecretRelease};
use super::{Store, StoreError, key, key_parts};

/// The flag byte that starts a stored secret.
const PROTECTED: u8 = 0;
const UNPROTECTED: u8 = 1;

/// The associated data a secret is sealed with: its key, and for an unprotected one a marker, so
/// the flag cannot be changed without the master key.
fn secret_aad(k: &[u8], release: SecretRelease) -> Vec<u8> {
    match release {
        SecretRelease::Protected => k.to_vec(),
        SecretRelease::Unprotected => key(&[k, b"unprotected"]),
    }
}

/// The release and the sealed bytes of a stored secret.
fn split_secret(stored: &[u8]) -> Option<(SecretRelease, &[u8])> {
    let (flag, sealed) = stored.split_first()?;
    let release = match *flag {
        PROTECTED => SecretRelease::Protected,
        UNPROTECTED => SecretRelease::Unprotected,
        _ => return None,
    };
    Some((release, sealed))
}

/// Secrets resolved for a run.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ResolvedSecrets {
    /// The values the run gets, by name.
    pub values: BTreeMap<String, String>,
    /// Declared names that are set, but only as protected secrets the run may not have.
    pub withheld: Vec<String>,
}

/// Prefixes a v1 secret value (sealed bytes, protected by definition) with the protected flag:
/// the migration of the `secrets` tree from schema version 1 to 2.
pub(super) fn v1_secret_to_v2(sealed: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(sealed.len() + 1);
    out.push(PROTECTED);
    out.extend_from_slice(sealed);
    out
}

fn scoped_key(pipeline: Option<&str>, name: &str) -> Vec<u8> {
    key(&[pipeline.unwrap_or("").as_bytes(), name.as_bytes()])
}

fn split_key(k: &[u8]) -> (Option<String>, String) {
    let mut parts = key_parts(k).into_iter();
    let scope = parts.next().unwrap_or_default();
    let name = parts.next().unwrap_or_default();
    ((!scope.is_empty()).then_some(scope), name)
}

impl Store {
    /// Stores a value under its scoped key and flushes: the command that set it returns after.
    fn put_scoped(
        &self,
        tree: &sled::Tree,
        pipeline: Option<&str>,
        name: &str,
        value: Vec<u8>,
    ) -> Result<(), StoreError> {
        tree.insert(scoped_key(pipeline, name), value)
            .map_err(|e| self.db_err(e))?;
        self.flush()
    }

    /// Removes a scoped entry; says whether it existed.
    fn remove_scoped(
        &self,
        tree: &sled::Tree,
        pipeline: Option<&str>,
        name: &str,
    ) -> Result<bool, StoreError> {
        let existed = tree
            .remove(scoped_key(pipeline, name))
            .map_err(|e| self.db_err(e))?
            .is_some();
        self.flush()?;
        Ok(existed)
    }

    /// For each name, the pipeline's own entry, else the global one; names with neither are left
    /// out. `open` turns the stored bytes (and their key) into the value.
    fn resolve_scoped(
        &self,
        tree: &sled::Tree,
        pipeline: Option<&str>,
        names: &[String],
        mut open: impl FnMut(&[u8], &[u8]) -> Result<String, StoreError>,
    ) -> Result<BTreeMap<String, String>, StoreError> {
        let mut out = BTreeMap::new();
        for name in names {
            for scope in pipeline.map(Some).into_iter().chain([None]) {
                let k = scoped_key(scope, name);
                if let Some(stored) = tree.get(&k).map_err(|e| self.db_err(e))? {
                    out.insert(name.clone(), open(&k, &stored)?);
                    break;
                }
            }
        }
        Ok(out)
    }

    /// Every entry of a tree, with the value when `with_values` (variables), else with the
    /// release (secrets).
    fn list_scoped(
        &self,
        tree: &sled::Tree,
        with_values: bool,
    ) -> Result<Vec<ConfigEntry>, StoreError> {
        let mut out = Vec::new();
        for entry in tree.iter() {
            let (k, v) = entry.map_err(|e| self.db_err(e))?;
            let (pipeline, name) = split_key(&k);
            let value = with_values.then(|| String::from_utf8_lossy(&v).into_owned());
            let unprotected = !with_values
                && split_secret(&v).is_some_and(|(r, _)| r == SecretRelease::Unprotected);
            out.push(ConfigEntry {
                pipeline,
                name,
                value,
                unprotected,
            });
        }
        Ok(out)
    }

    pub fn set_var(
        &self,
        pipeline: Option<&str>,
        name: &str,
        value: &str,
    ) -> Result<(), StoreError> {
        self.put_scoped(&self.inner.vars, pipeline, name, value.as_bytes().to_vec())
    }

    pub fn remove_var(&self, pipeline: Option<&str>, name: &str) -> Result<bool, StoreError> {
        self.remove_scoped(&self.inner.vars, pipeline, name)
    }

    pub fn list_vars(&self) -> Result<Vec<ConfigEntry>, StoreError> {
        self.list_scoped(&self.inner.vars, true)
    }

    /// Values of the named variables for a pipeline: its own, else the global ones.
    pub fn resolve_vars(
        &self,
        pipeline: &str,
        names: &[String],
    ) -> Result<BTreeMap<String, String>, StoreError> {
        self.resolve_vars_for(Some(pipeline), names)
    }

    /// `resolve_vars`, or only the global values when `pipeline` is `None` (a run that may not
    /// use any pipeline's scope).
    pub fn resolve_vars_for(
        &self,
        pipeline: Option<&str>,
        names: &[String],
    ) -> Result<BTreeMap<String, String>, StoreError> {
        self.resolve_scoped(&self.inner.vars, pipeline, names, |_, v| {
            Ok(String::from_utf8_lossy(v).into_owned())
        })
    }

    /// Seals and stores a protected secret.
    pub fn set_secret(
        &self,
        pipeline: Option<&str>,
        name: &str,
        value: &str,
    ) -> Result<(), StoreError> {
        self.set_secret_with(pipeline, name, value, SecretRelease::Protected)
    }

    /// Seals and stores a secret with its release; setting it again replaces both.
    pub fn set_secret_with(
        &self,
        pipeline: Option<&str>,
        name: &str,
        value: &str,
        release: SecretRelease,
    ) -> Result<(), StoreError> {
        let len = value.trim().chars().count();
        if len < super::MIN_SECRET_CHARS {
            return Err(StoreError::SecretTooShort {
                name: name.to_string(),
                len,
            });
        }
        let k = scoped_key(pipeline, name);
        let sealed = self
            .master_key(true)?
            .seal(&secret_aad(&k, release), value.as_bytes())?;
        let mut stored = Vec::with_capacity(sealed.len() + 1);
        stored.push(match release {
            SecretRelease::Protected => PROTECTED,
            SecretRelease::Unprotected => UNPROTECTED,
        });
        stored.extend_from_slice(&sealed);
        self.put_scoped(&self.inner.secrets, pipeline, name, stored)
    }

    pub fn remove_secret(&self, pipeline: Option<&str>, name: &str) -> Result<bool, StoreError> {
        self.remove_scoped(&self.inner.secrets, pipeline, name)
    }

    /// Secret names and scopes; never values.
    pub fn list_secrets(&self) -> Result<Vec<ConfigEntry>, StoreError> {
        self.list_scoped(&self.inner.secrets, false)
    }

    /// Decrypted values of the named secrets for a pipeline: its own, else the global ones.
    /// Every release is returned (masking, trusted runs).
    pub fn resolve_secrets(
        &self,
        pipeline: &str,
        names: &[String],
    ) -> Result<BTreeMap<String, String>, StoreError> {
        Ok(self
            .resolve_secrets_for(Some(pipeline), names, SecretRelease::Protected)?
            .values)
    }

    /// The named secrets a run may have: for each name, the first of the pipeline's own entry
    /// (when `pipeline` is given) and the global one that `allowed` covers. `allowed` is
    /// `Protected` for a run at a protected ref (every secret), `Unprotected` for any other run
    /// (only secrets set as unprotected). A name that is set but only as a secret the run may not
    /// have is listed in `withheld`; a name set nowhere is in neither list.
    pub fn resolve_secrets_for(
        &self,
        pipeline: Option<&str>,
        names: &[String],
        allowed: SecretRelease,
    ) -> Result<ResolvedSecrets, StoreError> {
        let mut out = ResolvedSecrets::default();
        for name in names {
            let mut withheld = false;
            let scopes = pipeline.map(Some).into_iter().chain([None]);
            let mut found = None;
            for scope in scopes {
                let k = scoped_key(scope, name);
                let Some(stored) = self.inner.secrets.get(&k).map_err(|e| self.db_err(e))? else {
                    continue;
                };
                let (release, sealed) = split_secret(&stored).ok_or_else(|| {
                    StoreError::Crypto(format!(
                        "secret `{name}`{}: the stored value is damaged (unknown release flag)",
                        scope_words(scope)
                    ))
                })?;
                if allowed == SecretRelease::Unprotected && release == SecretRelease::Protected {
                    withheld = true;
                    continue;
                }
                let plain = self
                    .master_key(false)
                    .and_then(|key| key.open(&secret_aad(&k, release), sealed))
                    .map_err(|e| {
                        StoreError::Crypto(format!("secret `{name}`{}: {e}", scope_words(scope)))
                    })?;
                found = Some(String::from_utf8_lossy(&plain).into_owned());
                break;
            }
            match found {
                Some(value) => {
                    out.values.insert(name.clone(), value);
                }
                None if withheld => out.withheld.push(name.clone()),
                None => {}
            }
        }
        Ok(out)
    }
}

fn scope_words(scope: Option<&str>) -> String {
    scope
        .map(|p| format!(" of pipeline `{p}`"))
        .unwrap_or_default()
}
