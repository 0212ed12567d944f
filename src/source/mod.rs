//! Sources: where pipeline files come from. A bare gix mirror per watched repository (fetch with an
//! explicit refspec, read files at a commit without a worktree, list changed paths between commits),
//! and pipelines defined directly in Gantry. Knows nothing of forges, runs or HTTP.
//!
//! `checkout` copies a work tree's files as git sees them (tracked files with their current content
//! plus untracked, not ignored files) into a run workspace, and writes the tree of one commit of a
//! (bare) repository into a directory. `mirror` keeps a bare mirror per watched repository: clone,
//! incremental fetch (with credentials for https), branch heads, files at a commit, files matching
//! globs and changed paths between commits; URLs in its errors are redacted.

pub mod checkout;
pub mod mirror;

pub use checkout::{CopyStats, SourceError, checkout_commit, copy_worktree};
#[cfg(test)]
mod test_support;

pub use mirror::{Credentials, FetchOutcome, Mirror, redact_url};
