//! The pages around the pipelines: the marketplace (browse, a resource, connect to it), variables
//! and secrets (secret values are write-only: they go in through a form and never come out), and
//! the watched sources (last sync, errors, sync now).

use std::collections::BTreeMap;

use askama::Template;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Extension, Form, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use chrono::Utc;
use serde::Deserialize;

use super::{Chrome, Viewer, error_page, page, store_error};
use crate::marketplace::{self, Filter, NewConnection, ResourceSummary, ResourceView};
use crate::server::AppState;
use crate::server::api::{self, ApiError, Permission};
use crate::server::extract::Path;
use crate::store::{ConfigEntry, ConnectionRecord, SecretRelease};

fn kind_name(category: crate::spec::model::Category, kind: Option<&str>) -> String {
    let category = crate::spec::model::Category::ALL
        .iter()
        .find(|(_, c)| *c == category)
        .map(|(n, _)| *n)
        .unwrap_or("other");
    match kind {
        Some(k) => format!("{category} ({k})"),
        None => category.to_string(),
    }
}

fn market_error(viewer: &Viewer, e: marketplace::MarketError) -> Response {
    error_page(viewer, ApiError::from(e))
}

// ---- marketplace -------------------------------------------------------------------------

#[derive(Template)]
#[template(path = "marketplace.html")]
struct MarketPage {
    chrome: Chrome,
    resources: Vec<ResourceSummary>,
    connections: Vec<ConnectionRecord>,
    kind: String,
    tag: String,
    search: String,
}

impl MarketPage {
    fn kind_of(&self, r: &ResourceSummary) -> String {
        kind_name(r.record.category, r.record.kind.as_deref())
    }
}

#[derive(Deserialize, Default)]
pub struct MarketQuery {
    #[serde(default, rename = "type")]
    kind: String,
    #[serde(default)]
    tag: String,
    #[serde(default)]
    search: String,
}

pub async fn marketplace(
    State(state): State<AppState>,
    Extension(viewer): Extension<Viewer>,
    query: Result<Query<MarketQuery>, QueryRejection>,
) -> Response {
    let q = query.map(|Query(q)| q).unwrap_or_default();
    let filter = Filter {
        kind: (!q.kind.is_empty()).then(|| q.kind.clone()),
        tag: (!q.tag.is_empty()).then(|| q.tag.clone()),
        search: (!q.search.is_empty()).then(|| q.search.clone()),
        all: false,
    };
    let store = state.store.clone();
    let read = api::blocking(move || {
        let resources = marketplace::summaries(&store, &filter)?;
        let connections = store.list_connections()?;
        Ok::<_, marketplace::MarketError>((resources, connections))
    })
    .await;
    match read {
        Ok(Ok((resources, connections))) => page(
            StatusCode::OK,
            &MarketPage {
                chrome: Chrome::of(&viewer),
                resources,
                connections,
                kind: q.kind,
                tag: q.tag,
                search: q.search,
            },
        ),
        Ok(Err(e)) => market_error(&viewer, e),
        Err(e) => error_page(&viewer, e),
    }
}

#[derive(Template)]
#[template(path = "resource.html")]
struct ResourcePage {
    chrome: Chrome,
    view: ResourceView,
    kind: String,
    error: Option<String>,
    form_name: String,
}

fn resource_page(
    state: &AppState,
    viewer: &Viewer,
    name: &str,
    error: Option<String>,
    form_name: String,
) -> Response {
    let view = match marketplace::show(&state.store, name) {
        Ok(view) => view,
        Err(e) => return market_error(viewer, e),
    };
    let status = if error.is_some() {
        StatusCode::UNPROCESSABLE_ENTITY
    } else {
        StatusCode::OK
    };
    page(
        status,
        &ResourcePage {
            chrome: Chrome::of(viewer),
            kind: kind_name(view.record.category, view.record.kind.as_deref()),
            view,
            error,
            form_name,
        },
    )
}

pub async fn resource(
    State(state): State<AppState>,
    Extension(viewer): Extension<Viewer>,
    Path(name): Path<String>,
) -> Response {
    resource_page(&state, &viewer, &name, None, String::new())
}

