//! Sources: where pipeline files come from. A bare gix mirror per watched repository (fetch with an
//! explicit refspec, read files at a commit without a worktree, list changed paths between commits),
//! and pipelines defined directly in Gantry. Knows nothing of forges, runs or HTTP.
//!
//! Lands with the git-native service issue; this module holds only its contract for now.
