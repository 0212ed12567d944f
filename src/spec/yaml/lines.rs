//! The quickest road from text to [`Node`], for the YAML pipeline files are mostly written in: block
//! mappings and sequences by indentation, one-line flow collections, one-line quoted and plain
//! scalars, and literal block scalars (`|`, `|-`), in ASCII.
//!
//! The YAML parser (`events`) reads such a file a character at a time through a general scanner;
//! this reader takes it a line at a time and is several times quicker. It is not a YAML parser: at
//! anything outside that shape, or anything it is not sure of (a tab, a multi-line plain or quoted
//! scalar, an empty value, a folded scalar, an anchor, a tag, a directive, a comment where a
//! continuation could be, a key that is not a simple word, a repeated key), it answers `None` and
//! the file is read by `events`, then serde-saphyr. The positions it gives are the parser's
//! (a block collection at its first key or dash, or for a sequence under a key at the same indent,
//! at its first item; a block scalar from its first content character on to the next token), and
//! the tests in `events` hold all three roads to the same tree, over every fixture and over files
//! mutated at random.

use std::borrow::Cow;
use std::collections::HashSet;

use granit_parser::ScalarStyle;

use super::events::{repeated, scalar};
use super::{Limits, Node, Pos, Value};

/// One line of the file.
#[derive(Clone, Copy)]
struct Line {
    /// Byte offset of its first character.
    start: usize,
    /// Byte offset of its end, before the line break.
    end: usize,
    /// Spaces before its content (moved past a `- ` for a collection that starts on a dash's line).
    indent: usize,
}

struct Reader<'t> {
    text: &'t str,
    lines: Vec<Line>,
    /// The next line to read.
    next: usize,
    nodes: usize,
    max_nodes: usize,
    max_depth: usize,
}

/// The tree of `text`, or `None` for the next road to read it.
pub(super) fn load(text: &str, limits: &Limits) -> Option<Node> {
    if !text.is_ascii() || text.contains(['\t', '\r']) {
        return None;
    }
    let mut lines = Vec::with_capacity(text.len() / 24);
    let mut start = 0;
    for piece in text.split('\n') {
        let end = start + piece.len();
        let indent = piece.len() - piece.trim_start_matches(' ').len();
        lines.push(Line { start, end, indent });
        start = end + 1;
    }
    let mut reader = Reader {
        text,
        lines,
        next: 0,
        nodes: 0,
        max_nodes: limits.max_nodes / 2,
        max_depth: limits.max_depth.saturating_sub(1),
    };
    // Directives, document markers and a second document are for the parser; one `---` first is
    // fine.
    reader.skip_blank();
    // At the margin only: an indented `---` is a scalar.
    if reader.next < reader.lines.len() && reader.line(reader.next) == "---" {
        reader.next += 1;
    }
    let first = reader.next;
    if reader.lines[first..].iter().any(|line| {
        let c = &text[line.start..line.end];
        c.starts_with("---") || c.starts_with("...") || c.starts_with('%')
    }) {
        return None;
    }
    reader.skip_blank();
    if reader.next >= reader.lines.len() || reader.lines[reader.next].indent != 0 {
        return None;
    }
    let root = reader.block(0, 0)?;
    reader.skip_blank();
    (reader.next == reader.lines.len()).then_some(root)
}

/// Whether a plain scalar may start with this byte (`-`, `?` and `:` only before a character that
/// is neither a space nor a flow indicator).
fn plain_start(c: &str) -> bool {
    match c.as_bytes() {
        [] => false,
        [b'-' | b'?' | b':', next, ..] => !b" ,[]{}".contains(next),
        [first, ..] => !b"-?:,[]{}#&*!|>'\"%@`".contains(first),
    }
}

/// `key: rest` or `key:` at the end of a line, for a key of plain word characters.
fn key_split(c: &str) -> Option<(&str, &str)> {
    let colon = c.find(':')?;
    let (key, rest) = (&c[..colon], &c[colon + 1..]);
    let word = |b: u8| b.is_ascii_alphanumeric() || b"_-./".contains(&b);
    let ok = !key.is_empty()
        && key.bytes().all(word)
        && plain_start(key)
        && (rest.is_empty() || rest.starts_with(' '));
    ok.then_some((key, rest))
}

