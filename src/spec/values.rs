//! Leaf value formats of the spec: names, durations, cron expressions, time zones, and typed
//! parameter values. Shared by the file parser, the CLI (`-p key=value`) and the API; sizes and
//! the free-space reserve are shared with the config file.

use std::time::Duration;

use super::model::{ParamType, ParamValue, Parameter};

/// `^[a-z][a-z0-9-]{0,62}$`: pipeline names.
pub fn is_pipeline_name(s: &str) -> bool {
    s.len() <= 63 && is_step_name(s)
}

/// `^[a-z][a-z0-9-]*$`: step and template names.
pub fn is_step_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some('a'..='z'))
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// `^[A-Za-z0-9][A-Za-z0-9_-]{0,99}$`: a marketplace connection as a pipeline names it (the
/// marketplace's names without `.`, which would end the name in a `{{connections.NAME.KEY}}`).
pub fn is_connection_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 100
        && s.as_bytes()[0].is_ascii_alphanumeric()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// `^[a-zA-Z_][a-zA-Z0-9_]*$`: parameters, variables, secrets, template inputs.
pub fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// `^[a-zA-Z_][a-zA-Z0-9_-]*$`: step outputs (they are file names under `$GANTRY_OUTPUTS`).
pub fn is_output_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// `^[A-Z_][A-Z0-9_]*$`: environment variable names.
pub fn is_env_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_uppercase() || c == '_')
        && chars.all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
}

/// Parses `90s`, `10m`, `1h`, `1h30m`, `1h30m15s`: integer amounts, units in the order h, m, s.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || {
        format!(
            "invalid duration `{s}`: expected an amount with a unit, such as `90s`, `10m`, `1h` or `1h30m`"
        )
    };
    if s.is_empty() {
        return Err(bad());
    }
    let mut total: u64 = 0;
    let mut digits = String::new();
    let mut last_unit = 0u8; // 1 = h, 2 = m, 3 = s; units must come in that order, once each
    for c in s.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let (rank, secs) = match c {
            'h' => (1, 3600),
            'm' => (2, 60),
            's' => (3, 1),
            _ => return Err(bad()),
        };
        if digits.is_empty() || rank <= last_unit {
            return Err(bad());
        }
        let amount: u64 = digits.parse().map_err(|_| bad())?;
        total = amount
            .checked_mul(secs)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(|| format!("duration `{s}` is too long"))?;
        digits.clear();
        last_unit = rank;
    }
    if !digits.is_empty() {
        return Err(format!(
            "invalid duration `{s}`: `{digits}` has no unit; write `{digits}s` or `{digits}m`"
        ));
    }
    Ok(Duration::from_secs(total))
}

/// Formats a duration the way the spec writes them (`1h30m`, `45s`, `0s`). Below a second it
/// shows milliseconds (`250ms`); from a second on, fractions of a second are left out.
pub fn format_duration(d: Duration) -> String {
    let secs = d.as_secs();
    if secs == 0 {
        let ms = d.subsec_millis();
        return if ms == 0 {
            "0s".to_string()
        } else {
            format!("{ms}ms")
        };
    }
    let (h, m, s) = (secs / 3600, (secs % 3600) / 60, secs % 60);
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if m > 0 {
        out.push_str(&format!("{m}m"));
    }
    if s > 0 {
        out.push_str(&format!("{s}s"));
    }
    out
}

/// Parses a cron expression: 5 fields (minute hour day-of-month month day-of-week, POSIX: Sunday is
/// 0 or 7), 6 fields (seconds first), or a nickname such as `@daily`.
pub fn parse_cron(expr: &str) -> Result<croner::Cron, String> {
    use croner::parser::{CronParser, Seconds, Year};
    let trimmed = expr.trim();
    let fields = trimmed.split_whitespace().count();
    if !(trimmed.starts_with('@') || fields == 5 || fields == 6) {
        return Err(format!(
            "invalid cron expression `{expr}`: it has {fields} fields; expected 5 (minute hour day month weekday) or 6 (with seconds first)"
        ));
    }
    CronParser::builder()
        .seconds(Seconds::Optional)
        .year(Year::Disallowed)
        .build()
        .parse(trimmed)
        .map_err(|e| format!("invalid cron expression `{expr}`: {e}"))
}

