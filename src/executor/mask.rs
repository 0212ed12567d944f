//! Masking: secret values never leave an executor in a log line.
//!
//! [`Secrets`] is the run's growing set of values to hide (secrets, then secret outputs as steps
//! write them); it is shared by every step of the run. [`LineSplitter`] turns the raw bytes a step
//! writes into masked lines. It masks whole lines, so a secret split across two reads of a pipe is
//! still found; a line longer than the limit is cut into pieces, and never inside a secret.

use std::fmt;
use std::sync::{Arc, RwLock};

/// What replaces a secret.
pub const MASK: &str = "***";

/// The values to hide, shared by all steps of a run.
#[derive(Clone, Default)]
pub struct Secrets {
    values: Arc<RwLock<Values>>,
}

/// The patterns, and one automaton that finds them all in one pass over a line.
#[derive(Default)]
struct Values {
    /// Longest first.
    patterns: Vec<Vec<u8>>,
    /// Leftmost-longest: the scan goes left to right and, where several patterns start, hides
    /// the longest, so that a secret containing another is hidden whole. `None` while there is
    /// no pattern (or the automaton could not be built: then everything is hidden).
    finder: Option<aho_corasick::AhoCorasick>,
}

impl Values {
    fn rebuild(&mut self) {
        self.patterns.sort_by_key(|v| std::cmp::Reverse(v.len()));
        self.finder = if self.patterns.is_empty() {
            None
        } else {
            aho_corasick::AhoCorasick::builder()
                .match_kind(aho_corasick::MatchKind::LeftmostLongest)
                .build(&self.patterns)
                .ok()
        };
    }
}

impl Secrets {
    pub fn new() -> Secrets {
        Secrets::default()
    }

    /// Adds a value to hide. Each line of a multi-line value is hidden on its own too, because
    /// logs are read line by line. Leading and trailing white space is not part of the pattern.
    pub fn add(&self, value: &str) {
        self.add_bytes(value.as_bytes());
    }

    /// [`Secrets::add`] for a value that need not be UTF-8 (a secret output file holds whatever
    /// the step wrote, and the pipe carries the same raw bytes).
    pub fn add_bytes(&self, value: &[u8]) {
        let mut patterns: Vec<&[u8]> = vec![trim(value)];
        if value.contains(&b'\n') {
            patterns.extend(value.split(|&b| b == b'\n').map(trim));
        }
        // A step that prints a secret encoded (`base64`, `xxd -p`, a URL, a JSON string) leaks
        // it just the same: the usual encodings of each pattern are hidden too.
        let mut all: Vec<Vec<u8>> = Vec::new();
        for p in patterns.into_iter().filter(|p| !p.is_empty()) {
            all.extend(encodings(p));
            all.push(p.to_vec());
        }
        let Ok(mut values) = self.values.write() else {
            return;
        };
        let before = values.patterns.len();
        for p in all {
            if p.is_empty() || values.patterns.contains(&p) {
                continue;
            }
            values.patterns.push(p);
        }
        if values.patterns.len() != before {
            values.rebuild();
        }
    }

    /// Length of the longest value, in bytes.
    pub fn longest(&self) -> usize {
        self.values
            .read()
            .map(|v| v.patterns.first().map_or(0, Vec::len))
            .unwrap_or(0)
    }

    /// Replaces every secret in `bytes`.
    pub fn mask_bytes(&self, bytes: &[u8]) -> Vec<u8> {
        let Ok(values) = self.values.read() else {
            // A poisoned lock means a panic elsewhere; hide everything rather than leak.
            return MASK.as_bytes().to_vec();
        };
        if values.patterns.is_empty() {
            return bytes.to_vec();
        }
        let Some(finder) = &values.finder else {
            // Patterns the automaton could not take: hide everything rather than leak.
            return MASK.as_bytes().to_vec();
        };
        let mut out = Vec::with_capacity(bytes.len());
        let mut copied = 0;
        for m in finder.find_iter(bytes) {
            out.extend_from_slice(&bytes[copied..m.start()]);
            out.extend_from_slice(MASK.as_bytes());
            copied = m.end();
        }
        out.extend_from_slice(&bytes[copied..]);
        out
    }

