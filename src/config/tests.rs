//! Tests of `gantry.toml` loading: the example, defaults, every error kind with its position,
//! variable substitution, path resolution, listen safety and secret hiding.

use super::*;

const ADMIN_TOKEN: &str = "adm1n-t0ken-0123456789abcdef";
const GITHUB_TOKEN: &str = "ghp_s3cretvalue1234567890";
const WEBHOOK_SECRET: &str = "whsec-abcdef-9876543210";

const EXAMPLE: &str = r#"[server]
listen = "127.0.0.1:8080"
public_url = "http://127.0.0.1:8080"     # used in links written to forges
[storage]
data_dir = "./gantry-data"
[[auth.tokens]]                           # bearer tokens for the API
name = "admin"
token = "${GANTRY_ADMIN_TOKEN}"
[[repos]]
name = "infra"                            # the source name; pipelines are addressed as infra/<pipeline>
url = "https://github.com/acme/infra.git" # https, http, git://, ssh, file://
provider = "github"                       # github | gitlab | bitbucket | git (no write-back)
repo = "acme/infra"                       # the forge's id: owner/repo, group/project, workspace/slug
branch = "main"
paths = [".gantry/pipelines/*.yaml", ".gantry/pipelines/*.yml"]
poll_interval = "60s"                     # "0s" turns polling off (webhooks only)
token = "${GITHUB_TOKEN}"                 # for fetching over https and for write-back
webhook_secret = "${GITHUB_WEBHOOK_SECRET}"
"#;

fn test_env(name: &str) -> Option<String> {
    match name {
        "GANTRY_ADMIN_TOKEN" => Some(ADMIN_TOKEN.to_string()),
        "GITHUB_TOKEN" => Some(GITHUB_TOKEN.to_string()),
        "GITHUB_WEBHOOK_SECRET" => Some(WEBHOOK_SECRET.to_string()),
        "EMPTY" => Some(String::new()),
        "SHORT" => Some("abc123".to_string()),
        "REF" => Some("${GITHUB_TOKEN}".to_string()),
        "NASTY" => Some("x\"]\n[server]\nlisten = \"0.0.0.0:1\"\n".to_string()),
        _ => None,
    }
}

fn origin() -> PathBuf {
    PathBuf::from("/etc/gantry/gantry.toml")
}

fn check(text: &str) -> Result<Config, ConfigError> {
    parse(text, &origin(), &test_env)
}

fn ok(text: &str) -> Config {
    match check(text) {
        Ok(c) => c,
        Err(e) => panic!("expected a valid config, got:\n{e}"),
    }
}

/// The error lines, without the file name.
fn errors(text: &str) -> Vec<String> {
    let err = check(text).expect_err("expected errors");
    let prefix = format!("{}:", origin().display());
    err.to_string()
        .lines()
        .map(|l| l.strip_prefix(&prefix).unwrap_or(l).to_string())
        .collect()
}

fn one_error(text: &str) -> String {
    let errs = errors(text);
    assert_eq!(errs.len(), 1, "expected one error, got {errs:#?}");
    errs.into_iter().next().unwrap_or_default()
}

const REPO: &str = "[[repos]]\nname = \"infra\"\nurl = \"https://example.com/infra.git\"\n";

#[test]
fn the_example_parses_with_the_environment() {
    let c = ok(EXAMPLE);
    assert_eq!(c.server.listen, "127.0.0.1:8080".parse().unwrap());
    assert_eq!(c.server.public_url, "http://127.0.0.1:8080");
    assert_eq!(c.storage.data_dir, PathBuf::from("/etc/gantry/gantry-data"));
    assert_eq!(c.tokens, vec![ApiToken::admin("admin", ADMIN_TOKEN)]);
    assert_eq!(c.repos.len(), 1);
    let r = &c.repos[0];
    assert_eq!(r.name, "infra");
    assert_eq!(r.url, "https://github.com/acme/infra.git");
    assert_eq!(r.provider, Provider::Github);
    assert_eq!(r.repo.as_deref(), Some("acme/infra"));
    assert_eq!(r.branch, "main");
    assert_eq!(
        r.paths,
        vec![".gantry/pipelines/*.yaml", ".gantry/pipelines/*.yml"]
    );
    assert_eq!(r.poll_interval, Duration::from_secs(60));
    assert_eq!(r.token.as_deref(), Some(GITHUB_TOKEN));
    assert_eq!(r.webhook_secret.as_deref(), Some(WEBHOOK_SECRET));
    assert_eq!(c.check_listen_safety(), Ok(()));
}

