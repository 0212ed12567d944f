//! The quick road from text to [`Node`]: the YAML parser's event stream folded into the tree
//! directly, without serde in between.
//!
//! serde-saphyr walks the same events but pays for its generality (a deserializer per node, a
//! budget observer per event, a typed visitor per scalar, spans wrapped and unwrapped); for the
//! untyped tree the spec wants that was two thirds of the YAML stage. This loader covers what
//! pipeline files hold: mappings, sequences and scalars of every style. Whatever it does not take
//! on, it leaves to serde-saphyr by answering `None`: anchors and aliases, tags, merge keys (`<<`),
//! keys that are not strings, a repeated key, a plain scalar that might be a number in a spelling
//! it does not resolve itself, a second document, a file near a limit, and every syntax error. So
//! every file still gets serde-saphyr's exact reading and messages where this one is not sure, and
//! the test `the_quick_tree_is_serde_saphyrs_tree` holds the two to the same tree.

use std::borrow::Cow;
use std::collections::HashSet;

use granit_parser::{Event, Parser, ScalarStyle, Span};

use super::{Limits, Node, Pos, Value};

/// A collection being read.
enum Frame {
    Seq {
        items: Vec<Node>,
        pos: Pos,
    },
    Map {
        entries: Vec<(Node, Node)>,
        pos: Pos,
        /// A key read, waiting for its value.
        key: Option<Node>,
        /// The keys, once the mapping is too long to search them one by one.
        seen: Option<HashSet<String>>,
    },
}

/// Mappings longer than this look a repeated key up in a set.
const SCAN_KEYS: usize = 16;

/// The tree of `text`, or `None` where serde-saphyr must decide (see the module's comment).
pub(super) fn load(text: &str, limits: &Limits) -> Option<Node> {
    let mut parser = Parser::new_from_str(text);
    let mut stack: Vec<Frame> = Vec::new();
    let mut root: Option<Node> = None;
    let mut documents = 0usize;
    let mut nodes = 0usize;
    // Stay well inside serde-saphyr's budget: a file near a limit is for it to judge.
    let max_depth = limits.max_depth.saturating_sub(1);
    let max_nodes = limits.max_nodes / 2;
    loop {
        let (event, span) = parser.next_event()?.ok()?;
        let node = match event {
            Event::StreamStart | Event::DocumentEnd => continue,
            Event::StreamEnd => break,
            Event::DocumentStart(..) => {
                documents += 1;
                if documents > 1 {
                    return None;
                }
                continue;
            }
            Event::Scalar(text, style, anchor, tag) => {
                if anchor != 0 || tag.is_some() {
                    return None;
                }
                Node {
                    value: scalar(text, style)?,
                    pos: pos(&span),
                }
            }
            Event::SequenceStart(_, anchor, tag) => {
                if anchor != 0 || tag.is_some() || stack.len() >= max_depth {
                    return None;
                }
                stack.push(Frame::Seq {
                    items: Vec::new(),
                    pos: pos(&span),
                });
                continue;
            }
            Event::MappingStart(_, anchor, tag) => {
                if anchor != 0 || tag.is_some() || stack.len() >= max_depth {
                    return None;
                }
                stack.push(Frame::Map {
                    entries: Vec::new(),
                    pos: pos(&span),
                    key: None,
                    seen: None,
                });
                continue;
            }
            Event::SequenceEnd => match stack.pop()? {
                Frame::Seq { items, pos } => Node {
                    value: Value::Seq(items),
                    pos,
                },
                Frame::Map { .. } => return None,
            },
            Event::MappingEnd => match stack.pop()? {
                Frame::Map {
                    entries,
                    pos,
                    key: None,
                    ..
                } => Node {
                    value: Value::Map(entries),
                    pos,
                },
                _ => return None,
            },
            _ => return None,
        };
        nodes += 1;
        if nodes > max_nodes {
            return None;
        }
        match stack.last_mut() {
            None if root.is_none() => root = Some(node),
            None => return None,
            Some(Frame::Seq { items, .. }) => items.push(node),
            Some(Frame::Map {
                entries, key, seen, ..
            }) => match key.take() {
                Some(key) => entries.push((key, node)),
                None => {
                    let Value::Str(name) = &node.value else {
                        return None;
                    };
                    if name == "<<" || repeated(entries, seen, name) {
                        return None;
                    }
                    *key = Some(node);
                }
            },
        }
    }
    if stack.is_empty() { root } else { None }
}