    /// Replaces every secret in a string.
    pub fn mask(&self, text: &str) -> String {
        String::from_utf8_lossy(&self.mask_bytes(text.as_bytes())).into_owned()
    }

    /// The occurrence (start, length) that [`Secrets::mask_bytes`] would hide across `cut` in
    /// `bytes`, if any. Found by the same left-to-right scan, so that cutting before it (or after
    /// it) never splits anything the scan of the whole line would hide, also when secrets overlap.
    fn crossing(&self, bytes: &[u8], cut: usize) -> Option<(usize, usize)> {
        let values = self.values.read().ok()?;
        let finder = values.finder.as_ref()?;
        finder
            .find_iter(bytes)
            .take_while(|m| m.start() < cut)
            .find(|m| m.end() > cut)
            .map(|m| (m.start(), m.len()))
    }
}

impl fmt::Debug for Secrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let count = self.values.read().map_or(0, |v| v.patterns.len());
        f.debug_struct("Secrets").field("count", &count).finish()
    }
}

/// The usual encodings of `value` that a log could show instead of it: base64 (standard and
/// URL-safe, with and without padding, of the value and of the value with the newline `echo` adds),
/// hexadecimal (both cases), percent-encoding and the
/// inside of a JSON string. Only encodings that differ from the value itself.
fn encodings(value: &[u8]) -> Vec<Vec<u8>> {
    let mut with_newline = value.to_vec();
    with_newline.push(b'\n');
    let mut out = Vec::new();
    for v in [value, with_newline.as_slice()] {
        let standard = base64(v, b"+/");
        let mut padded = standard.clone();
        padded.resize(standard.len().next_multiple_of(4), b'=');
        out.push(padded);
        out.push(standard.clone());
        let url_safe = base64(v, b"-_");
        if url_safe != standard {
            out.push(url_safe);
        }
    }
    let hex: Vec<u8> = value
        .iter()
        .flat_map(|b| format!("{b:02x}").into_bytes())
        .collect();
    out.push(hex.to_ascii_uppercase());
    out.push(hex);
    let mut percent = Vec::new();
    for &b in value {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            percent.push(b);
        } else {
            percent.extend(format!("%{b:02X}").into_bytes());
        }
    }
    out.push(percent);
    if let Ok(text) = std::str::from_utf8(value)
        && let Ok(json) = serde_json::to_string(text)
    {
        out.push(json.as_bytes()[1..json.len() - 1].to_vec());
    }
    out.retain(|e| e.as_slice() != value && e.len() >= 4);
    out.sort();
    out.dedup();
    out
}

/// Base64 of `bytes` without padding, with `extra` as the last two letters of the alphabet.
fn base64(bytes: &[u8], extra: &[u8; 2]) -> Vec<u8> {
    const LETTERS: &[u8; 62] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let letter = |v: u32| match v {
        0..=61 => LETTERS[v as usize],
        62 => extra[0],
        _ => extra[1],
    };
    let mut out = Vec::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(letter((n >> (18 - 6 * i)) & 63));
        }
    }
    out
}

/// `bytes` without leading and trailing white space: Unicode white space when the bytes are
/// UTF-8 (as `str::trim`), ASCII white space otherwise.
fn trim(bytes: &[u8]) -> &[u8] {
    match std::str::from_utf8(bytes) {
        Ok(s) => s.trim().as_bytes(),
        Err(_) => bytes.trim_ascii(),
    }
}

/// Assembles the bytes of one stream into masked lines.
pub struct LineSplitter {
    /// Unmasked bytes of the current line.
    buf: Vec<u8>,
    max_line: usize,
    secrets: Secrets,
}

impl fmt::Debug for LineSplitter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LineSplitter")
            .field("buffered", &self.buf.len())
            .field("max_line", &self.max_line)
            .field("secrets", &self.secrets)
            .finish()
    }
}