/// Checks a cron expression as [`parse_cron`] does. One in the common shape (numbers, `*`, ranges,
/// steps and lists in the fields' bounds, as in `*/15 8-18 * * 1-5`) is known good without croner,
/// whose parse fills a bit for each of ten thousand years and was a sixth of a spec check; any
/// other goes to croner, which also words the errors.
pub fn check_cron(expr: &str) -> Result<(), String> {
    if plainly_valid_cron(expr) {
        return Ok(());
    }
    parse_cron(expr).map(drop)
}

/// Whether every field of `expr` is a list of `*`, `N`, `A-B`, `*/S` or `A-B/S` within the field's
/// bounds (`A` ≤ `B`, a step from 1 to the field's largest value, numbers without leading zeros).
fn plainly_valid_cron(expr: &str) -> bool {
    // Minute, hour, day of the month, month, day of the week (Sunday 0 or 7); seconds first in six.
    const FIVE: [(u32, u32); 5] = [(0, 59), (0, 23), (1, 31), (1, 12), (0, 7)];
    const SIX: [(u32, u32); 6] = [(0, 59), (0, 59), (0, 23), (1, 31), (1, 12), (0, 7)];
    let fields: Vec<&str> = expr.split_whitespace().collect();
    let bounds: &[(u32, u32)] = match fields.len() {
        5 => &FIVE,
        6 => &SIX,
        _ => return false,
    };
    let number = |s: &str| -> Option<u32> {
        let plain = matches!(s.len(), 1 | 2)
            && s.bytes().all(|b| b.is_ascii_digit())
            && !(s.len() == 2 && s.starts_with('0'));
        plain.then(|| s.parse().ok()).flatten()
    };
    let item = |item: &str, low: u32, high: u32| -> Option<()> {
        let (base, step) = match item.split_once('/') {
            Some((base, step)) => (base, Some(number(step)?)),
            None => (item, None),
        };
        if step.is_some_and(|s| s == 0 || s > high) {
            return None;
        }
        if base == "*" {
            return Some(());
        }
        let (from, to) = match base.split_once('-') {
            Some((from, to)) => (number(from)?, number(to)?),
            None if step.is_none() => (number(base)?, number(base)?),
            None => return None,
        };
        (low <= from && from <= to && to <= high).then_some(())
    };
    fields
        .iter()
        .zip(bounds)
        .all(|(field, &(low, high))| field.split(',').all(|part| item(part, low, high).is_some()))
}

/// Parses an IANA time zone name such as `Europe/Berlin` or `UTC`.
pub fn parse_timezone(name: &str) -> Result<chrono_tz::Tz, String> {
    name.parse::<chrono_tz::Tz>().map_err(|_| {
        format!(
            "unknown time zone `{name}`: expected an IANA name such as `UTC` or `Europe/Berlin`"
        )
    })
}

/// Suggests a time zone name close to a misspelt one.
pub fn suggest_timezone(name: &str) -> Option<&'static str> {
    super::diagnostic::did_you_mean(name, chrono_tz::TZ_VARIANTS.iter().map(|tz| tz.name()))
}

