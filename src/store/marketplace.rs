//! The marketplace's tables: published resources, their versions, the indexes that find them,
//! and connections. The rules (when a publish makes a new version, what a connection resolves
//! to) are `marketplace`'s; this file keeps records and seals secret credential values.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionError};

use super::{Store, StoreError, crypto, decode, key, key_parts, show_key};
use crate::spec::model::Category;

/// A published resource as the marketplace lists it; its credentials are in its versions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ResourceRecord {
    /// Unique per server.
    pub name: String,
    pub category: Category,
    /// What it is more precisely (`postgresql`, `s3`, `redis`), when the publisher said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    /// The pipeline that publishes it; no other pipeline may.
    pub owner: ResourceOwner,
    /// The newest version's number (versions are 1, 2, 3, ...).
    pub latest: u64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deprecated: Option<Deprecation>,
    /// When it was unpublished as a whole: kept with its history, no longer handed out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unpublished_at: Option<DateTime<Utc>>,
    /// Environments unpublished one by one, and when; publishing one again brings it back.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub withdrawn: BTreeMap<String, DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ResourceOwner {
    pub source: String,
    pub pipeline: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Deprecation {
    pub reason: String,
    pub at: DateTime<Utc>,
}

/// One version of a resource: what a publish made, with where it came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ResourceVersion {
    pub number: u64,
    /// The publisher's own version when it is semver (`1.4.0`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub semver: Option<String>,
    pub provenance: Provenance,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
    /// Credentials by environment, in the publisher's key order.
    pub environments: BTreeMap<String, Vec<CredentialValue>>,
}

/// Who published a version: the run and step, the commit it ran at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Provenance {
    pub run_id: String,
    pub run_number: u64,
    pub step: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git_ref: Option<String>,
    pub published_at: DateTime<Utc>,
}

/// A credential key with its value. A secret value is sealed in the store, and read back only
/// when asked to reveal it; otherwise it is `None`.
#[derive(Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct CredentialValue {
    pub key: String,
    pub secret: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

impl std::fmt::Debug for CredentialValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CredentialValue")
            .field("key", &self.key)
            .field("secret", &self.secret)
            .field("value", crate::executor::redact(&self.value, self.secret))
            .finish()
    }
}

/// A named link from a consumer to a resource's credentials in one environment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[schemars(rename = "Connection")]
pub struct ConnectionRecord {
    pub name: String,
    /// Who uses it: an application's name, or `pipeline:<source>/<name>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumer: Option<String>,
    pub resource: String,
    pub environment: String,
    /// Which versions it accepts, as written (`2`, `^1.2`); none: the newest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Credential key → environment variable name, for the keys not named by default.
    #[serde(default)]
    pub mapping: BTreeMap<String, String>,
    pub created_at: DateTime<Utc>,
    /// The version it resolved to last, and when.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved_version: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved_at: Option<DateTime<Utc>>,
}

/// Where a run's publish step ended up: the resource and the version it made or matched.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishedAs {
    pub resource: String,
    pub version: u64,
    /// False when the publish changed nothing, so the version is an earlier run's.
    pub new: bool,
    /// Why the marketplace refused the publish (then `version` is 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The index entries of a resource: by category, by kind and by tag.
fn index_keys(r: &ResourceRecord) -> Vec<Vec<u8>> {
    let category = serde_json::to_value(r.category)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    let mut out = vec![key(&[b"type", category.as_bytes(), r.name.as_bytes()])];
    if let Some(kind) = &r.kind {
        out.push(key(&[b"type", kind.as_bytes(), r.name.as_bytes()]));
    }
    for tag in &r.tags {
        out.push(key(&[b"tag", tag.as_bytes(), r.name.as_bytes()]));
    }
    out
}

fn credential_aad(name: &str, number: u64, env: &str, cred: &str) -> Vec<u8> {
    key(&[
        b"resource",
        name.as_bytes(),
        &number.to_be_bytes(),
        env.as_bytes(),
        cred.as_bytes(),
    ])
}

fn version_key(name: &str, number: u64) -> Vec<u8> {
    key(&[name.as_bytes(), &number.to_be_bytes()])
}

fn json<T: Serialize>(k: &[u8], value: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(|source| StoreError::Corrupt {
        key: show_key(k),
        source,
    })
}