#[derive(Deserialize)]
pub struct ConnectForm {
    name: String,
    environment: String,
    #[serde(default)]
    version: String,
    #[serde(default)]
    consumer: String,
}

pub async fn connect(
    State(state): State<AppState>,
    Extension(viewer): Extension<Viewer>,
    Path(resource): Path<String>,
    Form(form): Form<ConnectForm>,
) -> Response {
    if let Some(why) = viewer.caller.refusal(Permission::Edit, None) {
        return error_page(&viewer, ApiError::new(StatusCode::FORBIDDEN, why));
    }
    let store = state.store.clone();
    let (r, name) = (resource.clone(), form.name.clone());
    let made = api::blocking(move || {
        marketplace::create_connection(
            &store,
            NewConnection {
                name: form.name.trim().to_string(),
                consumer: Some(form.consumer.trim().to_string()).filter(|c| !c.is_empty()),
                resource: r,
                environment: form.environment,
                version: Some(form.version.trim().to_string()).filter(|v| !v.is_empty()),
                mapping: BTreeMap::new(),
            },
            Utc::now(),
        )
    })
    .await;
    match made {
        Ok(Ok(_)) => Redirect::to("/marketplace").into_response(),
        Ok(Err(e)) => resource_page(&state, &viewer, &resource, Some(e.to_string()), name),
        Err(e) => error_page(&viewer, e),
    }
}

// ---- variables and secrets ---------------------------------------------------------------

#[derive(Template)]
#[template(path = "settings.html")]
struct SettingsPage {
    chrome: Chrome,
    vars: Vec<ConfigEntry>,
    /// Names only: the store never answers a secret's value here.
    secrets: Vec<ConfigEntry>,
    error: Option<String>,
}

fn settings_page(state: &AppState, viewer: &Viewer, error: Option<String>) -> Response {
    let read = state
        .store
        .list_vars()
        .and_then(|v| Ok((v, state.store.list_secrets()?)));
    let (vars, mut secrets) = match read {
        Ok(lists) => lists,
        Err(e) => return store_error(viewer, e),
    };
    for s in &mut secrets {
        s.value = None;
    }
    let status = if error.is_some() {
        StatusCode::UNPROCESSABLE_ENTITY
    } else {
        StatusCode::OK
    };
    page(
        status,
        &SettingsPage {
            chrome: Chrome::of(viewer),
            vars,
            secrets,
            error,
        },
    )
}

pub async fn settings(
    State(state): State<AppState>,
    Extension(viewer): Extension<Viewer>,
) -> Response {
    settings_page(&state, &viewer, None)
}

#[derive(Deserialize)]
pub struct ValueForm {
    name: String,
    #[serde(default)]
    value: String,
    #[serde(default)]
    pipeline: String,
    #[serde(default)]
    unprotected: Option<String>,
}

/// The scope a form names (`source/name`, empty for every pipeline), once the viewer may edit
/// there: the store's scope, or why not.
fn editable_scope(viewer: &Viewer, pipeline: &str) -> Result<Option<String>, ApiError> {
    let pipeline = pipeline.trim();
    let (scope, on) = if pipeline.is_empty() {
        (None, None)
    } else {
        let Some((source, name)) = pipeline.split_once('/') else {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("`{pipeline}` is not a pipeline: write it as source/name"),
            ));
        };
        (
            Some(crate::run::config_scope(source, name)),
            Some((source, name)),
        )
    };
    if let Some(why) = viewer.caller.refusal(Permission::Edit, on) {
        return Err(ApiError::new(StatusCode::FORBIDDEN, why));
    }
    Ok(scope)
}

fn check_name(name: &str) -> Result<(), String> {
    if crate::spec::values::is_identifier(name) {
        Ok(())
    } else {
        Err(format!(
            "invalid name `{name}`: it must match ^[a-zA-Z_][a-zA-Z0-9_]*$"
        ))
    }
}

