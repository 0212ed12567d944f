//! How a chunk of log lines is kept in the `logs` tree.
//!
//! Since schema version 3 a chunk is binary: the byte [`BINARY`], then each line as
//!
//! | bytes | what |
//! |---|---|
//! | 8 | seconds since the epoch, i64 little-endian |
//! | 4 | nanoseconds within the second, u32 little-endian |
//! | 4 | attempt number, u32 little-endian |
//! | 1 | stream: 0 stdout, 1 stderr, 2 Gantry's own line |
//! | 4 | the text's length in bytes, u32 little-endian |
//! | n | the text, UTF-8 |
//!
//! Chunks written before (schema version 2) are a JSON array of `LogLine` and start with `[`;
//! both are read. The binary form costs a copy per line where JSON cost an escape pass and a
//! formatted timestamp per line (`gantry bench logs`: the store's share of ingesting a step's
//! output was most of it), and it is smaller, so a chunk stays under sled's blob threshold.

use chrono::{DateTime, Utc};

use super::records::{LogLine, NewLogLine};
use crate::executor::Stream;

/// The first byte of a binary chunk (a JSON chunk starts with `[`).
const BINARY: u8 = 0x01;
/// The bytes a line takes besides its text.
const LINE_HEADER: usize = 8 + 4 + 4 + 1 + 4;

/// A chunk is cut before it grows past this many bytes (a single longer line makes a chunk of
/// its own). sled writes whatever is above ~128 KiB (a quarter of its 512 KiB segment) to a file
/// of its own, a file creation each time, and that includes a whole leaf node, which holds up
/// to 16 values before it splits: chunks of 7 KiB keep a leaf of them below that.
pub const CHUNK_BYTES: usize = 7 * 1024;

