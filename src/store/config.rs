//! Variables (plain) and secrets (sealed, write-only), each global or scoped to one pipeline.
//!
//! A pipeline-scoped entry overrides the global one of the same name. Secret values come out of
//! the store only through `resolve_secrets`, for a run that declared them.

use std::collections::BTreeMap;

use super::records::ConfigEntry;
use super::{Store, StoreError, crypto, key};

fn scoped_key(pipeline: Option<&str>, name: &str) -> Vec<u8> {
    key(&[pipeline.unwrap_or("").as_bytes(), name.as_bytes()])
}

fn split_key(k: &[u8]) -> (Option<String>, String) {
    let mut parts = k.splitn(2, |b| *b == 0);
    let scope = parts
        .next()
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .unwrap_or_default();
    let name = parts
        .next()
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .unwrap_or_default();
    ((!scope.is_empty()).then_some(scope), name)
}

impl Store {
    pub fn set_var(
        &self,
        pipeline: Option<&str>,
        name: &str,
        value: &str,
    ) -> Result<(), StoreError> {
        self.inner
            .vars
            .insert(scoped_key(pipeline, name), value.as_bytes())
            .map_err(|e| self.db_err(e))?;
        self.flush()
    }

    /// Removes a variable; says whether it existed.
    pub fn remove_var(&self, pipeline: Option<&str>, name: &str) -> Result<bool, StoreError> {
        let existed = self
            .inner
            .vars
            .remove(scoped_key(pipeline, name))
            .map_err(|e| self.db_err(e))?
            .is_some();
        self.flush()?;
        Ok(existed)
    }

    pub fn list_vars(&self) -> Result<Vec<ConfigEntry>, StoreError> {
        let mut out = Vec::new();
        for entry in self.inner.vars.iter() {
            let (k, v) = entry.map_err(|e| self.db_err(e))?;
            let (pipeline, name) = split_key(&k);
            out.push(ConfigEntry {
                pipeline,
                name,
                value: Some(String::from_utf8_lossy(&v).into_owned()),
            });
        }
        Ok(out)
    }

    /// Values of the named variables for a pipeline: its own, else the global ones. Names with no
    /// value are left out.
    pub fn resolve_vars(
        &self,
        pipeline: &str,
        names: &[String],
    ) -> Result<BTreeMap<String, String>, StoreError> {
        let mut out = BTreeMap::new();
        for name in names {
            for scope in [Some(pipeline), None] {
                if let Some(v) = self
                    .inner
                    .vars
                    .get(scoped_key(scope, name))
                    .map_err(|e| self.db_err(e))?
                {
                    out.insert(name.clone(), String::from_utf8_lossy(&v).into_owned());
                    break;
                }
            }
        }
        Ok(out)
    }

    /// Seals and stores a secret.
    pub fn set_secret(
        &self,
        pipeline: Option<&str>,
        name: &str,
        value: &str,
    ) -> Result<(), StoreError> {
        let k = scoped_key(pipeline, name);
        let sealed = self.key()?.seal(&k, value.as_bytes())?;
        self.inner
            .secrets
            .insert(&k, sealed)
            .map_err(|e| self.db_err(e))?;
        self.flush()
    }

    /// Removes a secret; says whether it existed.
    pub fn remove_secret(&self, pipeline: Option<&str>, name: &str) -> Result<bool, StoreError> {
        let existed = self
            .inner
            .secrets
            .remove(scoped_key(pipeline, name))
            .map_err(|e| self.db_err(e))?
            .is_some();
        self.flush()?;
        Ok(existed)
    }

    /// Secret names and scopes; never values.
    pub fn list_secrets(&self) -> Result<Vec<ConfigEntry>, StoreError> {
        let mut out = Vec::new();
        for entry in self.inner.secrets.iter() {
            let (k, _) = entry.map_err(|e| self.db_err(e))?;
            let (pipeline, name) = split_key(&k);
            out.push(ConfigEntry {
                pipeline,
                name,
                value: None,
            });
        }
        Ok(out)
    }

    /// Decrypted values of the named secrets for a pipeline: its own, else the global ones. Names
    /// with no value are left out.
    pub fn resolve_secrets(
        &self,
        pipeline: &str,
        names: &[String],
    ) -> Result<BTreeMap<String, String>, StoreError> {
        let mut out = BTreeMap::new();
        for name in names {
            for scope in [Some(pipeline), None] {
                let k = scoped_key(scope, name);
                if let Some(sealed) = self.inner.secrets.get(&k).map_err(|e| self.db_err(e))? {
                    let plain = self.key()?.open(&k, &sealed)?;
                    out.insert(name.clone(), String::from_utf8_lossy(&plain).into_owned());
                    break;
                }
            }
        }
        Ok(out)
    }

    /// Where the master key file is (or will be) when `GANTRY_MASTER_KEY` is not set.
    pub fn master_key_file(&self) -> std::path::PathBuf {
        self.inner.dir.join(crypto::KEY_FILE)
    }
}
