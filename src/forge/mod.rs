//! Forges: everything specific to GitHub, GitLab and Bitbucket lives here and nowhere else: webhook
//! signatures and payloads in, status and comment API calls out. Exposes neutral types only.
//!
//! Lands with the webhook issue; this module holds only its contract for now.
