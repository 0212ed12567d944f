//! Sources: where pipeline files come from. A bare gix mirror per watched repository (fetch with an
//! explicit refspec, read files at a commit without a worktree, list changed paths between commits),
//! and pipelines defined directly in Gantry. Knows nothing of forges, runs or HTTP.
//!
//! What exists now is `checkout`: copying a work tree's files as git sees them (tracked files with
//! their current content plus untracked, not ignored files) into a run workspace, and writing the
//! tree of one commit of a (bare) repository into a directory. Mirrors, fetching and changed paths
//! land with the git-native service issue.

pub mod checkout;

pub use checkout::{CopyStats, SourceError, checkout_commit, copy_worktree};
