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

/// [`check_param_value`], with the parameter's pattern already compiled when the caller has it
/// (`compiled` must be `param.pattern`'s).
pub(crate) fn check_param_value_with(
    param: &Parameter,
    value: &ParamValue,
    compiled: Option<&regex::Regex>,
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
