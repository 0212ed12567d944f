//! Masking: secret values never leave an executor in a log line.
//!
//! [`Secrets`] is the run's growing set of values to hide (secrets, then secret outputs as steps
//! write them); it is shared by every step of the run. [`LineSplitter`] turns the raw bytes a step
//! writes into masked lines. It masks whole lines, so a secret split across two reads of a pipe is
//! still found; a line longer than the limit is cut into pieces, and never inside a secret.

use std::sync::{Arc, RwLock};

/// What replaces a secret.
pub const MASK: &str = "***";

/// The values to hide, shared by all steps of a run.
#[derive(Debug, Clone, Default)]
pub struct Secrets {
    /// Longest first, so that a secret containing another is hidden whole.
    values: Arc<RwLock<Vec<Vec<u8>>>>,
}

impl Secrets {
    pub fn new() -> Secrets {
        Secrets::default()
    }

    /// Adds a value to hide. Each line of a multi-line value is hidden on its own too, because
    /// logs are read line by line. Leading and trailing white space is not part of the pattern.
    pub fn add(&self, value: &str) {
        let mut patterns: Vec<&str> = vec![value.trim()];
        if value.contains('\n') {
            patterns.extend(value.lines().map(str::trim));
        }
        let Ok(mut values) = self.values.write() else {
            return;
        };
        for p in patterns {
            if p.is_empty() || values.iter().any(|v| v.as_slice() == p.as_bytes()) {
                continue;
            }
            values.push(p.as_bytes().to_vec());
        }
        values.sort_by_key(|v| std::cmp::Reverse(v.len()));
    }

    /// Length of the longest value, in bytes.
    pub fn longest(&self) -> usize {
        self.values
            .read()
            .map(|v| v.first().map_or(0, Vec::len))
            .unwrap_or(0)
    }

    /// Replaces every secret in `bytes`.
    pub fn mask_bytes(&self, bytes: &[u8]) -> Vec<u8> {
        let Ok(values) = self.values.read() else {
            // A poisoned lock means a panic elsewhere; hide everything rather than leak.
            return MASK.as_bytes().to_vec();
        };
        if values.is_empty() {
            return bytes.to_vec();
        }
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        'scan: while i < bytes.len() {
            for v in values.iter() {
                if bytes[i..].starts_with(v) {
                    out.extend_from_slice(MASK.as_bytes());
                    i += v.len();
                    continue 'scan;
                }
            }
            out.push(bytes[i]);
            i += 1;
        }
        out
    }

    /// Replaces every secret in a string.
    pub fn mask(&self, text: &str) -> String {
        String::from_utf8_lossy(&self.mask_bytes(text.as_bytes())).into_owned()
    }

    /// The earliest start of a secret occurrence that crosses `cut` in `bytes`, if any.
    fn crossing(&self, bytes: &[u8], cut: usize) -> Option<usize> {
        let values = self.values.read().ok()?;
        values
            .iter()
            .filter_map(|v| {
                let from = cut.saturating_sub(v.len() - 1);
                (from..cut).find(|&s| bytes[s..].starts_with(v))
            })
            .min()
    }
}

/// Assembles the bytes of one stream into masked lines.
#[derive(Debug)]
pub struct LineSplitter {
    buf: Vec<u8>,
    max_line: usize,
    secrets: Secrets,
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
        let mut lines = Vec::new();
        loop {
            if let Some(nl) = self.buf.iter().position(|&b| b == b'\n') {
                let mut line: Vec<u8> = self.buf.drain(..=nl).collect();
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                lines.push(self.render(&line));
                continue;
            }
            // No newline yet. Cut an over-long line only once enough bytes follow the cut to see
            // whole any secret that could cross it.
            let lookahead = self.secrets.longest();
            if self.buf.len() < self.max_line + lookahead || self.buf.len() <= self.max_line {
                break;
            }
            let mut cut = self.max_line;
            if let Some(start) = self.secrets.crossing(&self.buf, cut) {
                cut = start;
            }
            if cut == 0 {
                // A secret starts the buffer and crosses the limit: emit it (masked) whole.
                cut = self.max_line + lookahead;
            }
            let piece: Vec<u8> = self.buf.drain(..cut).collect();
            lines.push(self.render(&piece));
        }
        lines
    }

    /// The last line, when the stream ended without a newline.
    pub fn finish(&mut self) -> Option<String> {
        if self.buf.is_empty() {
            return None;
        }
        let rest = std::mem::take(&mut self.buf);
        Some(self.render(&rest))
    }

    fn render(&self, line: &[u8]) -> String {
        String::from_utf8_lossy(&self.secrets.mask_bytes(line)).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(split.finish(), Some("next".to_string()));
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

    #[test]
    fn crlf_and_invalid_utf8_are_handled() {
        let mut split = LineSplitter::new(Secrets::new(), 1024);
        assert_eq!(
            split.push(b"a\r\nb\xff\n"),
            vec!["a".to_string(), "b\u{fffd}".to_string()]
        );
    }
}