async fn change(
    state: AppState,
    viewer: Viewer,
    form: ValueForm,
    secret: bool,
    remove: bool,
) -> Response {
    let scope = match editable_scope(&viewer, &form.pipeline) {
        Ok(scope) => scope,
        Err(e) => return error_page(&viewer, e),
    };
    if let Err(m) = check_name(&form.name) {
        return settings_page(&state, &viewer, Some(m));
    }
    let store = state.store.clone();
    let done = api::blocking(move || {
        let scope = scope.as_deref();
        match (secret, remove) {
            (false, false) => store.set_var(scope, &form.name, &form.value).map(|_| true),
            (false, true) => store.remove_var(scope, &form.name),
            (true, false) => {
                let release = if form.unprotected.is_some() {
                    SecretRelease::Unprotected
                } else {
                    SecretRelease::Protected
                };
                store
                    .set_secret_with(scope, &form.name, &form.value, release)
                    .map(|_| true)
            }
            (true, true) => store.remove_secret(scope, &form.name),
        }
    })
    .await;
    match done {
        Ok(Ok(_)) => Redirect::to("/settings").into_response(),
        Ok(Err(e)) => settings_page(&state, &viewer, Some(e.to_string())),
        Err(e) => error_page(&viewer, e),
    }
}

/// `POST /settings/{kind}` and `POST /settings/{kind}/delete`: `kind` is `variables` or
/// `secrets`.
pub async fn set(
    State(state): State<AppState>,
    Extension(viewer): Extension<Viewer>,
    Path(kind): Path<String>,
    Form(form): Form<ValueForm>,
) -> Response {
    settings_change(state, viewer, &kind, form, false).await
}

pub async fn remove(
    State(state): State<AppState>,
    Extension(viewer): Extension<Viewer>,
    Path(kind): Path<String>,
    Form(form): Form<ValueForm>,
) -> Response {
    settings_change(state, viewer, &kind, form, true).await
}

async fn settings_change(
    state: AppState,
    viewer: Viewer,
    kind: &str,
    form: ValueForm,
    remove: bool,
) -> Response {
    let secret = match kind {
        "variables" => false,
        "secrets" => true,
        _ => {
            return error_page(
                &viewer,
                ApiError::new(StatusCode::NOT_FOUND, format!("no settings of `{kind}`")),
            );
        }
    };
    change(state, viewer, form, secret, remove).await
}

// ---- sources -----------------------------------------------------------------------------

pub struct SourceRow {
    name: String,
    url: String,
    branch: String,
    head: Option<String>,
    synced_at: Option<String>,
    error: Option<String>,
}

#[derive(Template)]
#[template(path = "sources.html")]
struct SourcesPage {
    chrome: Chrome,
    sources: Vec<SourceRow>,
}

pub async fn sources(
    State(state): State<AppState>,
    Extension(viewer): Extension<Viewer>,
) -> Response {
    let mut rows = Vec::new();
    for (name, repo) in state.repos.iter() {
        let s = match state.store.source_state(name) {
            Ok(s) => s,
            Err(e) => return store_error(&viewer, e),
        };
        rows.push(SourceRow {
            name: name.clone(),
            url: crate::source::mirror::redact_url(&repo.source.url),
            branch: repo.source.branch.clone(),
            head: s.head.map(|h| h.chars().take(12).collect()),
            synced_at: s.synced_at.as_ref().map(crate::views::when),
            error: s.error,
        });
    }
    page(
        StatusCode::OK,
        &SourcesPage {
            chrome: Chrome::of(&viewer),
            sources: rows,
        },
    )
}

pub async fn sync(
    State(state): State<AppState>,
    Extension(viewer): Extension<Viewer>,
    Path(source): Path<String>,
) -> Response {
    if let Some(why) = viewer.caller.refusal(Permission::Admin, None) {
        return error_page(&viewer, ApiError::new(StatusCode::FORBIDDEN, why));
    }
    match state.repos.get(&source) {
        Some(repo) => {
            repo.wake.notify_one();
            Redirect::to("/sources").into_response()
        }
        None => error_page(
            &viewer,
            ApiError::new(
                StatusCode::NOT_FOUND,
                format!("no watched repository `{source}`"),
            ),
        ),
    }
}
