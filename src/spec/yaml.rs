//! The YAML layer: text in, a tree of spanned nodes out, within a parse budget.
//!
//! Instead of deserialising straight into the model (which stops at the first error), the text
//! becomes a generic [`Node`] tree where every node remembers where it came from. The converter in
//! `parse.rs` then walks that tree and reports every problem it finds. The tree comes from the YAML
//! parser's events directly (`events`, three times quicker) or, for whatever that road leaves
//! (anchors, tags, errors, the rarer number spellings), through serde-saphyr, whose reading and
//! messages are the reference.

mod events;
mod lines;

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::{Budget, Options, Spanned};

/// A position in the source text: 1-based line and column (in characters), and the width of the
/// thing it points at on that line (at least 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pos {
    pub line: u32,
    pub col: u32,
    pub len: u32,
}

impl Pos {
    pub fn new(line: u32, col: u32, len: u32) -> Pos {
        Pos {
            line,
            col,
            len: len.max(1),
        }
    }

    /// The same start, with another width.
    pub fn with_len(self, len: u32) -> Pos {
        Pos::new(self.line, self.col, len)
    }

    /// A position `chars` characters further along the same line.
    pub fn shifted(self, chars: u32, len: u32) -> Pos {
        Pos::new(self.line, self.col + chars, len)
    }

    fn from_location(loc: &serde_saphyr::Location) -> Pos {
        let line = u32::try_from(loc.line()).unwrap_or(u32::MAX);
        let col = u32::try_from(loc.column()).unwrap_or(u32::MAX);
        let len = u32::try_from(loc.span().len()).unwrap_or(1);
        Pos::new(line.max(1), col.max(1), len)
    }
}

/// One YAML node and where it stands.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub value: Value,
    pub pos: Pos,
}

/// The value of a node. Scalars keep the type YAML's core schema gave them.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>),
}

impl Value {
    /// What a user would call this kind of value, for "expected X, found Y" messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Int(_) => "an integer",
            Value::Float(_) => "a number",
            Value::Str(_) => "a string",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }
}

/// Limits that keep a hostile or broken file from using unbounded time or memory.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest accepted file, in bytes.
    pub max_bytes: usize,
    /// Deepest nesting of collections.
    pub max_depth: usize,
    /// Most alias (`*name`) uses.
    pub max_aliases: usize,
    /// Most nodes in the document, aliases expanded.
    pub max_nodes: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_bytes: 1024 * 1024,
            max_depth: 32,
            max_aliases: 256,
            max_nodes: 100_000,
        }
    }
}

/// Why a text could not be turned into a node tree.
#[derive(Debug, Clone, PartialEq)]
pub struct YamlError {
    pub message: String,
    pub pos: Pos,
}

/// Parses one YAML document into a spanned tree.
pub fn parse(text: &str, limits: &Limits) -> Result<Node, YamlError> {
    if text.len() > limits.max_bytes {
        return Err(YamlError {
            message: format!(
                "file is {} bytes, over the limit of {} bytes for a pipeline file",
                text.len(),
                limits.max_bytes
            ),
            pos: Pos::new(1, 1, 1),
        });
    }
    // Comments and document markers alone parse as a null document that starts past the last line;
    // say what is wrong and point at the start instead.
    let is_empty = text.lines().all(|line| {
        let line = line.trim();
        line.is_empty() || line.starts_with('#') || line == "---" || line == "..."
    });
    if is_empty {
        return Err(YamlError {
            message: "file is empty; expected a pipeline document".to_string(),
            pos: Pos::new(1, 1, 1),
        });
    }
    if let Some(root) = lines::load(text, limits) {
        return Ok(root);
    }
    match events::load(text, limits) {
        Some(root) => Ok(root),
        None => parse_with_serde(text, limits),
    }
}