/// Whether `name` is a key of `entries` already; remembers it.
pub(super) fn repeated(
    entries: &[(Node, Node)],
    seen: &mut Option<HashSet<String>>,
    name: &str,
) -> bool {
    if entries.len() < SCAN_KEYS {
        return entries
            .iter()
            .any(|(k, _)| matches!(&k.value, Value::Str(k) if k == name));
    }
    let seen = seen.get_or_insert_with(|| {
        entries
            .iter()
            .filter_map(|(k, _)| match &k.value {
                Value::Str(k) => Some(k.clone()),
                _ => None,
            })
            .collect()
    });
    !seen.insert(name.to_string())
}

/// Where an event stands, as serde-saphyr reports it: 1-based line and column, and the width of
/// the span in characters.
fn pos(span: &Span) -> Pos {
    let line = u32::try_from(span.start.line()).unwrap_or(u32::MAX);
    let col = u32::try_from(span.start.col() + 1).unwrap_or(u32::MAX);
    let len = u32::try_from(span.len()).unwrap_or(1);
    Pos::new(line.max(1), col.max(1), len)
}

/// A scalar resolved by YAML 1.2's core schema as serde-saphyr does it (booleans strictly), or
/// `None` for a plain scalar that may be a number in a spelling left to serde-saphyr (`+1`, `0x1f`,
/// `1e3`, `.5`, `007`, `1_000`, an integer beyond 64 bits).
pub(super) fn scalar(text: Cow<'_, str>, style: ScalarStyle) -> Option<Value> {
    if style != ScalarStyle::Plain {
        return Some(Value::Str(text.into_owned()));
    }
    match &*text {
        "" | "~" | "null" | "Null" | "NULL" => return Some(Value::Null),
        "true" | "True" | "TRUE" => return Some(Value::Bool(true)),
        "false" | "False" | "FALSE" => return Some(Value::Bool(false)),
        _ => {}
    }
    let unsigned = text.strip_prefix(['-', '+']).unwrap_or(&text);
    match unsigned.as_bytes().first() {
        Some(b'0'..=b'9') => {}
        // `.inf` and `.nan` and their spellings are floats; `.5` may be one.
        Some(b'.') => {
            let rest = &unsigned[1..];
            let number = rest.starts_with(|c: char| c.is_ascii_digit())
                || rest.eq_ignore_ascii_case("inf")
                || rest.eq_ignore_ascii_case("nan");
            return if number {
                None
            } else {
                Some(Value::Str(text.into_owned()))
            };
        }
        _ => return Some(Value::Str(text.into_owned())),
    }
    // A byte no integer or float spelling uses makes it a string (`10m`, `1.2.3-rc`, `3 pods`).
    let numeric = |b: u8| b.is_ascii_hexdigit() || b"._+-xXoO".contains(&b);
    if !text.bytes().all(numeric) {
        return Some(Value::Str(text.into_owned()));
    }
    // A number has one point at most (`1.2.3` is a version).
    if text.bytes().filter(|&b| b == b'.').count() > 1 {
        return Some(Value::Str(text.into_owned()));
    }
    if text.starts_with('+') {
        return None;
    }
    let digits = unsigned.as_bytes();
    if digits.iter().all(u8::is_ascii_digit) {
        if digits.len() > 1 && digits[0] == b'0' {
            return None;
        }
        return text.parse::<i64>().ok().map(Value::Int);
    }
    // `12.5`: digits, one point, digits.
    let (whole, fraction) = unsigned.split_once('.')?;
    let simple = !whole.is_empty()
        && !fraction.is_empty()
        && whole.bytes().all(|b| b.is_ascii_digit())
        && fraction.bytes().all(|b| b.is_ascii_digit());
    if !simple {
        return None;
    }
    text.parse::<f64>()
        .ok()
        .filter(|v| v.is_finite())
        .map(Value::Float)
}

#[cfg(test)]
mod tests {
    use super::super::{Limits, Node, Value, parse_with_serde};
    use super::load;