impl LineSplitter {
    pub fn new(secrets: Secrets, max_line: usize) -> LineSplitter {
        LineSplitter {
            buf: Vec::new(),
            max_line: max_line.max(1),
            secrets,
        }
    }

    /// Takes the next bytes read from the stream; returns the lines they completed.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<String> {
        self.buf.extend_from_slice(chunk);
        let longest = self.secrets.longest();
        let mut lines = Vec::new();
        // Lines are taken from `start` on, and the buffer is shifted once at the end: a read of
        // many short lines costs what its bytes cost.
        let mut start = 0;
        loop {
            let rest = &self.buf[start..];
            let nl = memchr::memchr(b'\n', rest);
            let end = match nl {
                Some(nl) if nl > 0 && rest[nl - 1] == b'\r' => nl - 1,
                Some(nl) => nl,
                // No newline yet. Cut an over-long line only once enough bytes follow the cut to
                // see whole any secret that could cross it.
                None if rest.len() > self.max_line && rest.len() >= self.max_line + longest => {
                    rest.len()
                }
                None => break,
            };
            let (piece, taken) = self.next_piece(start, end, nl);
            lines.push(piece);
            start += taken;
        }
        self.buf.drain(..start);
        lines
    }

    /// The rest of the last line, when the stream ended without a newline.
    pub fn finish(&mut self) -> Vec<String> {
        let mut lines = Vec::new();
        let mut start = 0;
        while start < self.buf.len() {
            let (piece, taken) = self.next_piece(start, self.buf.len() - start, None);
            lines.push(piece);
            start += taken;
        }
        self.buf.clear();
        lines
    }

    /// The next piece of the line that makes up the `end` bytes of the buffer from `start` (and
    /// is ended by the newline at `start + nl`, if one came), and how many bytes it takes from
    /// the buffer: the whole line when it fits, else at most `max_line` bytes, cut where the
    /// line's masking has a boundary. A secret that starts the piece and crosses the limit makes
    /// a piece of its own (just the mask).
    fn next_piece(&self, start: usize, end: usize, nl: Option<usize>) -> (String, usize) {
        let line = &self.buf[start..start + end];
        let cut = if end <= self.max_line {
            end
        } else {
            match self.secrets.crossing(line, self.max_line) {
                None => self.max_line,
                // Cut before the secret; it goes whole into the next piece.
                Some((at, _)) if at > 0 => at,
                Some((_, len)) => len,
            }
        };
        let piece = self.render(&line[..cut]);
        let taken = match nl {
            Some(nl) if cut == end => nl + 1,
            _ => cut,
        };
        (piece, taken)
    }

    fn render(&self, line: &[u8]) -> String {
        // Valid UTF-8 (nearly every line) becomes the string without a copy.
        String::from_utf8(self.secrets.mask_bytes(line))
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_the_usual_encodings_of_a_secret() {
        let s = Secrets::new();
        s.add("p@ss w0rd/+?");
        // Computed with coreutils: `printf %s 'p@ss w0rd/+?' | base64`, `echo 'p@ss w0rd/+?' |
        // base64`, `| basenc --base64url`, `| xxd -p`.
        for encoded in [
            "cEBzcyB3MHJkLys/",
            "cEBzcyB3MHJkLys/Cg==",
            "cEBzcyB3MHJkLys_",
            "7040737320773072642f2b3f",
            "7040737320773072642F2B3F",
            "p%40ss%20w0rd%2F%2B%3F",
        ] {
            assert_eq!(s.mask(&format!("<{encoded}>")), "<***>", "{encoded}");
        }
        s.add("say \"hi\"\tnow");
        assert_eq!(s.mask(r#"{"k": "say \"hi\"\tnow"}"#), r#"{"k": "***"}"#);
        assert_eq!(s.mask("plain text stays"), "plain text stays");
    }

    #[test]
    fn base64_matches_the_standard_encoding() {
        for (raw, encoded) in [
            ("", ""),
            ("f", "Zg"),
            ("fo", "Zm8"),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg"),
        ] {
            assert_eq!(base64(raw.as_bytes(), b"+/"), encoded.as_bytes(), "{raw}");
        }
    }

    #[test]
    fn masks_every_occurrence_longest_first() {
        let s = Secrets::new();
        s.add("hunter2");
        s.add("hunter2-admin");
        assert_eq!(s.mask("a hunter2 b hunter2-admin c"), "a *** b *** c");
    }

    #[test]
    fn a_secret_split_across_reads_is_still_masked() {
        let s = Secrets::new();
        s.add("s3cr3t-value");
        let mut split = LineSplitter::new(s, 1024);
        assert!(split.push(b"password is s3cr").is_empty());
        assert_eq!(
            split.push(b"3t-value and more\nnext"),
            vec!["password is *** and more"]
        );
        assert_eq!(split.finish(), vec!["next"]);
    }

    #[test]
    fn secrets_added_later_are_masked_from_then_on() {
        let s = Secrets::new();
        let mut split = LineSplitter::new(s.clone(), 1024);
        assert_eq!(split.push(b"generated abc123\n"), vec!["generated abc123"]);
        s.add("abc123\n");
        assert_eq!(split.push(b"again abc123\n"), vec!["again ***"]);
    }

    #[test]
    fn multi_line_secrets_are_masked_line_by_line() {
        let s = Secrets::new();
        s.add("-----BEGIN KEY-----\nMIIBfake\n-----END KEY-----");
        let mut split = LineSplitter::new(s, 1024);
        let lines = split.push(b"-----BEGIN KEY-----\nMIIBfake\n-----END KEY-----\n");
        assert_eq!(lines, vec!["***", "***", "***"]);
    }

    #[test]
    fn long_lines_are_cut_but_never_inside_a_secret() {
        let s = Secrets::new();
        s.add("SECRETSECRET");
        let mut split = LineSplitter::new(s, 10);
        // The secret starts at byte 6 and would cross the 10-byte cut.
        let mut lines = split.push(b"xxxxxxSECRETSECRETyyyyyyyyyyyyyyyyyyyy");
        lines.extend(split.finish());
        let joined = lines.concat();
        assert!(!joined.contains("SECRET"), "{lines:?}");
        assert_eq!(joined, "xxxxxx***yyyyyyyyyyyyyyyyyyyy");
        assert!(
            lines.iter().all(|l| l.len() <= 10 + MASK.len()),
            "{lines:?}"
        );
    }

    /// Runs `input` through a splitter in chunks of `chunk` bytes; returns every line.
    fn split_all(s: &Secrets, max_line: usize, input: &[u8], chunk: usize) -> Vec<String> {
        let mut split = LineSplitter::new(s.clone(), max_line);
        let mut lines: Vec<String> = input.chunks(chunk).flat_map(|c| split.push(c)).collect();
        lines.extend(split.finish());
        // Secrets here are ASCII and longer than the mask: no piece grows when masked.
        assert!(
            lines.iter().all(|l| l.len() <= max_line || l == MASK),
            "{max_line}: {lines:?}"
        );
        lines
    }

    #[test]
    fn complete_lines_and_the_last_line_are_cut_too() {
        let s = Secrets::new();
        s.add("SECRETSECRET");
        let mut split = LineSplitter::new(s, 10);
        let lines = split.push(b"aaaaaaaaaabbbbbbbbbbcc\nSECRETSECRET\r\nxxSECRETSECRET\n\n");
        assert_eq!(
            lines,
            vec!["aaaaaaaaaa", "bbbbbbbbbb", "cc", MASK, "xx", MASK, ""]
        );
        // Too short to cut before the stream ends (a secret could still cross the limit).
        assert!(split.push(b"0123456789012").is_empty());
        assert_eq!(split.finish(), vec!["0123456789", "012"]);
        assert!(split.finish().is_empty());
    }

    #[test]
    fn adjacent_long_secrets_are_emitted_one_by_one() {
        let s = Secrets::new();
        s.add("0123456789ab");
        s.add("cdefghijklmn");
        for prefix in 0..14 {
            let input = format!(
                "{}0123456789abcdefghijklmn{}",
                "x".repeat(prefix),
                "y".repeat(30)
            );
            for chunk in [1, 5, input.len()] {
                let lines = split_all(&s, 10, input.as_bytes(), chunk);
                assert_eq!(
                    lines.concat(),
                    s.mask(&input),
                    "{prefix} {chunk}: {lines:?}"
                );
                // No byte of either secret appears anywhere: all of them are masked.
                assert!(
                    lines
                        .iter()
                        .all(|l| !l
                            .contains(|c: char| c.is_ascii_digit() || ('a'..='n').contains(&c))),
                    "{prefix} {chunk}: {lines:?}"
                );
                assert_eq!(
                    lines.iter().filter(|l| l.contains(MASK)).count(),
                    2,
                    "{lines:?}"
                );
            }
        }
        // A secret that starts the buffer is emitted alone, masked.
        let lines = split_all(&s, 10, b"0123456789abcdefghijklmn", 1);
        assert_eq!(lines, vec![MASK, MASK]);
    }

    #[test]
    fn cuts_follow_the_mask_when_secrets_overlap() {
        let s = Secrets::new();
        s.add("0123456789ab");
        // Inside the first one.
        s.add("456789");
        // Overlaps the end of the first one: where both appear, the first is masked whole and
        // this one's tail stays, exactly as when the line is masked in one piece.
        s.add("89abcdefgh");
        for max_line in 1..=16 {
            for prefix in 0..14 {
                let input = format!(
                    "{}0123456789abcdefghz 456789 89abcdefgh{}",
                    "x".repeat(prefix),
                    "y".repeat(30)
                );
                for chunk in [1, 7, input.len()] {
                    let lines = split_all(&s, max_line, input.as_bytes(), chunk);
                    let what = format!("{max_line} {prefix} {chunk}: {lines:?}");
                    assert_eq!(lines.concat(), s.mask(&input), "{what}");
                    assert!(
                        lines
                            .iter()
                            .all(|l| !l
                                .contains(|c: char| c.is_ascii_digit() || c == 'a' || c == 'b')),
                        "{what}"
                    );
                }
            }
        }
    }

    #[test]
    fn secrets_that_are_not_utf8_are_masked() {
        let s = Secrets::new();
        s.add_bytes(b" \xffs3cr\xe9t\r\n");
        s.add_bytes(b"line\xfe one\nline\xfe two\n");
        let mut split = LineSplitter::new(s.clone(), 1024);
        let mut lines = split.push(b"got \xffs3cr");
        lines.extend(split.push(b"\xe9t here\nline\xfe one\n\tline\xfe two \n"));
        assert_eq!(lines, vec!["got *** here", "***", "\t*** "]);
        // Trimmed like text: surrounding white space is not part of the pattern.
        assert_eq!(s.mask_bytes(b"[\xffs3cr\xe9t]"), b"[***]");
        // `add` is the same for text.
        let t = Secrets::new();
        t.add(" \u{a0}caf\u{e9}\n");
        assert_eq!(t.mask("un caf\u{e9}"), "un ***");
    }

    #[test]
    fn debug_shows_no_secret() {
        let s = Secrets::new();
        s.add("hunter2");
        let mut split = LineSplitter::new(s.clone(), 1024);
        split.push(b"partial hunter2");
        let shown = format!("{s:?} {split:?}");
        assert!(
            !shown.contains("hunter2") && !shown.contains("104, 117"),
            "{shown}"
        );
    }

    #[test]
    fn crlf_and_invalid_utf8_are_handled() {
        let mut split = LineSplitter::new(Secrets::new(), 1024);
        assert_eq!(
            split.push(b"a\r\nb\xff\n"),
            vec!["a".to_string(), "b\u{fffd}".to_string()]
        );
    }
}