#[test]
fn an_empty_file_gives_every_default() {
    let c = ok("");
    assert_eq!(c.server.listen, "127.0.0.1:8080".parse().unwrap());
    assert_eq!(c.server.public_url, "http://127.0.0.1:8080");
    assert_eq!(c.storage.data_dir, PathBuf::from("/etc/gantry/gantry-data"));
    assert!(c.tokens.is_empty());
    assert!(c.repos.is_empty());
    assert_eq!(c.check_listen_safety(), Ok(()));
    assert_eq!(c.storage.retention, Duration::from_secs(30 * 24 * 3600));
    assert_eq!(c.storage.keep_runs, 20);
}

#[test]
fn retention_takes_days_or_a_duration_and_a_floor() {
    let c = ok("[storage]\nretention = \"7d\"\nkeep_runs = 5\n");
    assert_eq!(c.storage.retention, Duration::from_secs(7 * 24 * 3600));
    assert_eq!(c.storage.keep_runs, 5);
    let c = ok("[storage]\nretention = \"12h\"\nkeep_runs = 0\n");
    assert_eq!(c.storage.retention, Duration::from_secs(12 * 3600));
    assert_eq!(c.storage.keep_runs, 0);
    assert_eq!(
        ok("[storage]\nretention = \"0d\"\n").storage.retention,
        Duration::ZERO
    );
    assert_eq!(
        one_error("[storage]\nretention = \"a month\"\n"),
        "2:13: storage.retention: invalid retention `a month`: expected days such as `30d`, or \
         a duration such as `12h`"
    );
    assert_eq!(
        one_error("[storage]\nkeep_runs = -1\n"),
        "2:13: storage.keep_runs: must be a whole number of runs, 0 or more"
    );
    assert_eq!(
        one_error("[storage]\nkeep_runs = \"20\"\n"),
        "2:13: storage.keep_runs: expected an integer, found string"
    );
}

#[test]
fn min_free_takes_a_size_a_percentage_or_zero() {
    use crate::spec::values::MinFree;
    assert_eq!(ok("").storage.min_free, MinFree::Default);
    assert_eq!(
        ok("[storage]\nmin_free = \"2GiB\"\n").storage.min_free,
        MinFree::Bytes(2 << 30)
    );
    assert_eq!(
        ok("[storage]\nmin_free = \"10%\"\n").storage.min_free,
        MinFree::Percent(10)
    );
    assert_eq!(
        ok("[storage]\nmin_free = 0\n").storage.min_free,
        MinFree::Bytes(0)
    );
    assert_eq!(
        one_error("[storage]\nmin_free = \"plenty\"\n"),
        "2:12: storage.min_free: expected a size such as \"1GiB\" or \"512MiB\", a number of \
         bytes (0 turns the reserve off), or a percentage such as \"5%\""
    );
    assert_eq!(
        one_error("[storage]\nmin_free = \"95%\"\n")
            .split(':')
            .next(),
        Some("2")
    );
}

#[test]
fn a_minimal_repo_gets_the_defaults() {
    let c = ok(&format!("{REPO}provider = \"git\"\n"));
    let r = &c.repos[0];
    assert_eq!(r.provider, Provider::Git);
    assert_eq!(r.repo, None);
    assert_eq!(r.branch, "main");
    assert_eq!(r.paths, crate::spec::model::DEFAULT_PIPELINE_GLOBS.to_vec());
    assert_eq!(r.poll_interval, Duration::from_secs(60));
    assert_eq!(r.token, None);
    assert_eq!(r.webhook_secret, None);
    assert_eq!(r.protected, vec!["main".to_string()]);
}

#[test]
fn protected_refs_default_to_the_watched_branch_and_are_checked() {
    let c = ok(&format!("{REPO}provider = \"git\"\nbranch = \"trunk\"\n"));
    assert_eq!(c.repos[0].protected, vec!["trunk".to_string()]);
    let c = ok(&format!(
        "{REPO}provider = \"git\"\nprotected = [\"main\", \"release/*\", \"refs/tags/v*\"]\n"
    ));
    assert_eq!(
        c.repos[0].protected,
        vec![
            "main".to_string(),
            "release/*".to_string(),
            "refs/tags/v*".to_string()
        ]
    );
    let err = one_error(&format!(
        "{REPO}provider = \"git\"\nprotected = [\"main\", \"bad/[x\"]\n"
    ));
    assert!(
        err.starts_with("5:22: repos[0].protected[1]: invalid glob: "),
        "{err}"
    );
    assert_eq!(
        one_error(&format!("{REPO}provider = \"git\"\nprotected = [\"\"]\n")),
        "5:14: repos[0].protected[0]: must be a branch or ref glob such as `main`, `release/*` \
         or `refs/tags/v*`, not empty and without spaces"
    );
}