/// The reference reading of a file, through serde-saphyr: slower than `events`, but it takes
/// every file on and says what is wrong with a broken one.
pub fn parse_with_serde(text: &str, limits: &Limits) -> Result<Node, YamlError> {
    let mut budget = Budget::default();
    budget.max_depth = limits.max_depth;
    budget.max_aliases = limits.max_aliases;
    budget.max_nodes = limits.max_nodes;
    budget.max_documents = 1;
    let mut options = Options::default();
    options.budget = Some(budget);
    options.with_snippet = false;
    // YAML 1.2 booleans only: `on:` must stay a key and `yes`/`no` stay strings (the Norway problem).
    options.strict_booleans = true;
    match serde_saphyr::from_str_with_options::<Spanned<SpannedValue>>(text, options) {
        Ok(root) => Ok(Node {
            value: root.value.0,
            pos: Pos::from_location(&root.referenced),
        }),
        Err(err) => {
            let pos = err
                .location()
                .filter(|loc| loc.line() > 0)
                .map(|loc| Pos::from_location(&loc))
                .unwrap_or(Pos::new(1, 1, 1));
            let message = describe(&err, limits).unwrap_or_else(|| clean_message(&err.to_string()));
            // The scanner blames the scalar before a tab-indented line; point at the tab.
            if message.ends_with("while scanning a plain scalar, found a tab")
                && let Some(tab) = indenting_tab(text, pos.line)
            {
                return Err(YamlError {
                    message: "invalid YAML: a tab cannot indent YAML; indent with spaces"
                        .to_string(),
                    pos: tab,
                });
            }
            Err(YamlError { message, pos })
        }
    }
}

/// The first tab in the indentation of a line after `line`.
fn indenting_tab(text: &str, line: u32) -> Option<Pos> {
    text.lines()
        .enumerate()
        .skip(line as usize)
        .find_map(|(index, l)| {
            let indent = &l[..l.len() - l.trim_start().len()];
            let col = indent.chars().position(|c| c == '\t')?;
            Some(Pos::new(index as u32 + 1, col as u32 + 1, 1))
        })
}

/// Our own words for the errors whose serde-saphyr message speaks to the programmer (`budget
/// breached: Depth { depth: 33 }`, "set DuplicateKeyPolicy in Options") rather than to the user.
fn describe(err: &serde_saphyr::Error, limits: &Limits) -> Option<String> {
    use serde_saphyr::budget::BudgetBreach;
    match err {
        serde_saphyr::Error::DuplicateMappingKey { key, .. } => Some(match key {
            Some(key) => format!("invalid YAML: duplicate key `{key}` in the same mapping"),
            None => "invalid YAML: duplicate key in the same mapping".to_string(),
        }),
        serde_saphyr::Error::Budget { breach, .. } => match breach {
            BudgetBreach::Documents { .. } => Some(
                "a pipeline file holds one YAML document; a second one starts here".to_string(),
            ),
            BudgetBreach::Depth { .. } => Some(format!(
                "the file nests deeper than {} levels, the limit for a pipeline file",
                limits.max_depth
            )),
            BudgetBreach::Aliases { .. } => Some(format!(
                "the file uses aliases (`*name`) more than {} times, the limit for a pipeline file",
                limits.max_aliases
            )),
            BudgetBreach::Nodes { .. } => Some(format!(
                "the file has more than {} values (aliases expanded), the limit for a pipeline file",
                limits.max_nodes
            )),
            _ => None,
        },
        _ => None,
    }
}

/// serde-saphyr appends the position to its messages; we print our own, so we drop it.
fn clean_message(raw: &str) -> String {
    let first = raw.lines().next().unwrap_or(raw).trim();
    let trimmed = match first.find(" at line ") {
        Some(idx) => &first[..idx],
        None => first,
    };
    let trimmed = trimmed.trim_start_matches("error: ").trim();
    if trimmed.is_empty() {
        "invalid YAML".to_string()
    } else {
        format!("invalid YAML: {trimmed}")
    }
}

/// A [`Value`] wrapper whose `Deserialize` asks for spans on every child.
struct SpannedValue(Value);

fn into_node(spanned: Spanned<SpannedValue>) -> Node {
    Node {
        value: spanned.value.0,
        pos: Pos::from_location(&spanned.referenced),
    }
}

impl<'de> Deserialize<'de> for SpannedValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ValueVisitor)
    }
}