/// Whether what follows a value on its line is nothing or a comment.
fn only_comment(rest: &str) -> bool {
    let trimmed = rest.trim_start_matches(' ');
    trimmed.is_empty() || (trimmed.starts_with('#') && trimmed.len() < rest.len())
}

/// A quoted scalar that opens at `at` and closes on the same line: its value and the offset just
/// past the closing quote.
fn quoted(line: &str, at: usize) -> Option<(String, usize)> {
    let bytes = line.as_bytes();
    let quote = bytes[at];
    let mut out = String::new();
    let mut i = at + 1;
    let mut run = i;
    while i < bytes.len() {
        match (quote, bytes[i]) {
            (b'"', b'\\') => {
                out.push_str(&line[run..i]);
                out.push(match bytes.get(i + 1)? {
                    b'"' => '"',
                    b'\\' => '\\',
                    b'/' => '/',
                    b'n' => '\n',
                    b't' => '\t',
                    _ => return None,
                });
                i += 2;
                run = i;
            }
            (b'\'', b'\'') if bytes.get(i + 1) == Some(&b'\'') => {
                out.push_str(&line[run..=i]);
                i += 2;
                run = i;
            }
            (q, b) if q == b => {
                out.push_str(&line[run..i]);
                return Some((out, i + 1));
            }
            _ => i += 1,
        }
    }
    None
}