#[test]
fn zero_poll_interval_turns_polling_off() {
    let c = ok(&format!(
        "{REPO}provider = \"git\"\npoll_interval = \"0s\"\n"
    ));
    assert_eq!(c.repos[0].poll_interval, Duration::ZERO);
}

#[test]
fn public_url_follows_listen_and_loses_its_trailing_slash() {
    let c = ok("[server]\nlisten = \"[::1]:9000\"\n");
    assert_eq!(c.server.public_url, "http://[::1]:9000");
    let c = ok("[server]\npublic_url = \"https://ci.example.com/\"\n");
    assert_eq!(c.server.public_url, "https://ci.example.com");
    assert_eq!(
        one_error("[server]\npublic_url = \"ftp://x\"\n"),
        "2:14: server.public_url: invalid public URL `ftp://x`: expected an http:// or https:// \
         URL, such as `https://gantry.example.com`"
    );
}

#[test]
fn unknown_keys_are_reported_with_a_suggestion() {
    assert_eq!(
        one_error("[server]\nlisten = \"127.0.0.1:1\"\npublic_ur = \"http://x\"\n"),
        "3:1: server.public_ur: unknown key `public_ur`; expected listen, public_url, max_backlog, \
         metrics_public (did you mean `public_url`?)"
    );
    let c = ok("[server]\nmetrics_public = true\n");
    assert!(c.server.metrics_public);
    assert!(!ok("[server]\n").server.metrics_public);
    assert_eq!(
        one_error("[server]\nmetrics_public = \"yes\"\n"),
        "2:18: server.metrics_public: expected true or false, found string"
    );
    assert_eq!(
        one_error(&format!(
            "{REPO}provider = \"git\"\n  poll_intervall = \"1m\"\n"
        )),
        "5:3: repos[0].poll_intervall: unknown key `poll_intervall`; expected name, url, \
         provider, repo, branch, paths, poll_interval, token, webhook_secret, api_url, \
         github_app_id, github_private_key, protected, executor (did you mean `poll_interval`?)"
    );
    assert_eq!(
        one_error("[sever]\n"),
        "1:2: sever: unknown key `sever`; expected server, storage, auth, repos, executor \
         (did you mean `server`?)"
    );
}

#[test]
fn an_unknown_provider_is_reported_with_a_suggestion() {
    assert_eq!(
        one_error(&format!("{REPO}provider   = \"gihub\"\nrepo = \"a/b\"\n")),
        "4:14: repos[0].provider: unknown provider `gihub`; expected github, gitlab, bitbucket \
         or git (did you mean `github`?)"
    );
}

#[test]
fn an_undefined_variable_names_itself_the_key_and_the_line() {
    assert_eq!(
        one_error(&format!(
            "{REPO}provider = \"git\"\ntoken = \"Bearer ${{NO_SUCH_VAR}}\"\n"
        )),
        "5:9: repos[0].token: undefined environment variable `NO_SUCH_VAR`"
    );
    assert_eq!(
        one_error("[storage]\ndata_dir = \"${unclosed\"\n"),
        "2:12: storage.data_dir: unclosed `${`; write `$${` for a literal `${`"
    );
}

#[test]
fn a_bad_duration_is_reported() {
    assert_eq!(
        one_error(&format!(
            "{REPO}provider = \"git\"\npoll_interval = \"60\"\n"
        )),
        "5:17: repos[0].poll_interval: invalid duration `60`: `60` has no unit; write `60s` or \
         `60m`"
    );
}

#[test]
fn a_bad_glob_is_reported_at_the_item() {
    let err = one_error(&format!(
        "{REPO}provider = \"git\"\npaths = [\"ok/*.yaml\", \"bad/[a.yaml\"]\n"
    ));
    assert!(
        err.starts_with("5:23: repos[0].paths[1]: invalid glob: "),
        "{err}"
    );
    assert_eq!(
        one_error(&format!("{REPO}provider = \"git\"\npaths = []\n")),
        "5:9: repos[0].paths: must list at least one glob of pipeline files"
    );
}

#[test]
fn a_bad_listen_address_is_reported() {
    assert_eq!(
        one_error("[server]\nlisten = \"localhost:8080\"\n"),
        "2:10: server.listen: invalid listen address `localhost:8080`: expected an IP address \
         and a port, such as `127.0.0.1:8080` or `[::1]:8080`"
    );
}

#[test]
fn duplicate_repo_names_are_reported() {
    let text = format!("{REPO}provider = \"git\"\n{REPO}provider = \"git\"\n");
    assert_eq!(
        one_error(&text),
        "6:8: repos[1].name: duplicate repository name `infra`; source names must be unique"
    );
}