impl Store {
    /// Stores a new version of a resource with the resource's record (created or updated), and
    /// for `from` (a run and its step) which version that publish made; flushed. Secret values
    /// are sealed. The previous index entries of the resource are replaced.
    pub fn put_resource_version(
        &self,
        record: &ResourceRecord,
        version: &ResourceVersion,
    ) -> Result<(), StoreError> {
        let mut sealed = version.clone();
        for (env, creds) in sealed.environments.iter_mut() {
            for c in creds.iter_mut().filter(|c| c.secret) {
                let plain = c.value.take().unwrap_or_default();
                let aad = credential_aad(&record.name, version.number, env, &c.key);
                c.value = Some(crypto::encode_hex(
                    &self.master_key(true)?.seal(&aad, plain.as_bytes())?,
                ));
            }
        }
        let vk = version_key(&record.name, version.number);
        let version_bytes = json(&vk, &sealed)?;
        let from = key(&[
            version.provenance.run_id.as_bytes(),
            version.provenance.step.as_bytes(),
        ]);
        let published = json(
            &from,
            &PublishedAs {
                resource: record.name.clone(),
                version: version.number,
                new: true,
                error: None,
            },
        )?;
        self.write_resource(record, Some((vk, version_bytes)), Some((from, published)))
    }

    /// Records that a run's publish step changed nothing: it matched `version` of `resource`.
    pub fn put_published_as(
        &self,
        run_id: &str,
        step: &str,
        published: &PublishedAs,
    ) -> Result<(), StoreError> {
        let k = key(&[run_id.as_bytes(), step.as_bytes()]);
        self.put_json(&self.inner.resource_provenance, &k, published)?;
        self.flush()
    }

    /// Where a run's publish steps ended up, by step.
    pub fn published_as(&self, run_id: &str) -> Result<Vec<(String, PublishedAs)>, StoreError> {
        let mut out = Vec::new();
        for entry in self
            .inner
            .resource_provenance
            .scan_prefix(key(&[run_id.as_bytes(), b""]))
        {
            let (k, v) = entry.map_err(|e| self.db_err(e))?;
            let step = key_parts(&k).into_iter().nth(1).unwrap_or_default();
            out.push((step, decode(&k, &v)?));
        }
        Ok(out)
    }

    /// The runs that have a publish step not yet taken into the marketplace, oldest first.
    pub fn runs_with_unlisted_publications(&self) -> Result<Vec<String>, StoreError> {
        let mut out: Vec<String> = Vec::new();
        for entry in self.inner.publications.iter() {
            let (k, _) = entry.map_err(|e| self.db_err(e))?;
            if self
                .inner
                .resource_provenance
                .contains_key(&k)
                .map_err(|e| self.db_err(e))?
            {
                continue;
            }
            let run = key_parts(&k).into_iter().next().unwrap_or_default();
            if out.last() != Some(&run) {
                out.push(run);
            }
        }
        Ok(out)
    }

    /// Updates a resource's record (deprecation, unpublishing) and its index entries; flushed.
    pub fn put_resource(&self, record: &ResourceRecord) -> Result<(), StoreError> {
        self.write_resource(record, None, None)
    }

    fn write_resource(
        &self,
        record: &ResourceRecord,
        version: Option<(Vec<u8>, Vec<u8>)>,
        published: Option<(Vec<u8>, Vec<u8>)>,
    ) -> Result<(), StoreError> {
        let rk = record.name.as_bytes().to_vec();
        let bytes = json(&rk, record)?;
        let new_index = index_keys(record);
        self.note_write(bytes.len() + version.as_ref().map_or(0, |v| v.1.len()));
        let _op = self.inner.health.op("write");
        let done: Result<(), TransactionError<StoreError>> = (
            &self.inner.resources,
            &self.inner.resource_versions,
            &self.inner.resource_index,
            &self.inner.resource_provenance,
        )
            .transaction(|(resources, versions, index, provenance)| {
                if let Some(old) = resources.get(&rk)? {
                    let old: ResourceRecord =
                        decode(&rk, &old).map_err(ConflictableTransactionError::Abort)?;
                    for k in index_keys(&old) {
                        index.remove(k)?;
                    }
                }
                for k in &new_index {
                    index.insert(k.as_slice(), &[][..])?;
                }
                resources.insert(rk.as_slice(), bytes.as_slice())?;
                if let Some((k, v)) = &version {
                    versions.insert(k.as_slice(), v.as_slice())?;
                }
                if let Some((k, v)) = &published {
                    provenance.insert(k.as_slice(), v.as_slice())?;
                }
                Ok(())
            });
        match done {
            Ok(()) => {}
            Err(TransactionError::Abort(e)) => return Err(e),
            Err(TransactionError::Storage(e)) => return Err(self.db_err(e)),
        }
        self.flush()
    }