impl<'t> Reader<'t> {
    fn content(&self, i: usize) -> &'t str {
        let text = self.text;
        match self.lines.get(i) {
            Some(line) => &text[line.start + line.indent..line.end],
            None => "",
        }
    }

    /// The whole text of line `i`.
    fn line(&self, i: usize) -> &'t str {
        let text = self.text;
        let line = self.lines[i];
        &text[line.start..line.end]
    }

    fn skip_blank(&mut self) {
        while self.next < self.lines.len() {
            let c = self.content(self.next);
            if !(c.is_empty() || c.starts_with('#')) {
                break;
            }
            self.next += 1;
        }
    }

    /// Counts a node; `None` near the budget.
    fn count(&mut self) -> Option<()> {
        self.nodes += 1;
        (self.nodes <= self.max_nodes).then_some(())
    }

    /// The block collection whose first line is the next one, indented by `indent`.
    fn block(&mut self, indent: usize, depth: usize) -> Option<Node> {
        if depth >= self.max_depth {
            return None;
        }
        let c = self.content(self.next);
        if c == "-" || c.starts_with("- ") {
            self.seq(indent, depth, false)
        } else if key_split(c).is_some() {
            self.map(indent, depth)
        } else {
            None
        }
    }

    /// The next line of a collection indented by `indent`: `Some(None)` where the collection ends
    /// (a line less indented, or the end of the file), `None` at a line more indented.
    fn next_at(&mut self, indent: usize) -> Option<Option<usize>> {
        self.skip_blank();
        match self.lines.get(self.next) {
            Some(line) if line.indent > indent => None,
            Some(line) if line.indent == indent => Some(Some(self.next)),
            _ => Some(None),
        }
    }

    fn map(&mut self, indent: usize, depth: usize) -> Option<Node> {
        let first = self.next;
        let mut entries: Vec<(Node, Node)> = Vec::new();
        let mut seen: Option<HashSet<String>> = None;
        while let Some(i) = self.next_at(indent)? {
            let (key, rest) = key_split(self.content(i))?;
            let Some(Value::Str(name)) = scalar(Cow::Borrowed(key), ScalarStyle::Plain) else {
                return None;
            };
            if name == "<<" || repeated(&entries, &mut seen, &name) {
                return None;
            }
            self.count()?;
            let width = key.len();
            let key = Node {
                value: Value::Str(name),
                pos: Pos::new(i as u32 + 1, indent as u32 + 1, width as u32),
            };
            let value = self.value(i, indent, indent + width + 1, rest, depth, false)?;
            entries.push((key, value));
        }
        Some(Node {
            value: Value::Map(entries),
            pos: Pos::new(first as u32 + 1, indent as u32 + 1, 0),
        })
    }

    /// A block sequence whose dashes stand at `indent`; `indentless` when it is the value of a key
    /// at that same indent.
    fn seq(&mut self, indent: usize, depth: usize, indentless: bool) -> Option<Node> {
        let first = self.next;
        let pos = if indentless {
            // The parser places such a sequence at its first item.
            let after = &self.content(first)[1..];
            let item = after.trim_start_matches(' ');
            if item.is_empty() {
                return None;
            }
            let col = indent + 1 + after.len() - item.len();
            Pos::new(first as u32 + 1, col as u32 + 1, 0)
        } else {
            Pos::new(first as u32 + 1, indent as u32 + 1, 0)
        };
        let mut items = Vec::new();
        while let Some(i) = self.next_at(indent)? {
            let c = self.content(i);
            if !(c == "-" || c.starts_with("- ")) {
                if indentless {
                    break;
                }
                return None;
            }
            let rest = &c[1..];
            let trimmed = rest.trim_start_matches(' ');
            let col = indent + 1 + rest.len() - trimmed.len();
            self.count()?;
            let item =
                if trimmed.starts_with("- ") || trimmed == "-" || key_split(trimmed).is_some() {
                    // A collection that starts on the dash's line: read the rest of the line as if
                    // it were indented to where it starts.
                    self.lines[i].indent = col;
                    self.block(col, depth + 1)?
                } else {
                    self.value(i, indent, indent + 1, rest, depth, true)?
                };
            items.push(item);
        }
        Some(Node {
            value: Value::Seq(items),
            pos,
        })
    }

    /// The value after a key's colon or a dash on line `i`: `rest` is the line from column `col`
    /// on; `indent` is the key's or dash's.
    fn value(
        &mut self,
        i: usize,
        indent: usize,
        col: usize,
        rest: &str,
        depth: usize,
        in_seq: bool,
    ) -> Option<Node> {
        let trimmed = rest.trim_start_matches(' ');
        let col = col + rest.len() - trimmed.len();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            // The value is on the lines below.
            self.next = i + 1;
            self.skip_blank();
            let next = self.lines.get(self.next)?;
            if next.indent > indent {
                return self.block(next.indent, depth + 1);
            }
            let c = self.content(self.next);
            if !in_seq && next.indent == indent && (c == "-" || c.starts_with("- ")) {
                return self.seq(indent, depth + 1, true);
            }
            return None;
        }
        self.count()?;
        let line = self.line(i);
        let node = match trimmed.as_bytes()[0] {
            b'|' => return self.literal(i, indent, trimmed),
            b'[' | b'{' => {
                let (node, end) = self.flow(i, line, col, depth + 1)?;
                only_comment(&line[end..]).then_some(node)?
            }
            b'"' | b'\'' => {
                let (value, end) = quoted(line, col)?;
                only_comment(&line[end..]).then_some(Node {
                    value: Value::Str(value),
                    pos: Pos::new(i as u32 + 1, col as u32 + 1, (end - col) as u32),
                })?
            }
            _ => {
                if !plain_start(trimmed) {
                    return None;
                }
                let text = match trimmed.find(" #") {
                    Some(comment) => &trimmed[..comment],
                    None => trimmed,
                }
                .trim_end_matches(' ');
                if text.contains(": ") || text.ends_with(':') {
                    return None;
                }
                Node {
                    value: scalar(Cow::Borrowed(text), ScalarStyle::Plain)?,
                    pos: Pos::new(i as u32 + 1, col as u32 + 1, text.len() as u32),
                }
            }
        };
        // A more indented line below would continue the value, or be an error.
        self.next = i + 1;
        self.skip_blank();
        match self.lines.get(self.next) {
            Some(next) if next.indent > indent => None,
            _ => Some(node),
        }
    }

    /// A literal block scalar (`|` or `|-`) whose header is `header` on line `i`, under a key or
    /// dash indented by `indent`.
    fn literal(&mut self, i: usize, indent: usize, header: &str) -> Option<Node> {
        let (strip, after) = match header.strip_prefix("|-") {
            Some(after) => (true, after),
            None => (false, &header[1..]),
        };
        if !only_comment(after) {
            return None;
        }
        let first = i + 1;
        let own = *self.lines.get(first)?;
        let content_indent = own.indent;
        if own.start + own.indent == own.end || content_indent <= indent {
            return None;
        }
        let mut last = first;
        let mut k = first;
        while let Some(line) = self.lines.get(k) {
            if line.start == line.end {
                k += 1;
                continue;
            }
            if line.start + line.indent == line.end {
                return None;
            }
            if line.indent < content_indent {
                if line.indent > indent {
                    return None;
                }
                break;
            }
            last = k;
            k += 1;
        }
        // A last line without a line break (the file's end) is left to the parser.
        if self.lines[last].end == self.text.len() {
            return None;
        }
        let mut value = String::new();
        for (n, line) in self.lines[first..=last].iter().enumerate() {
            if n > 0 {
                value.push('\n');
            }
            if line.start != line.end {
                value.push_str(&self.text[line.start + content_indent..line.end]);
            }
        }
        if !strip {
            value.push('\n');
        }
        // The parser's span runs on to the next token: past the blank lines, to the content (a
        // comment too) of the line that ends the scalar.
        let start = own.start + content_indent;
        let end = match self.lines.get(k) {
            Some(line) => line.start + line.indent,
            None => self.text.len(),
        };
        self.next = last + 1;
        Some(Node {
            value: Value::Str(value),
            pos: Pos::new(
                first as u32 + 1,
                content_indent as u32 + 1,
                (end - start) as u32,
            ),
        })
    }

    /// A flow collection that opens at `at` on line `i` and closes on it: the node and the offset
    /// just past its closing bracket.
    fn flow(&mut self, i: usize, line: &str, at: usize, depth: usize) -> Option<(Node, usize)> {
        if depth >= self.max_depth {
            return None;
        }
        let bytes = line.as_bytes();
        let is_map = bytes[at] == b'{';
        let close = if is_map { b'}' } else { b']' };
        let pos = Pos::new(i as u32 + 1, at as u32 + 1, 1);
        let mut items = Vec::new();
        let mut entries: Vec<(Node, Node)> = Vec::new();
        let mut seen = None;
        let mut p = at + 1;
        let skip = |mut p: usize| {
            while bytes.get(p) == Some(&b' ') {
                p += 1;
            }
            p
        };
        p = skip(p);
        if bytes.get(p) == Some(&close) {
            p += 1;
        } else {
            loop {
                if is_map {
                    let (key, end) = self.flow_item(i, line, p, depth, true)?;
                    let Value::Str(name) = &key.value else {
                        return None;
                    };
                    if name == "<<" || repeated(&entries, &mut seen, name) {
                        return None;
                    }
                    if bytes.get(end) != Some(&b':') || bytes.get(end + 1) != Some(&b' ') {
                        return None;
                    }
                    let (value, end) = self.flow_item(i, line, skip(end + 1), depth, false)?;
                    entries.push((key, value));
                    p = skip(end);
                } else {
                    let (item, end) = self.flow_item(i, line, p, depth, false)?;
                    items.push(item);
                    p = skip(end);
                }
                match bytes.get(p) {
                    Some(b',') => {
                        p = skip(p + 1);
                        if bytes.get(p) == Some(&close) {
                            return None;
                        }
                    }
                    Some(&b) if b == close => {
                        p += 1;
                        break;
                    }
                    _ => return None,
                }
            }
        }
        let value = if is_map {
            Value::Map(entries)
        } else {
            Value::Seq(items)
        };
        Some((Node { value, pos }, p))
    }

    /// One element of a flow collection at `at` (a key of a flow mapping when `key`).
    fn flow_item(
        &mut self,
        i: usize,
        line: &str,
        at: usize,
        depth: usize,
        key: bool,
    ) -> Option<(Node, usize)> {
        self.count()?;
        let rest = line.get(at..)?;
        match rest.as_bytes().first()? {
            b'[' | b'{' if !key => self.flow(i, line, at, depth + 1),
            b'"' | b'\'' => {
                let (value, end) = quoted(line, at)?;
                let pos = Pos::new(i as u32 + 1, at as u32 + 1, (end - at) as u32);
                Some((
                    Node {
                        value: Value::Str(value),
                        pos,
                    },
                    end,
                ))
            }
            _ => {
                if !plain_start(rest) {
                    return None;
                }
                let stop = rest
                    .find([',', '[', ']', '{', '}', ':', '#'])
                    .unwrap_or(rest.len());
                match rest.as_bytes().get(stop) {
                    Some(b':') if !key => return None,
                    Some(b'#') => return None,
                    _ => {}
                }
                let text = rest[..stop].trim_end_matches(' ');
                if text.is_empty() {
                    return None;
                }
                let node = Node {
                    value: scalar(Cow::Borrowed(text), ScalarStyle::Plain)?,
                    pos: Pos::new(i as u32 + 1, at as u32 + 1, text.len() as u32),
                };
                Some((node, at + text.len()))
            }
        }
    }
}