#[test]
fn reserved_and_malformed_repo_names_are_reported() {
    let repo = |name: &str| {
        format!("[[repos]]\nname = \"{name}\"\nurl = \"file:///srv/x\"\nprovider = \"git\"\n")
    };
    assert_eq!(
        one_error(&repo("local")),
        "2:8: repos[0].name: repository name `local` is reserved for a built-in source; choose \
         another name"
    );
    assert!(one_error(&repo("file")).contains("`file` is reserved"));
    for bad in ["Infra", "1infra", "in_fra", "", &"a".repeat(64)] {
        let err = one_error(&repo(bad));
        assert!(
            err.starts_with("2:8: repos[0].name: invalid repository name"),
            "{bad}: {err}"
        );
    }
    ok(&repo(&"a".repeat(63)));
    ok(&repo("a-1"));
}

#[test]
fn the_repo_id_must_have_the_providers_shape() {
    let repo =
        |provider: &str, id: &str| format!("{REPO}provider = \"{provider}\"\nrepo = \"{id}\"\n");
    ok(&repo("github", "acme/infra"));
    ok(&repo("bitbucket", "team/infra.tools"));
    ok(&repo("gitlab", "acme/infra"));
    ok(&repo("gitlab", "acme/platform/infra"));
    ok(&repo("git", "anything"));
    assert_eq!(
        one_error(&repo("github", "acme/platform/infra")),
        "5:8: repos[0].repo: `acme/platform/infra` is not a github repository id; expected \
         `owner/repo`"
    );
    assert_eq!(
        one_error(&repo("bitbucket", "infra")),
        "5:8: repos[0].repo: `infra` is not a bitbucket repository id; expected \
         `workspace/slug`"
    );
    assert_eq!(
        one_error(&repo("gitlab", "acme//infra")),
        "5:8: repos[0].repo: `acme//infra` is not a gitlab repository id; expected \
         `group/project` or `group/subgroup/.../project`"
    );
}

#[test]
fn github_needs_a_repo_id() {
    assert_eq!(
        one_error(&format!("{REPO}provider = \"github\"\n")),
        "1:1: repos[0].repo: missing key `repo`: provider github needs the forge's repository \
         id (`owner/repo`) for webhooks and write-back"
    );
    assert_eq!(
        one_error("\n[[repos]]\nname = \"x\"\nprovider = \"git\"\n"),
        "2:1: repos[0].url: missing key `url`"
    );
}

#[test]
fn repository_urls_are_checked_without_quoting_them() {
    let repo =
        |url: &str| format!("[[repos]]\nname = \"x\"\nurl = \"{url}\"\nprovider = \"git\"\n");
    for good in [
        "https://github.com/acme/infra.git",
        "http://git.local/infra",
        "git://git.local/infra",
        "ssh://git@git.local/infra",
        "file:///srv/git/infra",
        "git@github.com:acme/infra.git",
    ] {
        ok(&repo(good));
    }
    assert_eq!(
        one_error(&repo("ftp://user:hunter2hunter2@host/x")),
        "3:7: repos[0].url: unsupported URL scheme `ftp`; expected an https://, http://, \
         git://, ssh:// or file:// URL, or git@host:path"
    );
    assert!(one_error(&repo("/srv/git/infra")).contains("not a repository URL"));
    let c = ok(&repo(
        "https://bot:hunter2hunter2@github.com/acme/infra.git",
    ));
    let debug = format!("{c:?}");
    assert!(!debug.contains("hunter2"), "{debug}");
    assert!(
        debug.contains("https://***@github.com/acme/infra.git"),
        "{debug}"
    );
}

#[test]
fn api_tokens_are_checked_without_showing_them() {
    let token = |name: &str, value: &str| {
        format!("[[auth.tokens]]\nname = \"{name}\"\ntoken = \"{value}\"\n")
    };
    assert_eq!(
        one_error(&token("admin", "abc123")),
        "3:9: auth.tokens[0].token: token of [[auth.tokens]] `admin` is too short \
         (6 characters); use at least 16 random characters, a short token can be guessed"
    );
    assert_eq!(
        one_error(&token("admin", "${SHORT}")),
        "3:9: auth.tokens[0].token: token of [[auth.tokens]] `admin` is too short \
         (6 characters); use at least 16 random characters, a short token can be guessed"
    );
    assert_eq!(
        one_error(&token("admin", "${EMPTY}")),
        "3:9: auth.tokens[0].token: token of [[auth.tokens]] `admin` is empty"
    );
    let twice = format!("{}{}", token("ci", ADMIN_TOKEN), token("ci", GITHUB_TOKEN));
    assert_eq!(
        one_error(&twice),
        "5:8: auth.tokens[1].name: duplicate name `ci`; token and user names must be unique"
    );
    assert_eq!(
        errors("[[auth.tokens]]\ntoken = 12345678901234567890\n"),
        vec![
            "1:1: auth.tokens[0].name: missing key `name`",
            "2:9: auth.tokens[0].token: expected a string, found integer",
        ]
    );
    let errs = errors("[[auth.tokens]]\nname = \"a\"\ntoken = 12345678901234567890\n");
    assert_eq!(
        errs,
        vec!["3:9: auth.tokens[0].token: expected a string, found integer"]
    );
}

