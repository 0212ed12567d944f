//! `gantry convert FILE [--write]`: print a Choreo-shaped pipeline file in Gantry's own form.

use std::path::PathBuf;

use super::exit;
use crate::spec::{self, diagnostic};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// A pipeline file written to the Choreo Pipeline Specification
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// Replace FILE with its converted form instead of printing it
    #[arg(long)]
    pub write: bool,
}

pub fn run(args: &Args) -> u8 {
    let shown = args.file.display().to_string();
    let source = match std::fs::read_to_string(&args.file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("gantry: cannot read {shown}: {e}");
            return exit::USAGE;
        }
    };
    let converted = spec::convert(&source, Some(&shown));
    let lines = diagnostic::Lines::of(&source);
    for d in converted.diagnostics.iter() {
        eprint!("{}", lines.render(&shown, d, diagnostic::Style::default()));
    }
    let Some(text) = converted.text else {
        if converted.diagnostics.has_errors() {
            eprintln!("gantry: {shown} has errors; nothing was converted");
            return exit::FAILURE;
        }
        eprintln!("gantry: {shown} is in Gantry's form already; nothing to convert");
        if !args.write {
            print!("{source}");
        }
        return exit::OK;
    };
    if args.write {
        if let Err(e) = std::fs::write(&args.file, &text) {
            eprintln!("gantry: cannot write {shown}: {e}");
            return exit::USAGE;
        }
        eprintln!("gantry: converted {shown}");
    } else {
        print!("{text}");
    }
    exit::OK
}