    pub fn get_resource(&self, name: &str) -> Result<Option<ResourceRecord>, StoreError> {
        self.get_json(&self.inner.resources, name.as_bytes())
    }

    /// Every resource, by name.
    pub fn list_resources(&self) -> Result<Vec<ResourceRecord>, StoreError> {
        self.all_json(&self.inner.resources)
    }

    /// Every value of a tree, in key order.
    fn all_json<T: serde::de::DeserializeOwned>(
        &self,
        tree: &sled::Tree,
    ) -> Result<Vec<T>, StoreError> {
        let mut out = Vec::new();
        for entry in tree.iter() {
            let (k, v) = entry.map_err(|e| self.db_err(e))?;
            out.push(decode(&k, &v)?);
        }
        Ok(out)
    }

    /// The names of the resources indexed under `kind` (`type`: a category or a kind; `tag`)
    /// with `value`, in name order.
    pub fn resource_names_by(&self, kind: &str, value: &str) -> Result<Vec<String>, StoreError> {
        let mut out = Vec::new();
        let prefix = key(&[kind.as_bytes(), value.as_bytes(), b""]);
        for entry in self.inner.resource_index.scan_prefix(&prefix) {
            let (k, _) = entry.map_err(|e| self.db_err(e))?;
            out.push(String::from_utf8_lossy(&k[prefix.len()..]).into_owned());
        }
        Ok(out)
    }

    /// A resource's versions, oldest first. With `reveal`, secret values are opened; without,
    /// they are `None`.
    pub fn resource_versions(
        &self,
        name: &str,
        reveal: bool,
    ) -> Result<Vec<ResourceVersion>, StoreError> {
        let mut out = Vec::new();
        for entry in self
            .inner
            .resource_versions
            .scan_prefix(key(&[name.as_bytes(), b""]))
        {
            let (k, v) = entry.map_err(|e| self.db_err(e))?;
            out.push(self.open_version(name, &k, &v, reveal)?);
        }
        Ok(out)
    }

    /// One version of a resource (see `resource_versions` for `reveal`).
    pub fn resource_version(
        &self,
        name: &str,
        number: u64,
        reveal: bool,
    ) -> Result<Option<ResourceVersion>, StoreError> {
        let k = version_key(name, number);
        match self
            .inner
            .resource_versions
            .get(&k)
            .map_err(|e| self.db_err(e))?
        {
            Some(v) => self.open_version(name, &k, &v, reveal).map(Some),
            None => Ok(None),
        }
    }

    fn open_version(
        &self,
        name: &str,
        k: &[u8],
        v: &[u8],
        reveal: bool,
    ) -> Result<ResourceVersion, StoreError> {
        let mut version: ResourceVersion = decode(k, v)?;
        let number = version.number;
        for (env, creds) in version.environments.iter_mut() {
            for c in creds.iter_mut().filter(|c| c.secret) {
                let sealed = c.value.take().unwrap_or_default();
                if !reveal {
                    continue;
                }
                let bytes = crypto::decode_hex(&sealed).ok_or_else(|| {
                    StoreError::Crypto(format!(
                        "the sealed credential {} of {} is damaged (not hex)",
                        c.key,
                        show_key(k)
                    ))
                })?;
                let aad = credential_aad(name, number, env, &c.key);
                let plain = self.master_key(false)?.open(&aad, &bytes)?;
                c.value = Some(String::from_utf8_lossy(&plain).into_owned());
            }
        }
        Ok(version)
    }

    // ---- connections ------------------------------------------------------------------------

    /// Stores a connection (created or updated); flushed.
    pub fn put_connection(&self, connection: &ConnectionRecord) -> Result<(), StoreError> {
        self.put_json(
            &self.inner.connections,
            connection.name.as_bytes(),
            connection,
        )?;
        self.flush()
    }

    pub fn get_connection(&self, name: &str) -> Result<Option<ConnectionRecord>, StoreError> {
        self.get_json(&self.inner.connections, name.as_bytes())
    }

    /// Every connection, by name.
    pub fn list_connections(&self) -> Result<Vec<ConnectionRecord>, StoreError> {
        self.all_json(&self.inner.connections)
    }

    /// Removes a connection; whether there was one. Flushed.
    pub fn remove_connection(&self, name: &str) -> Result<bool, StoreError> {
        let old = self
            .inner
            .connections
            .remove(name.as_bytes())
            .map_err(|e| self.db_err(e))?;
        self.flush()?;
        Ok(old.is_some())
    }
}