    /// Every pipeline file of the repository (fixtures, examples, valid and broken), and every
    /// scalar spelling below as a value and as a key: where the quick road gives a tree, it is the
    /// one serde-saphyr gives.
    #[test]
    fn the_quick_tree_is_serde_saphyrs_tree() {
        let mut texts = pipeline_files();
        let files = texts.len();
        assert!(files > 200, "{files} files");
        for scalar in SCALARS {
            texts.push((
                format!("value {scalar}"),
                format!("a: {scalar}\nb: [{scalar}, x]\n"),
            ));
            texts.push((format!("key {scalar}"), format!("{scalar}: 1\nz: 2\n")));
        }
        for edge in EDGES {
            texts.push((format!("edge {edge:?}"), edge.to_string()));
        }
        let limits = Limits::default();
        let (mut quick, mut quickest) = (0, 0);
        for (name, text) in &texts {
            let by_lines = super::super::lines::load(text, &limits);
            let by_events = load(text, &limits);
            if by_lines.is_some() {
                quickest += 1;
                assert_eq!(
                    by_lines, by_events,
                    "{name}: lines and events differ:\n{text}"
                );
            }
            let Some(tree) = by_events else {
                continue;
            };
            quick += 1;
            match parse_with_serde(text, &limits) {
                Ok(reference) => assert_eq!(tree, reference, "{name}:\n{text}"),
                Err(err) => panic!(
                    "{name}: the quick road read what serde-saphyr refuses ({err:?}):\n{text}"
                ),
            }
        }
        // Most files take the quick roads (the broken ones are left to serde-saphyr).
        assert!(quick > texts.len() / 2, "{quick} of {}", texts.len());
        assert!(quickest > texts.len() / 3, "{quickest} of {}", texts.len());
    }

    /// The first node where two trees differ, for a failure's message.
    fn first_difference(left: &Node, right: &Node) -> String {
        fn flat(node: &Node, out: &mut Vec<String>) {
            match &node.value {
                Value::Seq(items) => {
                    out.push(format!("list at {:?}", node.pos));
                    items.iter().for_each(|item| flat(item, out));
                }
                Value::Map(entries) => {
                    out.push(format!("mapping at {:?}", node.pos));
                    for (key, value) in entries {
                        flat(key, out);
                        flat(value, out);
                    }
                }
                value => out.push(format!("{value:?} at {:?}", node.pos)),
            }
        }
        let (mut a, mut b) = (Vec::new(), Vec::new());
        flat(left, &mut a);
        flat(right, &mut b);
        a.push("(end)".into());
        b.push("(end)".into());
        let (x, y) = a
            .iter()
            .zip(&b)
            .find(|(x, y)| x != y)
            .unwrap_or((&a[0], &b[0]));
        format!("quick road: {x}\nreference:  {y}")
    }