/// Checks a value given as text (CLI `-p`, API form fields, comment commands) against a declared
/// parameter, and returns the typed value. The error names the parameter.
pub fn check_param_text(param: &Parameter, raw: &str) -> Result<ParamValue, String> {
    let value =
        match param.kind {
            ParamType::String | ParamType::Enum => ParamValue::String(raw.to_string()),
            ParamType::Integer => ParamValue::Integer(raw.trim().parse::<i64>().map_err(|_| {
                format!("parameter `{}` must be an integer, got `{raw}`", param.name)
            })?),
            ParamType::Number => {
                let n = raw
                    .trim()
                    .parse::<f64>()
                    .ok()
                    .filter(|n| n.is_finite())
                    .ok_or_else(|| {
                        format!("parameter `{}` must be a number, got `{raw}`", param.name)
                    })?;
                ParamValue::Number(n)
            }
            ParamType::Boolean => match raw.trim() {
                "true" | "True" | "TRUE" => ParamValue::Boolean(true),
                "false" | "False" | "FALSE" => ParamValue::Boolean(false),
                _ => {
                    return Err(format!(
                        "parameter `{}` must be true or false, got `{raw}`",
                        param.name
                    ));
                }
            },
        };
    check_param_value(param, &value)?;
    Ok(value)
}

/// Checks a typed value against a parameter's type, enum, bounds and pattern.
pub fn check_param_value(param: &Parameter, value: &ParamValue) -> Result<(), String> {
    check_param_value_with(param, value, None)
}

/// A string parameter's `pattern`, compiled to check the few values a spec check matches (a
/// default): a Pike VM over the pattern's NFA, which `regex` builds too but then also turns into
/// the DFAs that make its many searches quick and its compilation take tens of microseconds. Same
/// syntax, same meaning (both are regex-automata). A pattern whose NFA is large is compiled by
/// `regex` itself, which also words the errors.
pub(crate) enum Pattern {
    Small(regex_automata::nfa::thompson::pikevm::PikeVM),
    Full(regex::Regex),
}

/// Patterns whose NFA takes more than this are left to `regex`, well below its own limit.
const SMALL_PATTERN_BYTES: usize = 64 * 1024;

impl Pattern {
    pub(crate) fn new(pattern: &str) -> Result<Pattern, regex::Error> {
        use regex_automata::nfa::thompson;
        let small = thompson::pikevm::PikeVM::builder()
            .thompson(thompson::Config::new().nfa_size_limit(Some(SMALL_PATTERN_BYTES)))
            .build(pattern);
        match small {
            Ok(vm) => Ok(Pattern::Small(vm)),
            Err(_) => regex::Regex::new(pattern).map(Pattern::Full),
        }
    }

    pub(crate) fn is_match(&self, text: &str) -> bool {
        match self {
            Pattern::Small(vm) => vm.is_match(&mut vm.create_cache(), text),
            Pattern::Full(re) => re.is_match(text),
        }
    }
}

