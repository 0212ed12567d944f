//! Where the library's log goes: `tracing` events on stderr, as `gantry: warning: ...` lines
//! for a person (the words the service always printed) or as JSON objects, one per line, for
//! machines (`--log-format json`), with the run, delivery or sync they belong to. Levels come
//! from `GANTRY_LOG`, else `RUST_LOG` (`info` when neither is set): `GANTRY_LOG=debug`,
//! `GANTRY_LOG=gantry::intake=debug,info`.

use std::fmt;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// `gantry: warning: ...` lines.
    Human,
    /// One JSON object per line: its time, level, fields and spans.
    Json,
}

/// Installs the subscriber for this process; a second call does nothing.
pub fn init(format: LogFormat) {
    let filter = std::env::var("GANTRY_LOG")
        .ok()
        .or_else(|| std::env::var("RUST_LOG").ok())
        .and_then(|spec| EnvFilter::try_new(spec).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Human => builder.event_format(Human).try_init(),
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .try_init(),
    };
}

/// `gantry: ` and the level's word (`warning: `, `error: `, `fatal: ` for the errors that end
/// the process, logged with the target `crate::store::FATAL`; none for info), then the message and its
/// fields, then the spans it happened in (`[run id=...]`).
struct Human;

fn gantry_fatal() -> &'static str {
    crate::store::FATAL
}

impl<S, N> FormatEvent<S, N> for Human
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        write!(writer, "gantry: ")?;
        let metadata = event.metadata();
        match *metadata.level() {
            Level::WARN => write!(writer, "warning: ")?,
            Level::ERROR if metadata.target() == gantry_fatal() => write!(writer, "fatal: ")?,
            Level::ERROR => write!(writer, "error: ")?,
            _ => {}
        }
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                let extensions = span.extensions();
                match extensions.get::<FormattedFields<N>>() {
                    Some(fields) if !fields.is_empty() => {
                        write!(writer, " [{} {fields}]", span.name())?
                    }
                    _ => write!(writer, " [{}]", span.name())?,
                }
            }
        }
        writeln!(writer)
    }
}