#[test]
fn all_problems_are_reported_together_in_file_order() {
    let text = r#"[server]
listen = "nowhere"
[storage]
data_dri = "x"
[[auth.tokens]]
name = "admin"
token = "short"
[[repos]]
name = "local"
url = "https://example.com/x.git"
provider = "gitlabb"
poll_interval = "soon"
[[repos]]
name = "infra"
url = "https://example.com/infra.git"
provider = "github"
paths = ["a/[b"]
token = "${MISSING_TOKEN}"
"#;
    let errs = errors(text);
    let expected = [
        "2:10: server.listen: invalid listen address",
        "4:1: storage.data_dri: unknown key `data_dri`",
        "7:9: auth.tokens[0].token: token of [[auth.tokens]] `admin` is too short (5 characters)",
        "9:8: repos[0].name: repository name `local` is reserved",
        "11:12: repos[0].provider: unknown provider `gitlabb`",
        "12:17: repos[0].poll_interval: invalid duration `soon`",
        "13:1: repos[1].repo: missing key `repo`: provider github",
        "17:10: repos[1].paths[0]: invalid glob",
        "18:9: repos[1].token: undefined environment variable `MISSING_TOKEN`",
    ];
    assert_eq!(errs.len(), expected.len(), "{errs:#?}");
    for (got, want) in errs.iter().zip(expected) {
        assert!(got.starts_with(want), "got {got:?}, want {want:?}");
    }
    assert!(errs[4].ends_with("(did you mean `gitlab`?)"), "{}", errs[4]);
}

#[test]
fn a_toml_syntax_error_has_a_position() {
    let errs = errors("[server]\nlisten = 127.0.0.1:8080\n");
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert!(errs[0].starts_with("2:"), "{}", errs[0]);
    assert_eq!(
        errors("[server]\nlisten = \"a\"\nlisten = \"b\"\n"),
        vec!["3:1: duplicate key"]
    );
}

#[test]
fn dollar_dollar_brace_is_a_literal() {
    let c = ok(&format!(
        "{REPO}provider = \"git\"\nbranch = \"$${{NOT_A_VAR}}-$5-$$x\"\n"
    ));
    assert_eq!(c.repos[0].branch, "${NOT_A_VAR}-$5-$$x");
}

#[test]
fn variable_values_cannot_inject_toml() {
    let c = ok(&format!(
        "{REPO}provider = \"git\"\nwebhook_secret = \"${{NASTY}}\"\nbranch = 'b${{GITHUB_TOKEN}}'\n"
    ));
    assert_eq!(c.server.listen, "127.0.0.1:8080".parse().unwrap());
    assert_eq!(
        c.repos[0].webhook_secret.as_deref(),
        test_env("NASTY").as_deref()
    );
    assert_eq!(c.repos[0].branch, format!("b{GITHUB_TOKEN}"));
    // A value is not scanned again for references.
    let c = ok("[storage]\ndata_dir = \"/srv/${REF}\"\n");
    assert_eq!(c.storage.data_dir, PathBuf::from("/srv/${GITHUB_TOKEN}"));
}

#[test]
fn load_resolves_a_relative_data_dir_against_the_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let etc = dir.path().join("etc");
    std::fs::create_dir(&etc).unwrap();
    let path = etc.join("gantry.toml");

    std::fs::write(&path, "[storage]\ndata_dir = \"./data/../state\"\n").unwrap();
    let c = load(&path).unwrap();
    assert_eq!(c.storage.data_dir, etc.join("data/../state"));

    std::fs::write(&path, "").unwrap();
    assert_eq!(
        load(&path).unwrap().storage.data_dir,
        etc.join("gantry-data")
    );

    std::fs::write(&path, "[storage]\ndata_dir = \"/var/lib/gantry\"\n").unwrap();
    assert_eq!(
        load(&path).unwrap().storage.data_dir,
        PathBuf::from("/var/lib/gantry")
    );

    // A bare file name resolves against the current directory, as given.
    let c = parse("", Path::new("gantry.toml"), &test_env).unwrap();
    assert_eq!(c.storage.data_dir, PathBuf::from("gantry-data"));
}