/// Why a stored chunk could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ChunkError {
    #[error("{0}")]
    Json(#[from] serde_json::Error),
    #[error("a binary log chunk is cut short at byte {0}")]
    Short(usize),
    #[error("a binary log chunk has an unknown stream {0}")]
    Stream(u8),
    #[error("a binary log chunk has an impossible time ({0}s, {1}ns)")]
    Time(i64, u32),
    #[error("a binary log chunk holds text that is not UTF-8")]
    Text(#[from] std::string::FromUtf8Error),
}

/// The bytes `line` adds to a binary chunk.
pub fn encoded_len(line: &NewLogLine<'_>) -> usize {
    LINE_HEADER + line.text.len()
}

/// Encodes `lines` as one binary chunk.
pub fn encode(lines: &[NewLogLine<'_>]) -> Vec<u8> {
    let size = 1 + lines.iter().map(encoded_len).sum::<usize>();
    let mut out = Vec::with_capacity(size);
    out.push(BINARY);
    for line in lines {
        out.extend_from_slice(&line.at.timestamp().to_le_bytes());
        out.extend_from_slice(&line.at.timestamp_subsec_nanos().to_le_bytes());
        out.extend_from_slice(&line.attempt.to_le_bytes());
        out.push(match line.stream {
            Stream::Stdout => 0,
            Stream::Stderr => 1,
            Stream::System => 2,
        });
        // A line longer than 4 GiB cannot come from the executor (lines are capped far below);
        // it would be cut here rather than written with a wrong length.
        let text = &line.text.as_bytes()[..line.text.len().min(u32::MAX as usize)];
        out.extend_from_slice(&(text.len() as u32).to_le_bytes());
        out.extend_from_slice(text);
    }
    out
}

/// Decodes a chunk of either form.
pub fn decode(bytes: &[u8]) -> Result<Vec<LogLine>, ChunkError> {
    let Some((&BINARY, mut rest)) = bytes.split_first() else {
        return Ok(serde_json::from_slice(bytes)?);
    };
    let mut lines = Vec::new();
    while !rest.is_empty() {
        let at = bytes.len() - rest.len();
        let Some((header, after)) = rest.split_first_chunk::<LINE_HEADER>() else {
            return Err(ChunkError::Short(at));
        };
        let word = |from: usize| -> [u8; 4] {
            let mut w = [0u8; 4];
            w.copy_from_slice(&header[from..from + 4]);
            w
        };
        let mut secs = [0u8; 8];
        secs.copy_from_slice(&header[..8]);
        let secs = i64::from_le_bytes(secs);
        let nanos = u32::from_le_bytes(word(8));
        let attempt = u32::from_le_bytes(word(12));
        let stream = match header[16] {
            0 => Stream::Stdout,
            1 => Stream::Stderr,
            2 => Stream::System,
            other => return Err(ChunkError::Stream(other)),
        };
        let len = u32::from_le_bytes(word(17)) as usize;
        if after.len() < len {
            return Err(ChunkError::Short(at + LINE_HEADER));
        }
        let (text, after) = after.split_at(len);
        let at: DateTime<Utc> =
            DateTime::from_timestamp(secs, nanos).ok_or(ChunkError::Time(secs, nanos))?;
        lines.push(LogLine {
            at,
            attempt,
            stream,
            text: String::from_utf8(text.to_vec())?,
        });
        rest = after;
    }
    Ok(lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(text: &str, stream: Stream, attempt: u32) -> LogLine {
        LogLine {
            at: DateTime::from_timestamp(1_765_000_000, 123_456_789).expect("a time"),
            attempt,
            stream,
            text: text.to_owned(),
        }
    }

    /// The log limits (`executor::log_line_cost`) count at least what a line takes here, or a
    /// limit no longer bounds what a log takes in the store.
    #[test]
    fn the_log_limits_count_at_least_a_lines_stored_size() {
        for text in ["", "x", "a longer line of log text"] {
            assert!(crate::executor::log_line_cost(text) >= (LINE_HEADER + text.len()) as u64);
        }
    }

    #[test]
    fn a_binary_chunk_reads_back_what_was_written() {
        let lines = vec![
            line("plain", Stream::Stdout, 1),
            line("", Stream::Stderr, 2),
            line("ünïcødé \u{1F600} \"quoted\" \\ back", Stream::System, 3),
        ];
        let borrowed: Vec<NewLogLine<'_>> = lines.iter().map(LogLine::borrowed).collect();
        let bytes = encode(&borrowed);
        assert_eq!(bytes[0], BINARY);
        assert_eq!(
            bytes.len(),
            1 + borrowed.iter().map(encoded_len).sum::<usize>()
        );
        assert_eq!(decode(&bytes).expect("decodes"), lines);
    }

    #[test]
    fn a_json_chunk_of_an_older_store_still_reads() {
        let lines = vec![line("old", Stream::Stdout, 1)];
        let bytes = serde_json::to_vec(&lines).expect("json");
        assert_eq!(decode(&bytes).expect("decodes"), lines);
    }

    #[test]
    fn a_damaged_chunk_is_an_error_never_a_panic() {
        let lines = [line("some text", Stream::Stdout, 1)];
        let borrowed: Vec<NewLogLine<'_>> = lines.iter().map(LogLine::borrowed).collect();
        let good = encode(&borrowed);
        // Every truncation inside the line (the marker alone is an empty chunk).
        for cut in 2..good.len() {
            assert!(decode(&good[..cut]).is_err(), "cut at {cut}");
        }
        let mut stream = good.clone();
        stream[1 + 16] = 9;
        assert!(matches!(decode(&stream), Err(ChunkError::Stream(9))));
        let mut nanos = good.clone();
        nanos[1 + 8..1 + 12].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(decode(&nanos), Err(ChunkError::Time(..))));
        let mut text = good;
        let last = text.len() - 1;
        text[last] = 0xff;
        assert!(matches!(decode(&text), Err(ChunkError::Text(_))));
        assert!(decode(b"").is_err());
        assert!(decode(b"{}").is_err());
    }
}
