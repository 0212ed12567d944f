//! Variables (plain) and secrets (sealed, write-only), each global or scoped to one pipeline.
//!
//! A pipeline-scoped entry overrides the global one of the same name. Secret values come out of
//! the store only through `resolve_secrets`, for a run that declared them.

use std::collections::BTreeMap;

use super::records::ConfigEntry;
use super::{Store, StoreError, key, key_parts};

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
        pipeline: &str,
        names: &[String],
        mut open: impl FnMut(&[u8], &[u8]) -> Result<String, StoreError>,
    ) -> Result<BTreeMap<String, String>, StoreError> {
        let mut out = BTreeMap::new();
        for name in names {
            for scope in [Some(pipeline), None] {
                let k = scoped_key(scope, name);
                if let Some(stored) = tree.get(&k).map_err(|e| self.db_err(e))? {
                    out.insert(name.clone(), open(&k, &stored)?);
                    break;
                }
            }
        }
        Ok(out)
    }

    /// Every entry of a tree, with the value when `with_values`.
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
            out.push(ConfigEntry {
                pipeline,
                name,
                value,
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
        self.resolve_scoped(&self.inner.vars, pipeline, names, |_, v| {
            Ok(String::from_utf8_lossy(v).into_owned())
        })
    }

    /// Seals and stores a secret.
    pub fn set_secret(
        &self,
        pipeline: Option<&str>,
        name: &str,
        value: &str,
    ) -> Result<(), StoreError> {
        let sealed = self
            .master_key(true)?
            .seal(&scoped_key(pipeline, name), value.as_bytes())?;
        self.put_scoped(&self.inner.secrets, pipeline, name, sealed)
    }

    pub fn remove_secret(&self, pipeline: Option<&str>, name: &str) -> Result<bool, StoreError> {
        self.remove_scoped(&self.inner.secrets, pipeline, name)
    }

    /// Secret names and scopes; never values.
    pub fn list_secrets(&self) -> Result<Vec<ConfigEntry>, StoreError> {
        self.list_scoped(&self.inner.secrets, false)
    }

    /// Decrypted values of the named secrets for a pipeline: its own, else the global ones.
    pub fn resolve_secrets(
        &self,
        pipeline: &str,
        names: &[String],
    ) -> Result<BTreeMap<String, String>, StoreError> {
        self.resolve_scoped(&self.inner.secrets, pipeline, names, |k, sealed| {
            let plain = self
                .master_key(false)
                .and_then(|key| key.open(k, sealed))
                .map_err(|e| {
                    let (scope, name) = split_key(k);
                    let scope = scope
                        .map(|p| format!(" of pipeline `{p}`"))
                        .unwrap_or_default();
                    StoreError::Crypto(format!("secret `{name}`{scope}: {e}"))
                })?;
            Ok(String::from_utf8_lossy(&plain).into_owned())
        })
    }
}