#[test]
fn load_reports_an_unreadable_file_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("missing.toml");
    let err = load(&path).unwrap_err().to_string();
    assert!(
        err.starts_with(&format!(
            "{}: cannot read the config file: ",
            path.display()
        )),
        "{err}"
    );
}

#[test]
fn load_reads_variables_from_the_process_environment() {
    // PATH is set in every test environment; its value only has to arrive.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gantry.toml");
    std::fs::write(&path, "[storage]\ndata_dir = \"/x${PATH}\"\n").unwrap();
    let expected = format!("/x{}", std::env::var("PATH").unwrap());
    assert_eq!(
        load(&path).unwrap().storage.data_dir,
        PathBuf::from(expected)
    );
}

#[test]
fn without_a_token_only_loopback_addresses_are_allowed() {
    let open = ok("[server]\nlisten = \"0.0.0.0:8080\"\n");
    let err = open.check_listen_safety().unwrap_err();
    assert!(err.contains("0.0.0.0:8080"), "{err}");
    assert!(
        err.contains("add an [[auth.tokens]] entry or listen on 127.0.0.1"),
        "{err}"
    );

    let guarded = ok(&format!(
        "[server]\nlisten = \"0.0.0.0:8080\"\n[[auth.tokens]]\nname = \"admin\"\ntoken = \"{ADMIN_TOKEN}\"\n"
    ));
    assert_eq!(guarded.check_listen_safety(), Ok(()));

    let v6 = ok("[server]\nlisten = \"[::1]:8080\"\n");
    assert_eq!(v6.check_listen_safety(), Ok(()));
    let any6 = ok("[server]\nlisten = \"[::]:8080\"\n");
    assert!(any6.check_listen_safety().is_err());
}

#[test]
fn secrets_never_appear_in_debug_output_or_errors() {
    let secrets = [ADMIN_TOKEN, GITHUB_TOKEN, WEBHOOK_SECRET];
    let c = ok(EXAMPLE);
    let debug = format!("{c:?} {:#?}", c.repos[0]);
    for s in secrets {
        assert!(!debug.contains(s), "{debug}");
    }
    assert!(debug.contains("***"));

    // A broken file with secrets in every secret field, inline and from variables.
    let broken = format!(
        "[[auth.tokens]]\nname = \"admin\"\ntoken = \"{ADMIN_TOKEN}\"\ntokn = \"{GITHUB_TOKEN}\"\n\
         [[auth.tokens]]\nname = \"admin\"\ntoken = \"${{GITHUB_TOKEN}}\"\n\
         [[repos]]\nname = \"Bad\"\nurl = \"ftp://u:{WEBHOOK_SECRET}@h/x\"\nprovider = \"gihub\"\n\
         token = 42\nwebhook_secret = \"${{GITHUB_WEBHOOK_SECRET}}\"\nwebhok_secret = \"{WEBHOOK_SECRET}\"\n"
    );
    let err = check(&broken).unwrap_err();
    let text = format!("{err}\n{err:?}");
    assert!(err.errors.len() >= 6, "{text}");
    for s in secrets {
        assert!(!text.contains(s), "{text}");
    }
}

#[test]
fn forge_api_urls_default_per_provider_and_apps_need_both_keys() {
    let c = ok(&format!(
        "{REPO}provider = \"github\"\nrepo = \"acme/infra\"\n"
    ));
    assert_eq!(
        c.repos[0].api_url.as_deref(),
        Some("https://api.github.com")
    );
    let c = ok(&format!(
        "{REPO}provider = \"gitlab\"\nrepo = \"g/p\"\napi_url = \"http://127.0.0.1:9/\"\n"
    ));
    assert_eq!(c.repos[0].api_url.as_deref(), Some("http://127.0.0.1:9"));
    let c = ok(&format!("{REPO}provider = \"git\"\n"));
    assert_eq!(c.repos[0].api_url, None);

    let app = ok(&format!(
        "{REPO}provider = \"github\"\nrepo = \"acme/infra\"\ngithub_app_id = \"42\"\ngithub_private_key = \"PEM\"\n"
    ));
    let github_app = app.repos[0].github_app.as_ref().expect("app");
    assert_eq!(github_app.app_id, 42);
    assert!(!format!("{:?}", app.repos[0]).contains("PEM"));
    let half = one_error(&format!(
        "{REPO}provider = \"github\"\nrepo = \"acme/infra\"\ngithub_app_id = \"42\"\n"
    ));
    assert!(
        half.contains("needs both github_app_id and github_private_key"),
        "{half}"
    );
    let bad = one_error(&format!(
        "{REPO}provider = \"github\"\nrepo = \"acme/infra\"\napi_url = \"ftp://x\"\n"
    ));
    assert!(bad.contains("api_url"), "{bad}");
}

