//! Reading only the fields the payload rules look at.
//!
//! A push or pull request delivery is 5–30 KB of JSON, of which the rules read a dozen fields.
//! Parsed whole into a `serde_json::Value`, every string and object of it is allocated, and that
//! was the largest cost of taking a delivery in. `project` parses the same text in one pass but
//! keeps only the paths each forge's rules name (`FIELDS`), skipping everything else without
//! allocating; the result is a `Value` of the same shape, so the rules read it unchanged. In debug
//! builds `Fields::get` checks that every path a rule reads is listed here, so a rule that starts
//! reading a new field cannot silently find it missing.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::OnceLock;

use serde::Deserialize;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use crate::forge::Forge;

/// The paths each forge's rules read, from the top of the body. A path keeps the whole value at
/// its end (an object named here keeps all its fields); `[]` is not written: an array keeps, for
/// each element, the paths below it.
const GITHUB: &[&str] = &[
    "action",
    "after",
    "before",
    "deleted",
    "ref",
    "number",
    "pusher.name",
    "sender.login",
    "repository.full_name",
    "issue.number",
    "issue.pull_request",
    "comment.id",
    "comment.body",
    "comment.user.login",
    "comment.created_at",
    "pull_request.number",
    "pull_request.head.sha",
    "pull_request.head.ref",
    "pull_request.head.repo.full_name",
    "pull_request.base.ref",
    "pull_request.base.repo.full_name",
];

const GITLAB: &[&str] = &[
    "object_kind",
    "ref",
    "after",
    "before",
    "project.path_with_namespace",
    "user_username",
    "user.username",
    "object_attributes.iid",
    "object_attributes.id",
    "object_attributes.action",
    "object_attributes.oldrev",
    "object_attributes.last_commit.id",
    "object_attributes.source_branch",
    "object_attributes.target_branch",
    "object_attributes.source_project_id",
    "object_attributes.target_project_id",
    "object_attributes.noteable_type",
    "object_attributes.system",
    "object_attributes.note",
    "object_attributes.created_at",
    "merge_request.iid",
    "merge_request.last_commit.id",
];

const BITBUCKET: &[&str] = &[
    "repository.full_name",
    "actor",
    "push.changes.new.name",
    "push.changes.new.type",
    "push.changes.new.target.hash",
    "push.changes.old.name",
    "push.changes.old.target.hash",
    "pullrequest.id",
    "pullrequest.source.commit.hash",
    "pullrequest.source.branch.name",
    "pullrequest.source.repository.full_name",
    "pullrequest.destination.branch.name",
    "pullrequest.destination.repository.full_name",
    "comment.id",
    "comment.content.raw",
    "comment.created_on",
    "comment.user",
];

/// A tree of the kept paths: a node with no children keeps its whole value.
#[derive(Debug, Default)]
pub(super) struct Keep {
    children: BTreeMap<&'static str, Keep>,
}

impl Keep {
    fn build(paths: &[&'static str]) -> Keep {
        let mut root = Keep::default();
        for path in paths {
            let mut node = &mut root;
            for part in path.split('.') {
                node = node.children.entry(part).or_default();
            }
        }
        root
    }

    fn whole(&self) -> bool {
        self.children.is_empty()
    }

    /// Whether reading `path` (dotted, array indices written `[i]` after a key) stays inside
    /// what is kept.
    pub(super) fn covers(&self, path: &str) -> bool {
        let mut node = self;
        for part in path.split('.') {
            if node.whole() {
                return true;
            }
            let key = part.split('[').next().unwrap_or(part);
            match node.children.get(key) {
                Some(next) => node = next,
                None => return false,
            }
        }
        true
    }
}

/// The tree of `forge`'s paths, built once.
pub(super) fn keep(forge: Forge) -> &'static Keep {
    static TREES: OnceLock<[Keep; 3]> = OnceLock::new();
    let trees = TREES.get_or_init(|| {
        [
            Keep::build(GITHUB),
            Keep::build(GITLAB),
            Keep::build(BITBUCKET),
        ]
    });
    match forge {
        Forge::Github => &trees[0],
        Forge::Gitlab => &trees[1],
        Forge::Bitbucket => &trees[2],
    }
}

/// Parses `body` keeping only what `forge`'s rules read; an error where the body is not JSON.
pub(super) fn project(forge: Forge, body: &[u8]) -> Result<Value, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let value = Projected(keep(forge)).deserialize(&mut de)?;
    de.end()?;
    Ok(value)
}

/// A value read through a node of the tree.
struct Projected<'k>(&'k Keep);

impl<'de> DeserializeSeed<'de> for Projected<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        if self.0.whole() {
            return Value::deserialize(deserializer);
        }
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Projected<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        self.deserialize(d)
    }

    /// An array where an object with kept paths was expected: each element keeps those paths.
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(v) = seq.next_element_seed(Projected(self.0))? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key_seed(KeyOf(self.0))? {
            match key {
                Some((name, node)) => {
                    let v = map.next_value_seed(Projected(node))?;
                    out.insert(name, v);
                }
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(Value::Object(out))
    }
}

/// A key of an object: the key and its node when kept, `None` (nothing allocated) when not.
struct KeyOf<'k>(&'k Keep);