/// [`check_param_value`], with the parameter's pattern already compiled when the caller has it
/// (`compiled` must be `param.pattern`'s).
pub(crate) fn check_param_value_with(
    param: &Parameter,
    value: &ParamValue,
    compiled: Option<&Pattern>,
) -> Result<(), String> {
    let name = &param.name;
    match (param.kind, value) {
        (ParamType::String, ParamValue::String(s)) => {
            if let Some(pattern) = &param.pattern {
                let matched = match compiled {
                    Some(re) => re.is_match(s),
                    None => regex::Regex::new(pattern)
                        .map_err(|e| format!("parameter `{name}` has an invalid pattern: {e}"))?
                        .is_match(s),
                };
                if !matched {
                    return Err(format!(
                        "parameter `{name}` must match `{pattern}`, got `{s}`"
                    ));
                }
            }
            Ok(())
        }
        (ParamType::Enum, ParamValue::String(s)) => {
            if param.choices.iter().any(|c| c == s) {
                Ok(())
            } else {
                Err(format!(
                    "parameter `{name}` must be one of {}, got `{s}`",
                    param
                        .choices
                        .iter()
                        .map(|c| format!("`{c}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            }
        }
        (ParamType::Integer, ParamValue::Integer(i)) => check_bounds(param, *i as f64),
        (ParamType::Number, ParamValue::Number(n)) => check_bounds(param, *n),
        (ParamType::Number, ParamValue::Integer(i)) => check_bounds(param, *i as f64),
        (ParamType::Boolean, ParamValue::Boolean(_)) => Ok(()),
        (kind, other) => Err(format!(
            "parameter `{name}` is of type {}, got `{other}`",
            kind.as_str()
        )),
    }
}

fn check_bounds(param: &Parameter, n: f64) -> Result<(), String> {
    let name = &param.name;
    if let Some(min) = param.minimum
        && n < min
    {
        return Err(format!(
            "parameter `{name}` must be at least {min}, got {n}"
        ));
    }
    if let Some(max) = param.maximum
        && n > max
    {
        return Err(format!("parameter `{name}` must be at most {max}, got {n}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    /// What the quick check calls good, croner parses: every combination of these fields.
    #[test]
    fn a_cron_the_quick_check_takes_croner_takes() {
        let items = [
            "*",
            "0",
            "7",
            "59",
            "60",
            "1-5",
            "5-1",
            "0-7",
            "*/1",
            "*/15",
            "*/59",
            "*/60",
            "*/0",
            "1-5/2",
            "0,30",
            "1,2-4,*/5",
            "05",
            "31",
            "32",
            "12",
            "13",
            "24",
            "23",
        ];
        let mut quick = 0;
        for (i, a) in items.iter().enumerate() {
            for b in &items {
                for shape in [
                    format!("{a} {b} * * *"),
                    format!("0 0 {a} {b} *"),
                    format!("0 {a} * * {b}"),
                    format!("{b} 0 0 {a} * *"),
                    format!("0 0 {b} 1 {a}"),
                    format!("{} {a} {b} 1 *", items[(i + 3) % items.len()]),
                ] {
                    if plainly_valid_cron(&shape) {
                        quick += 1;
                        assert!(
                            parse_cron(&shape).is_ok(),
                            "{shape}: {:?}",
                            parse_cron(&shape)
                        );
                    }
                }
            }
        }
        assert!(quick > 500, "{quick}");
        for refused in [
            "0 9 * *",
            "61 * * * *",
            "0 0 0 * *",
            "*/0 * * * *",
            "5-1 * * * *",
        ] {
            assert!(check_cron(refused).is_err(), "{refused}");
        }
        assert!(check_cron("@daily").is_ok());
        assert!(check_cron("0 9 * * MON-FRI").is_ok());
    }

    /// The spec check's pattern matches what `regex` matches, refuses what it refuses, and is
    /// `regex` itself for a pattern too large for the small road.
    #[test]
    fn a_pattern_matches_as_regex_does() {
        let cases: &[(&str, &[&str])] = &[
            ("^[a-z_][a-z0-9_]*$", &["orders", "Orders", "9x", "", "a_b"]),
            ("^v\\d+\\.\\d+$", &["v1.2", "v1.2.3", "1.2"]),
            ("(?i)^prod|staging$", &["PROD-1", "x-staging", "dev"]),
            ("\\bdb\\b", &["my db here", "mydb"]),
            ("^\\p{L}+$", &["éte", "e1"]),
            ("^(a|b)*c{2,3}$", &["abcc", "ccc", "cccc"]),
            ("^$", &["", "x"]),
        ];
        for (pattern, texts) in cases {
            let small = Pattern::new(pattern).unwrap();
            assert!(matches!(small, Pattern::Small(_)), "{pattern}");
            let full = regex::Regex::new(pattern).unwrap();
            for text in *texts {
                assert_eq!(
                    small.is_match(text),
                    full.is_match(text),
                    "{pattern} on {text:?}"
                );
            }
        }
        let large = "^\\w{30}$";
        let pattern = Pattern::new(large).unwrap();
        assert!(matches!(pattern, Pattern::Full(_)));
        assert!(pattern.is_match(&"é".repeat(30)));
        for bad in ["^[a-z_", "(", "a{5,2}", "\\q"] {
            let ours = Pattern::new(bad).err().map(|e| e.to_string());
            let theirs = regex::Regex::new(bad).err().map(|e| e.to_string());
            assert!(ours.is_some(), "{bad}");
            assert_eq!(ours, theirs, "{bad}");
        }
    }

    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("1h0m5s"), Ok(Duration::from_secs(3605)));
        for bad in ["", "10", "m", "1d", "1m1h", "1h1h", "1.5h", "-1s", " 1s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert_eq!(format_duration(Duration::from_secs(5400)), "1h30m");
    }

    #[test]
    fn formatted_durations() {
        let cases = [
            (Duration::ZERO, "0s"),
            (Duration::from_micros(999), "0s"),
            (Duration::from_millis(1), "1ms"),
            (Duration::from_millis(250), "250ms"),
            (Duration::from_millis(999), "999ms"),
            (Duration::from_secs(1), "1s"),
            (Duration::from_millis(2500), "2s"),
            (Duration::from_millis(90_999), "1m30s"),
            (Duration::from_secs(3600), "1h"),
            (Duration::from_secs(3661), "1h1m1s"),
            (Duration::from_secs(5400), "1h30m"),
        ];
        for (d, want) in cases {
            assert_eq!(format_duration(d), want, "{d:?}");
        }
        // Whole seconds read back as they were written.
        for s in ["45s", "10m", "1h30m", "1h0m5s"] {
            let d = parse_duration(s).unwrap();
            assert_eq!(parse_duration(&format_duration(d)), Ok(d), "{s}");
        }
    }

    #[test]
    fn cron_is_posix() {
        use chrono::{Datelike, TimeZone};
        let cron = parse_cron("0 9 * * 0").unwrap();
        let start = chrono::Utc.with_ymd_and_hms(2026, 11, 28, 0, 0, 0).unwrap();
        let next = cron.find_next_occurrence(&start, false).unwrap();
        assert_eq!(next.weekday(), chrono::Weekday::Sun);
        assert!(parse_cron("*/5 * * * *").is_ok());
        assert!(parse_cron("*/2 * * * * *").is_ok());
        assert!(parse_cron("@daily").is_ok());
        assert!(parse_cron("0 9 * *").is_err());
        assert!(parse_cron("0 0 9 * * 1 2026").is_err());
        assert!(parse_cron("61 * * * *").is_err());
    }

    #[test]
    fn names() {
        assert!(is_pipeline_name("provision-postgres"));
        assert!(!is_pipeline_name("Provision"));
        assert!(!is_pipeline_name(&"a".repeat(64)));
        assert!(is_identifier("db_name"));
        assert!(!is_identifier("1db"));
        assert!(is_env_name("PGHOST"));
        assert!(!is_env_name("pg_host"));
    }
}

/// `"16MiB"`, `"2GiB"`, `"512KiB"` or a plain number of bytes.
pub fn parse_size(text: &str) -> Option<u64> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let n: u64 = number.parse().ok()?;
    let factor: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "K" | "KB" => 1 << 10,
        "MiB" | "M" | "MB" => 1 << 20,
        "GiB" | "G" | "GB" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(factor)
}

/// `[storage] min_free`: the free space kept on the data dir's file system.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MinFree {
    /// The smaller of 1 GiB and 5% of the file system.
    #[default]
    Default,
    /// This many bytes; 0 turns the guard off.
    Bytes(u64),
    /// This percentage of the file system's size (1 to 90).
    Percent(u8),
}

impl MinFree {
    /// Parses `1GiB`, `512MiB`, a number of bytes, or `5%`.
    pub fn parse(text: &str) -> Option<MinFree> {
        let t = text.trim();
        if let Some(p) = t.strip_suffix('%') {
            return p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| (1..=90).contains(p))
                .map(MinFree::Percent);
        }
        parse_size(t).map(MinFree::Bytes)
    }

    /// The reserve in bytes on a file system of `total` bytes.
    pub fn bytes(self, total: u64) -> u64 {
        match self {
            MinFree::Default => (1u64 << 30).min(total / 20),
            MinFree::Bytes(n) => n,
            MinFree::Percent(p) => total / 100 * u64::from(p),
        }
    }
}
