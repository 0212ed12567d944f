//! `gantry/marketplace-publish@v1` in every executor: the resource a publish step declares,
//! resolved with the values of its run (outputs of the steps before it included). The local
//! executor publishes as the step runs; the Argo executor once the step's task has succeeded.

use super::{Publication, PublishedCredential, PublishedCredentials, Values};
use crate::spec::expr::Text;
use crate::spec::model::Resource;

/// The resource with every reference resolved, or which one has no value.
pub fn resolve(r: &Resource, values: &Values) -> Result<Publication, String> {
    let text = |t: &Text, what: &str| {
        t.render(|r| values.resolve(r))
            .map_err(|r| format!("resource {what}: `{{{{{r}}}}}` has no value"))
    };
    let mut properties = std::collections::BTreeMap::new();
    for (k, v) in &r.properties {
        properties.insert(k.clone(), text(v, &format!("property `{k}`"))?);
    }
    let mut credentials = Vec::with_capacity(r.connection_credentials.len());
    for set in &r.connection_credentials {
        let environments = set
            .environments
            .iter()
            .map(|e| text(e, "environment"))
            .collect::<Result<Vec<_>, _>>()?;
        let parameters = set
            .parameters
            .iter()
            .map(|p| {
                Ok(PublishedCredential {
                    key: p.key.clone(),
                    value: text(&p.value, &format!("credential `{}`", p.key))?,
                    is_secret: p.is_secret,
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        credentials.push(PublishedCredentials {
            environments,
            parameters,
        });
    }
    Ok(Publication {
        name: text(&r.name, "name")?,
        version: text(&r.version, "version")?,
        category: r.category,
        description: r
            .description
            .as_ref()
            .map(|d| text(d, "description"))
            .transpose()?,
        tags: r
            .tags
            .iter()
            .map(|t| text(t, "tag"))
            .collect::<Result<Vec<_>, _>>()?,
        properties,
        credentials,
    })
}