    /// Every pipeline file of the repository, named by its path.
    fn pipeline_files() -> Vec<(String, String)> {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut texts = Vec::new();
        let mut dirs = vec![root.join("tests/fixtures"), root.join("examples")];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).unwrap().map(Result::unwrap) {
                let path = entry.path();
                if path.is_dir() {
                    dirs.push(path);
                } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                    texts.push((
                        path.display().to_string(),
                        std::fs::read_to_string(&path).unwrap(),
                    ));
                }
            }
        }
        texts.sort();
        texts
    }

    /// The line reader takes on only what it reads right: every file it takes, mutated a hundred
    /// times by one to three of these (a YAML indicator, a space, a line break or a tab put in;
    /// bytes taken out; a line repeated, or moved in or out), is either left to the parser or read
    /// as serde-saphyr reads it.
    #[test]
    fn the_line_reader_reads_mutated_files_as_serde_saphyr_does() {
        const INSERTS: &[&str] = &[
            " ", "  ", "\n", ": ", " #", "#", "- ", "-", "\"", "'", "|", "|-", "|+", ">", "[", "]",
            "{", "}", ",", "&a ", "*a", "!x ", "\t", "---\n", "x", "\n  ", ":", "? ", "<<: ", "\\",
            "%", "@", "`", "\n\n", "1", ".", "~", "null", "\"\\q\"",
        ];
        let limits = Limits::default();
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut random = |below: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % below.max(1) as u64) as usize
        };
        let (mut tried, mut taken) = (0, 0);
        for (name, text) in pipeline_files() {
            if super::super::lines::load(&text, &limits).is_none() {
                continue;
            }
            for _ in 0..100 {
                let mut mutant = text.clone();
                for _ in 0..1 + random(3) {
                    let text = &mutant;
                    let mut at = random(text.len() + 1);
                    while !text.is_char_boundary(at) {
                        at -= 1;
                    }
                    let lines: Vec<&str> = text.split('\n').collect();
                    let line = random(lines.len());
                    let next = match random(4) {
                        0 => format!(
                            "{}{}{}",
                            &text[..at],
                            INSERTS[random(INSERTS.len())],
                            &text[at..]
                        ),
                        1 => {
                            let mut end = (at + 1 + random(3)).min(text.len());
                            while !text.is_char_boundary(end) {
                                end += 1;
                            }
                            format!("{}{}", &text[..at], &text[end..])
                        }
                        2 => {
                            let mut lines = lines.clone();
                            lines.insert(line, lines[line]);
                            lines.join("\n")
                        }
                        _ => {
                            let mut lines: Vec<String> =
                                lines.iter().map(|l| l.to_string()).collect();
                            let shift = random(3);
                            if random(2) == 0 {
                                lines[line].insert_str(0, &" ".repeat(shift + 1));
                            } else {
                                let spaces = lines[line].len() - lines[line].trim_start().len();
                                lines[line].drain(..spaces.min(shift + 1));
                            }
                            lines.join("\n")
                        }
                    };
                    mutant = next;
                }
                tried += 1;
                let Some(tree) = super::super::lines::load(&mutant, &limits) else {
                    continue;
                };
                taken += 1;
                match parse_with_serde(&mutant, &limits) {
                    Ok(reference) => assert!(
                        tree == reference,
                        "{name} mutated:\n{mutant}\n{}",
                        first_difference(&tree, &reference)
                    ),
                    Err(err) => panic!(
                        "{name} mutated: the line reader read what serde-saphyr refuses ({err:?}):\n{mutant}"
                    ),
                }
            }
        }
        // Many mutants stay in the reader's shape (a space in a string, a line repeated in a list).
        assert!(taken * 10 > tried, "{taken} of {tried}");
    }

    /// Shapes the mutations once found the line reader wrong on, and others near its edges.
    const EDGES: &[&str] = &[
        "  ---\na: 1\n",
        "# only a comment\n",
        "---\na: 1\n",
        "a:\n- 1\n- k: v\n  j: 2\n",
        "a:\n- k: v\n  j: 2\n",
        "a: |\n  x\n\n\n# c\nb: 1\n",
        "a:\n  b: |\n    x\n  # c\n  c: |-\n    z\n",
        "a: |\n  z",
        "- a\n- - b\n  - c: d\n",
        "a: [-]\n",
        "a: [a-, -a]\n",
        "a: {b: [c, {d: e}]}\n",
        "a: 'it''s' # c\nb: \"q\\\"\" #\n",
    ];

    const SCALARS: &[&str] = &[
        "1",
        "0",
        "-0",
        "-1",
        "+1",
        "007",
        "08",
        "1_000",
        "0x1f",
        "0X1F",
        "0o17",
        "0O17",
        "0b101",
        "0B1",
        "1.5",
        "-1.5",
        "+1.5",
        "1.",
        ".5",
        "-.5",
        "1e3",
        "1E3",
        "1.5e-3",
        "-1e+3",
        "1e999",
        "9223372036854775807",
        "9223372036854775808",
        "-9223372036854775808",
        "-9223372036854775809",
        "18446744073709551616",
        ".inf",
        "-.inf",
        "+.inf",
        ".Inf",
        ".INF",
        ".nan",
        ".NaN",
        ".NAN",
        "-.nan",
        "inf",
        "nan",
        "-inf",
        "infinity",
        "NaN",
        ".git",
        ".5x",
        "1.2.3",
        "1.2.3-rc1",
        "10m",
        "1h30m",
        "30s",
        "1d",
        "1f",
        "0xg",
        "12:30",
        "1:2:3",
        "2024-01-01",
        "2024-01-01T10:00:00Z",
        "true",
        "True",
        "TRUE",
        "tRue",
        "false",
        "False",
        "FALSE",
        "yes",
        "no",
        "on",
        "off",
        "y",
        "n",
        "null",
        "Null",
        "NULL",
        "nUll",
        "~",
        "''",
        "\"\"",
        "'1'",
        "\"1\"",
        "\"true\"",
        "'null'",
        "-",
        "--",
        "--flag",
        "-x",
        "+",
        "+x",
        ".",
        "..",
        "0.",
        "00",
        "0.0",
        "-0.0",
        "1-2",
        "1+2",
        "1..2",
        "x1",
        "a b",
        "\"a\\tb\"",
        "'it''s'",
        "\"\\u00e9\"",
        "é",
        "1é",
        "$HOME",
        "${{ x }}",
        "\"{{ x }}\"",
        "|\n  lit\n",
        ">\n  fold\n  ed\n",
    ];
}