#[test]
fn the_readmes_service_config_parses() {
    let readme =
        std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
            .expect("README");
    let start = readme.find("```toml\n").expect("a toml block") + "```toml\n".len();
    let end = start + readme[start..].find("```").expect("its end");
    let c = ok(&readme[start..end]);
    let r = &c.repos[0];
    assert_eq!(r.protected, vec!["main", "release/*", "refs/tags/v*"]);
    assert_eq!(c.storage.retention, Duration::from_secs(30 * 24 * 3600));
    assert_eq!(c.storage.keep_runs, 20);
}

#[test]
fn executors_are_named_tables_with_a_default_and_repositories_name_theirs() {
    use super::{ExecutorConfig, LocalExecutorConfig, SandboxMode};
    // Nothing written: one local executor with its defaults, the default.
    let c = ok("");
    assert_eq!(c.executors.default, "local");
    assert_eq!(
        c.executors.named.get("local"),
        Some(&ExecutorConfig::Local(LocalExecutorConfig::default()))
    );

    let c = ok(&format!(
        "[executor]\ndefault = \"roomy\"\n[executor.local]\nsandbox = \"bubblewrap\"\n\
         [executor.roomy]\nkind = \"local\"\nmemory = \"16GiB\"\n\
         {REPO}provider = \"git\"\nexecutor = \"local\"\n"
    ));
    assert_eq!(c.executors.default, "roomy");
    let Some(ExecutorConfig::Local(roomy)) = c.executors.named.get("roomy") else {
        panic!("roomy: {:?}", c.executors);
    };
    assert_eq!(roomy.memory, Some(16 << 30));
    assert_eq!(roomy.sandbox, SandboxMode::Bubblewrap);
    assert_eq!(c.repos[0].executor.as_deref(), Some("local"));

    assert_eq!(
        one_error(&format!(
            "[executor.local]\n{REPO}provider = \"git\"\nexecutor = \"locl\"\n"
        )),
        "6:12: repos[0].executor: no executor `locl`; did you mean `local`?"
    );
    assert_eq!(
        one_error("[executor]\ndefault = \"far\"\n"),
        "2:11: executor.default: no executor `far`; the executors are local (tables \
         `[executor.NAME]`)"
    );
    assert_eq!(
        one_error("[executor.cluster]\nkind = \"tekton\"\n"),
        "2:8: executor.cluster.kind: unknown executor kind `tekton`: expected `local` or `argo`"
    );
    assert_eq!(
        one_error("[executor.Big]\nkind = \"local\"\n"),
        "1:1: executor.Big: invalid executor name `Big`: use 1 to 63 lowercase letters, digits \
         and `-`, starting with a letter"
    );
}

#[test]
fn an_argo_executor_names_its_server_namespace_and_token_and_hides_the_token() {
    use super::ExecutorConfig;
    let c = ok(
        "[executor.cluster]\nkind = \"argo\"\nserver = \"https://argo.example:2746/\"\n\
                namespace = \"gantry\"\ntoken = \"${GANTRY_ADMIN_TOKEN}\"\n",
    );
    let Some(ExecutorConfig::Argo(argo)) = c.executors.named.get("cluster") else {
        panic!("{:?}", c.executors);
    };
    assert_eq!(argo.server, "https://argo.example:2746");
    assert_eq!(argo.kube_api, argo.server);
    assert_eq!(argo.namespace, "gantry");
    assert_eq!(argo.token, super::ArgoToken::Value(ADMIN_TOKEN.into()));
    assert_eq!(argo.kube_token, None);
    assert!(!format!("{c:?}").contains(ADMIN_TOKEN));

    // In the cluster: the pod's own token, read as it rotates, and the cluster's CA.
    let c = ok(
        "[executor.cluster]\nkind = \"argo\"\nserver = \"https://argo:2746\"\n\
                namespace = \"gantry\"\ntoken = \"${GANTRY_ADMIN_TOKEN}\"\n\
                kube_token_file = \"/var/run/secrets/kubernetes.io/serviceaccount/token\"\n\
                ca_file = \"/var/run/secrets/kubernetes.io/serviceaccount/ca.crt\"\n",
    );
    let Some(ExecutorConfig::Argo(argo)) = c.executors.named.get("cluster") else {
        panic!("{:?}", c.executors);
    };
    assert_eq!(
        argo.kube_token,
        Some(super::ArgoToken::File(
            "/var/run/secrets/kubernetes.io/serviceaccount/token".into()
        ))
    );
    assert!(argo.ca_file.is_some());
    assert_eq!(
        one_error(
            "[executor.c]\nkind = \"argo\"\nserver = \"https://a\"\nnamespace = \"n\"\ntoken = \"t\"\ntoken_file = \"/t\"\n"
        ),
        "6:14: executor.c.token_file: give `token` or `token_file`, not both"
    );
    assert_eq!(
        errors("[executor.cluster]\nkind = \"argo\"\nserver = \"argo:2746\"\n"),
        [
            "1:1: executor.cluster.namespace: missing key `namespace`",
            "1:1: executor.cluster.token: missing key `token` (or `token_file`)",
            "3:10: executor.cluster.server: must be an http:// or https:// URL",
        ]
    );
}

