//! The pipeline specification (`docs/spec.md`): YAML text in, a validated [`Pipeline`] or a list of
//! diagnostics out.
//!
//! The stages follow the bytes: `yaml` turns text into a spanned node tree within a parse budget,
//! `parse` converts the tree into the model checking each field where it stands, and `validate`
//! checks the file as a whole. Every problem of a file is reported at once. This module does no IO.

pub mod choreo;
pub mod diagnostic;
pub mod expr;
pub mod model;
pub mod parse;
pub mod validate;
pub mod values;
pub mod when;
pub mod yaml;

use std::collections::{HashMap, HashSet};

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
    /// The file is in Choreo's shape (see [`choreo`]).
    pub choreo: bool,
}

/// Parses and validates the text of one pipeline file with the default limits.
pub fn check(source: &str) -> Checked {
    check_with(source, &Limits::default())
}

/// Parses and validates the text of one pipeline file; `file_name` names a Choreo-shaped file
/// that has no `metadata.name` (see [`choreo`]).
pub fn check_file(source: &str, file_name: Option<&str>) -> Checked {
    check_named(source, &Limits::default(), file_name)
}

/// Parses and validates the text of one pipeline file.
pub fn check_with(source: &str, limits: &Limits) -> Checked {
    check_named(source, limits, None)
}

/// The node tree of a file in Gantry's form: a Choreo file rewritten, with its own diagnostics.
fn native_tree(
    root: yaml::Node,
    source: &str,
    file_name: Option<&str>,
) -> (yaml::Node, bool, Vec<Diagnostic>) {
    if choreo::is_choreo(&root) {
        let rewritten = choreo::rewrite(&root, source, file_name);
        (rewritten.root, true, rewritten.diagnostics)
    } else {
        (root, false, Vec::new())
    }
}

/// Parses and validates the text of one pipeline file, Gantry's form or Choreo's.
pub fn check_named(source: &str, limits: &Limits, file_name: Option<&str>) -> Checked {
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
                choreo: false,
            };
        }
    };
    let (root, is_choreo, choreo_diags) = native_tree(root, source, file_name);
    diagnostics.0.extend(choreo_diags);
    let (pipeline, map, parse_diags) = parse::convert(&root, source);
    let mut native = parse_diags;
    validate::validate(&pipeline, &map, &mut native);
    if is_choreo {
        for d in &mut native.0 {
            d.message = choreo::reword(&d.message);
            if let Some(h) = &d.help {
                d.help = Some(choreo::reword(h));
            }
        }
    }
    // Where the Choreo reading reported an error already, the native one would say it twice.
    // What each position has (whether an error, and which messages), so that a file with tens
    // of thousands of diagnostics is not compared pair by pair.
    let mut said: HashMap<(u32, u32, u32), (bool, HashSet<String>)> = HashMap::new();
    for e in &diagnostics.0 {
        let at = said.entry((e.pos.line, e.pos.col, e.pos.len)).or_default();
        at.0 |= e.is_error();
        at.1.insert(e.message.clone());
    }
    for d in native.0 {
        let at = said.entry((d.pos.line, d.pos.col, d.pos.len)).or_default();
        if !at.0 && !at.1.contains(&d.message) {
            at.0 |= d.is_error();
            at.1.insert(d.message.clone());
            diagnostics.push(d);
        }
    }
    diagnostics.finish();
    // The converter sets the name only when it is valid.
    let name = Some(pipeline.metadata.name.clone()).filter(|n| !n.is_empty());
    let pipeline = (!diagnostics.has_errors()).then_some(pipeline);
    Checked {
        pipeline,
        diagnostics,
        name_pos: map.name,
        name,
        choreo: is_choreo,
    }
}

/// What `gantry convert` makes of a file.
#[derive(Debug, Clone)]
pub struct Converted {
    /// The file in Gantry's form; `None` when it has errors or is in Gantry's form already.
    pub text: Option<String>,
    /// True when the file is in Choreo's form.
    pub choreo: bool,
    /// The diagnostics of the original file.
    pub diagnostics: Diagnostics,
}

/// Prints a Choreo-shaped file in Gantry's form (with the comments at its top).
pub fn convert(source: &str, file_name: Option<&str>) -> Converted {
    let checked = check_file(source, file_name);
    let root = match yaml::parse(source, &Limits::default()) {
        Ok(root) => root,
        Err(_) => {
            return Converted {
                text: None,
                choreo: false,
                diagnostics: checked.diagnostics,
            };
        }
    };
    let (root, is_choreo, _) = native_tree(root, source, file_name);
    let text = (is_choreo && checked.pipeline.is_some())
        .then(|| choreo::emit(&root, source, &choreo::leading_comments(source)));
    Converted {
        text,
        choreo: is_choreo,
        diagnostics: checked.diagnostics,
    }
}

/// The text to store for a pipeline file: a valid Choreo-shaped file in Gantry's form (so that it
/// reads the same without its file name), any other file as it is.
pub fn self_contained<'a>(
    source: &'a str,
    file_name: Option<&str>,
    checked: &Checked,
) -> std::borrow::Cow<'a, str> {
    if !checked.choreo || checked.pipeline.is_none() {
        return std::borrow::Cow::Borrowed(source);
    }
    match convert(source, file_name).text {
        Some(text) => std::borrow::Cow::Owned(text),
        None => std::borrow::Cow::Borrowed(source),
    }
}