impl<'de, 'k> DeserializeSeed<'de> for KeyOf<'k> {
    type Value = Option<(String, &'k Keep)>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'k> Visitor<'_> for KeyOf<'k> {
    type Value = Option<(String, &'k Keep)>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(self.0.children.get(v).map(|node| (v.to_string(), node)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_kept_paths_are_read_and_their_values_are_whole() {
        let body = br#"{"action":"opened","number":7,"zen":"x","pull_request":{"number":7,
            "title":"big","head":{"sha":"abc","ref":"f","repo":null,"label":"l"},
            "base":{"ref":"main","repo":{"full_name":"a/b","id":1}}},
            "sender":{"login":"alice","id":3},"issue":{"number":1,"pull_request":{"url":"u"}}}"#;
        let v = project(Forge::Github, body).expect("json");
        assert_eq!(
            v,
            serde_json::json!({"action":"opened","number":7,"pull_request":{"number":7,
                "head":{"sha":"abc","ref":"f","repo":null},
                "base":{"ref":"main","repo":{"full_name":"a/b"}}},
                "sender":{"login":"alice"},"issue":{"number":1,"pull_request":{"url":"u"}}})
        );
    }

    #[test]
    fn arrays_keep_the_paths_below_them_in_every_element() {
        let body = br#"{"push":{"changes":[{"new":{"name":"main","type":"branch","target":
            {"hash":"h1","message":"m"}},"old":null,"commits":[1,2,3]}]},"actor":{"uuid":"u"}}"#;
        let v = project(Forge::Bitbucket, body).expect("json");
        assert_eq!(
            v,
            serde_json::json!({"push":{"changes":[{"new":{"name":"main","type":"branch",
                "target":{"hash":"h1"}},"old":null}]},"actor":{"uuid":"u"}})
        );
    }

    #[test]
    fn what_is_not_json_is_an_error_even_in_a_skipped_part() {
        assert!(project(Forge::Github, br#"{"zen": [1, 2"#).is_err());
        assert!(project(Forge::Github, br#"{"action": "x"} trailing"#).is_err());
        assert!(project(Forge::Github, b"").is_err());
    }

    /// Every sample delivery (tests/fixtures/webhooks/samples, real payloads from the forges'
    /// documentation) reads the same through the projection as through the whole body.
    #[test]
    fn every_sample_reads_the_same_projected_and_whole() {
        let samples: &[(Forge, &str, &str)] = &[
            (
                Forge::Github,
                "push",
                include_str!("../../../tests/fixtures/webhooks/samples/github-push.json"),
            ),
            (
                Forge::Github,
                "pull_request",
                include_str!(
                    "../../../tests/fixtures/webhooks/samples/github-pull_request-opened.json"
                ),
            ),
            (
                Forge::Github,
                "pull_request",
                include_str!(
                    "../../../tests/fixtures/webhooks/samples/github-pull_request-synchronize.json"
                ),
            ),
            (
                Forge::Github,
                "issue_comment",
                include_str!(
                    "../../../tests/fixtures/webhooks/samples/github-issue_comment-created-on-pr.json"
                ),
            ),
            (
                Forge::Gitlab,
                "Push Hook",
                include_str!("../../../tests/fixtures/webhooks/samples/gitlab-push-hook.json"),
            ),
            (
                Forge::Gitlab,
                "Merge Request Hook",
                include_str!(
                    "../../../tests/fixtures/webhooks/samples/gitlab-merge-request-hook.json"
                ),
            ),
            (
                Forge::Gitlab,
                "Note Hook",
                include_str!(
                    "../../../tests/fixtures/webhooks/samples/gitlab-note-hook-merge-request.json"
                ),
            ),
            (
                Forge::Bitbucket,
                "repo:push",
                include_str!("../../../tests/fixtures/webhooks/samples/bitbucket-repo-push.json"),
            ),
            (
                Forge::Bitbucket,
                "pullrequest:created",
                include_str!(
                    "../../../tests/fixtures/webhooks/samples/bitbucket-pullrequest-created.json"
                ),
            ),
            (
                Forge::Bitbucket,
                "pullrequest:comment_created",
                include_str!(
                    "../../../tests/fixtures/webhooks/samples/bitbucket-pullrequest-comment_created.json"
                ),
            ),
        ];
        for (forge, event, body) in samples {
            let whole: Value = serde_json::from_str(body).expect("sample is JSON");
            let projected = project(*forge, body.as_bytes()).expect("projects");
            assert!(
                projected.to_string().len() < body.len() / 2,
                "{forge} {event}"
            );
            let a = super::super::parse_value(*forge, Some(event), &whole);
            let b = super::super::parse_value(*forge, Some(event), &projected);
            assert_eq!(format!("{a:?}"), format!("{b:?}"), "{forge} {event}");
            assert!(
                !matches!(b, Ok(crate::forge::ForgeEvent::Ignored { .. })),
                "{forge} {event}: {b:?}"
            );
        }
    }

    #[test]
    fn covers_follows_the_tree_and_whole_values() {
        let k = keep(Forge::Bitbucket);
        assert!(k.covers("push.changes[0].new.target.hash"));
        assert!(k.covers("actor.uuid"));
        assert!(!k.covers("push.changes[0].commits"));
        assert!(!k.covers("links.html"));
    }
}