#[test]
fn tokens_take_a_role_scopes_and_the_credentials_grant() {
    let c = ok(r#"
[[auth.tokens]]
name = "ops"
token = "ops-token-0123456789abcdef"
[[auth.tokens]]
name = "dev"
token = "dev-token-0123456789abcdef"
role = "viewer"
scopes = { infra = "runner", "local/deploy" = "editor" }
[[auth.tokens]]
name = "app"
token = "app-token-0123456789abcdef"
role = "runner"
credentials = true
"#);
    let (ops, dev, app) = (&c.tokens[0], &c.tokens[1], &c.tokens[2]);
    assert_eq!((ops.role, ops.credentials), (Role::Admin, true));
    assert_eq!((dev.role, dev.credentials), (Role::Viewer, false));
    assert_eq!(dev.role_on(None), Role::Viewer);
    assert_eq!(dev.role_on(Some(("infra", "db"))), Role::Runner);
    assert_eq!(dev.role_on(Some(("local", "deploy"))), Role::Editor);
    assert_eq!(dev.role_on(Some(("local", "other"))), Role::Viewer);
    assert_eq!((app.role, app.credentials), (Role::Runner, true));
    // A scope never lowers the global role.
    let admin = ok(
        "[[auth.tokens]]\nname = \"a\"\ntoken = \"a-token-0123456789abcdef\"\nscopes = { infra = \"viewer\" }\n",
    );
    assert_eq!(admin.tokens[0].role_on(Some(("infra", "x"))), Role::Admin);
    let e = one_error(
        "[[auth.tokens]]\nname = \"a\"\ntoken = \"a-token-0123456789abcdef\"\nrole = \"owner\"\n",
    );
    assert!(
        e.contains("auth.tokens[0].role") && e.contains("unknown role `owner`"),
        "{e}"
    );
    let e = one_error(
        "[[auth.tokens]]\nname = \"a\"\ntoken = \"a-token-0123456789abcdef\"\nscopes = { \"a/b/c\" = \"runner\" }\n",
    );
    assert!(e.contains("neither a source"), "{e}");
}

#[test]
fn users_log_in_with_an_argon2_hash_and_share_names_with_no_token() {
    let hash = hash_password("correct horse battery").expect("a hash");
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    let c = ok(&format!(
        "[[auth.users]]\nname = \"ann\"\npassword_hash = \"{hash}\"\nrole = \"runner\"\n"
    ));
    assert_eq!(c.users.len(), 1);
    let ann = &c.users[0];
    assert_eq!(
        (ann.grant.name.as_str(), ann.grant.role),
        ("ann", Role::Runner)
    );
    assert!(!ann.grant.credentials);
    assert!(ann.verify("correct horse battery"));
    assert!(!ann.verify("correct horse"));
    assert!(!format!("{ann:?}").contains(&hash), "Debug hides the hash");
    let e = one_error("[[auth.users]]\nname = \"ann\"\npassword_hash = \"hunter2\"\n");
    assert!(
        e.contains("auth.users[0].password_hash") && e.contains("gantry hash-password"),
        "{e}"
    );
    let e = one_error(&format!(
        "[[auth.tokens]]\nname = \"ann\"\ntoken = \"t-0123456789abcdef0123\"\n[[auth.users]]\nname = \"ann\"\npassword_hash = \"{hash}\"\n"
    ));
    assert!(e.contains("duplicate name `ann`"), "{e}");
    // Users alone are enough to serve with: nobody gets in without logging in.
    let users_only = ok(&format!(
        "[[auth.users]]\nname = \"ann\"\npassword_hash = \"{hash}\"\n"
    ));
    assert!(users_only.check_auth(false).is_ok());
}