struct ValueVisitor;

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = SpannedValue;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any YAML value")
    }

    fn visit_unit<E: de::Error>(self) -> Result<SpannedValue, E> {
        Ok(SpannedValue(Value::Null))
    }

    fn visit_none<E: de::Error>(self) -> Result<SpannedValue, E> {
        Ok(SpannedValue(Value::Null))
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<SpannedValue, D::Error> {
        SpannedValue::deserialize(d)
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<SpannedValue, E> {
        Ok(SpannedValue(Value::Bool(v)))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<SpannedValue, E> {
        Ok(SpannedValue(Value::Int(v)))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<SpannedValue, E> {
        Ok(SpannedValue(match i64::try_from(v) {
            Ok(i) => Value::Int(i),
            Err(_) => Value::Float(v as f64),
        }))
    }

    fn visit_i128<E: de::Error>(self, v: i128) -> Result<SpannedValue, E> {
        Ok(SpannedValue(match i64::try_from(v) {
            Ok(i) => Value::Int(i),
            Err(_) => Value::Float(v as f64),
        }))
    }

    fn visit_u128<E: de::Error>(self, v: u128) -> Result<SpannedValue, E> {
        Ok(SpannedValue(match i64::try_from(v) {
            Ok(i) => Value::Int(i),
            Err(_) => Value::Float(v as f64),
        }))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<SpannedValue, E> {
        Ok(SpannedValue(Value::Float(v)))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<SpannedValue, E> {
        Ok(SpannedValue(Value::Str(v.to_string())))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<SpannedValue, E> {
        Ok(SpannedValue(Value::Str(v)))
    }

    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<SpannedValue, E> {
        Ok(SpannedValue(Value::Str(
            String::from_utf8_lossy(v).into_owned(),
        )))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<SpannedValue, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Spanned<SpannedValue>>()? {
            items.push(into_node(item));
        }
        Ok(SpannedValue(Value::Seq(items)))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<SpannedValue, A::Error> {
        let mut entries = Vec::new();
        while let Some(key) = map.next_key::<Spanned<SpannedValue>>()? {
            let value = map.next_value::<Spanned<SpannedValue>>()?;
            entries.push((into_node(key), into_node(value)));
        }
        Ok(SpannedValue(Value::Map(entries)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_ok(text: &str) -> Node {
        match parse(text, &Limits::default()) {
            Ok(node) => node,
            Err(err) => panic!("unexpected error {err:?}"),
        }
    }

    #[test]
    fn spans_point_at_keys_and_values() {
        let root = parse_ok("a: 1\nlist:\n  - x\n  - name: yes\n");
        let Value::Map(entries) = &root.value else {
            panic!("not a map")
        };
        assert_eq!(entries[0].0.pos, Pos::new(1, 1, 1));
        assert_eq!(entries[0].1.value, Value::Int(1));
        assert_eq!(entries[0].1.pos.line, 1);
        assert_eq!(entries[0].1.pos.col, 4);
        let Value::Seq(items) = &entries[1].1.value else {
            panic!("not a seq")
        };
        assert_eq!(items[0].pos.line, 3);
        assert_eq!(items[0].pos.col, 5);
        let Value::Map(inner) = &items[1].value else {
            panic!("not a map")
        };
        assert_eq!(inner[0].0.pos, Pos::new(4, 5, 4));
        assert_eq!(inner[0].1.value, Value::Str("yes".into()));
    }

    #[test]
    fn quoted_numbers_stay_strings() {
        let root = parse_ok("a: \"1\"\nb: 2.5\nc: true\nd: ~\n");
        let Value::Map(entries) = root.value else {
            panic!("not a map")
        };
        assert_eq!(entries[0].1.value, Value::Str("1".into()));
        assert_eq!(entries[1].1.value, Value::Float(2.5));
        assert_eq!(entries[2].1.value, Value::Bool(true));
        assert_eq!(entries[3].1.value, Value::Null);
    }

    #[test]
    fn syntax_errors_have_a_position() {
        let err = parse("a: [1, 2\nb: 3\n", &Limits::default()).unwrap_err();
        assert!(err.pos.line >= 1, "{err:?}");
        assert!(err.message.starts_with("invalid YAML"), "{err:?}");
    }

    #[test]
    fn alias_bombs_hit_the_budget() {
        let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..12 {
            let prev = i - 1;
            text.push_str(&format!(
                "a{i}: &a{i} [*a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}]\n"
            ));
        }
        assert!(parse(&text, &Limits::default()).is_err());
    }

    #[test]
    fn deep_nesting_hits_the_budget() {
        let text = format!("{}1{}", "[".repeat(200), "]".repeat(200));
        assert!(parse(&text, &Limits::default()).is_err());
    }

    #[test]
    fn oversize_files_are_refused_before_parsing() {
        let limits = Limits {
            max_bytes: 10,
            ..Limits::default()
        };
        let err = parse("key: a long value\n", &limits).unwrap_err();
        assert!(err.message.contains("over the limit"));
    }
}
