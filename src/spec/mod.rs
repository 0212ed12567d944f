//! The pipeline specification (`docs/spec.md`): YAML text in, a validated [`Pipeline`] or a list of
//! diagnostics out.
//!
//! The stages follow the bytes: `yaml` turns text into a spanned node tree within a parse budget,
//! `parse` converts the tree into the model checking each field where it stands, and `validate`
//! checks the file as a whole. Every problem of a file is reported at once. This module does no IO.

pub mod diagnostic;
pub mod expr;
pub mod model;
pub mod parse;
pub mod validate;
pub mod values;
pub mod when;
pub mod yaml;

pub use diagnostic::{Diagnostic, Diagnostics, Severity};
pub use model::Pipeline;
pub use yaml::{Limits, Pos};

/// The outcome of checking one pipeline file.
#[derive(Debug, Clone)]
pub struct Checked {
    /// The pipeline, when the file has no errors (warnings allowed).
    pub pipeline: Option<Pipeline>,
    /// Errors and warnings, ordered by position.
    pub diagnostics: Diagnostics,
    /// Where `metadata.name` stands, for errors about the name found outside this file.
    pub name_pos: Pos,
    /// `metadata.name` when it is valid, even if the file has other errors (for checks across
    /// files, such as unique pipeline names).
    pub name: Option<String>,
}

/// Parses and validates the text of one pipeline file with the default limits.
pub fn check(source: &str) -> Checked {
    check_with(source, &Limits::default())
}

/// Parses and validates the text of one pipeline file.
pub fn check_with(source: &str, limits: &Limits) -> Checked {
    let mut diagnostics = Diagnostics::default();
    let root = match yaml::parse(source, limits) {
        Ok(root) => root,
        Err(e) => {
            diagnostics.push(Diagnostic::error(e.pos, e.message));
            return Checked {
                pipeline: None,
                diagnostics,
                name_pos: e.pos,
                name: None,
            };
        }
    };
    let (pipeline, map, parse_diags) = parse::convert(&root, source);
    diagnostics.0.extend(parse_diags.0);
    validate::validate(&pipeline, &map, &mut diagnostics);
    diagnostics.finish();
    // The converter sets the name only when it is valid.
    let name = Some(pipeline.metadata.name.clone()).filter(|n| !n.is_empty());
    let pipeline = (!diagnostics.has_errors()).then_some(pipeline);
    Checked {
        pipeline,
        diagnostics,
        name_pos: map.name,
        name,
    }
}
