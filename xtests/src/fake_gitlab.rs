//! A fake GitLab on loopback, for the GitLab provider tests: what an access token sees of the
//! REST API v4.
//!
//! It requires the right `PRIVATE-TOKEN` (401 `{"message":"401 Unauthorized"}` otherwise, as
//! GitLab answers), knows projects by URL-encoded full path (`grp%2Fsub%2Fproj`) and by numeric
//! id (404 `{"message":"404 Project Not Found"}` for others), serves `GET /api/v4/user`,
//! `GET /api/v4/projects/:id`, `GET/POST /api/v4/projects/:id/hooks` and
//! `PUT /api/v4/projects/:id/hooks/:hook_id` (hooks keep the `token` they were given and, like
//! GitLab, never return it), counts requests per route and can be told to answer the next
//! requests of a route with a fault (429 with `RateLimit-Reset` or `Retry-After`, 5xx, 403
//! `insufficient_scope`, a slow answer).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, Uri};
use axum::response::Response;
use serde_json::{Value, json};

/// Route names as counted and as `fail_next` takes them.
pub const USER: &str = "GET /user";
pub const PROJECT: &str = "GET /projects/:id";
pub const LIST_HOOKS: &str = "GET /projects/:id/hooks";
pub const CREATE_HOOK: &str = "POST /projects/:id/hooks";
pub const UPDATE_HOOK: &str = "PUT /projects/:id/hooks/:hook_id";

/// A canned misbehaviour for the next request(s) of a route.
#[derive(Clone, Debug)]
pub enum Fault {
    /// 429 with `RateLimit-Remaining: 0` and `RateLimit-Reset` = this Unix time (no
    /// `Retry-After`).
    RateLimitReset { reset: i64 },
    /// 429 with `Retry-After: secs`.
    RetryAfter { secs: u64 },
    /// This 5xx status.
    ServerError(u16),
    /// 403 `insufficient_scope` (a token without `api`).
    Forbidden,
    /// Answer normally, after this delay.
    Slow(Duration),
}

/// A project hook as the fake stores it, `token` included.
#[derive(Clone, Debug)]
pub struct FakeHook {
    pub id: u64,
    pub url: String,
    pub push_events: bool,
    pub merge_requests_events: bool,
    pub issues_events: bool,
    pub enable_ssl_verification: bool,
    pub token: String,
}

struct Project {
    id: u64,
    path: String,
    default_branch: String,
    visibility: String,
    hooks: Vec<FakeHook>,
}

struct Inner {
    token: String,
    projects: Vec<Project>,
    faults: HashMap<String, VecDeque<Fault>>,
    counts: HashMap<String, usize>,
    user_agents: Vec<String>,
    /// Every request's path and query, as sent.
    uris: Vec<String>,
    next_id: u64,
}

/// The running fake; stops when dropped.
pub struct FakeGitlab {
    inner: Arc<Mutex<Inner>>,
    /// `http://127.0.0.1:<port>`: what `GITLAB_HOST` is set to in tests.
    pub base: String,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeGitlab {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn json_response(status: u16, body: &Value) -> Response {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Body::from(serde_json::to_vec(body).unwrap()))
        .unwrap()
}

fn message(status: u16, text: &str) -> Response {
    json_response(status, &json!({ "message": text }))
}

impl FakeGitlab {
    /// A fake that accepts `token` as `PRIVATE-TOKEN`.
    pub async fn start(token: &str) -> FakeGitlab {
        let inner = Arc::new(Mutex::new(Inner {
            token: token.to_string(),
            projects: Vec::new(),
            faults: HashMap::new(),
            counts: HashMap::new(),
            user_agents: Vec::new(),
            uris: Vec::new(),
            next_id: 100,
        }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(inner.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeGitlab { inner, base, task }
    }

    /// Adds a project (`visibility`: `private`, `internal` or `public`); returns its id.
    pub fn add_project(&self, path: &str, default_branch: &str, visibility: &str) -> u64 {
        let mut g = self.inner.lock().unwrap();
        g.next_id += 1;
        let id = g.next_id;
        g.projects.push(Project {
            id,
            path: path.into(),
            default_branch: default_branch.into(),
            visibility: visibility.into(),
            hooks: Vec::new(),
        });
        id
    }

    /// The next `times` requests to `route` (one of the route constants) get `fault`.
    pub fn fail_next(&self, route: &str, fault: Fault, times: usize) {
        let mut g = self.inner.lock().unwrap();
        let q = g.faults.entry(route.to_string()).or_default();
        for _ in 0..times {
            q.push_back(fault.clone());
        }
    }

    /// Requests seen for `route`, whatever they were answered.
    pub fn count(&self, route: &str) -> usize {
        self.inner
            .lock()
            .unwrap()
            .counts
            .get(route)
            .copied()
            .unwrap_or(0)
    }

    pub fn user_agents(&self) -> Vec<String> {
        self.inner.lock().unwrap().user_agents.clone()
    }

    /// Every request's path and query.
    pub fn uris(&self) -> Vec<String> {
        self.inner.lock().unwrap().uris.clone()
    }

    pub fn hooks(&self, path: &str) -> Vec<FakeHook> {
        self.inner
            .lock()
            .unwrap()
            .projects
            .iter()
            .find(|p| p.path == path)
            .map(|p| p.hooks.clone())
            .unwrap_or_default()
    }
}

/// `:id` as GitLab reads it: a number, or a URL-encoded full path.
fn find_project<'a>(projects: &'a mut [Project], id: &str) -> Option<&'a mut Project> {
    if let Ok(n) = id.parse::<u64>() {
        return projects.iter_mut().find(|p| p.id == n);
    }
    let path = id.replace("%2F", "/").replace("%2f", "/");
    projects.iter_mut().find(|p| p.path == path)
}

fn project_json(base: &str, p: &Project) -> Value {
    json!({
        "id": p.id,
        "name": p.path.rsplit('/').next().unwrap_or_default(),
        "path_with_namespace": p.path,
        "default_branch": p.default_branch,
        "visibility": p.visibility,
        "http_url_to_repo": format!("{base}/{}.git", p.path),
        "web_url": format!("{base}/{}", p.path),
    })
}

fn hook_json(project_id: u64, h: &FakeHook) -> Value {
    json!({
        "id": h.id,
        "url": h.url,
        "project_id": project_id,
        "push_events": h.push_events,
        "merge_requests_events": h.merge_requests_events,
        "issues_events": h.issues_events,
        "enable_ssl_verification": h.enable_ssl_verification,
        "alert_status": "executable",
        "created_at": "2026-01-01T00:00:00.000Z",
    })
}

/// Applies the fields of a POST/PUT body that are present.
fn apply(h: &mut FakeHook, body: &Value) {
    let flag = |name: &str, current: bool| body[name].as_bool().unwrap_or(current);
    if let Some(url) = body["url"].as_str() {
        h.url = url.to_string();
    }
    h.push_events = flag("push_events", h.push_events);
    h.merge_requests_events = flag("merge_requests_events", h.merge_requests_events);
    h.issues_events = flag("issues_events", h.issues_events);
    h.enable_ssl_verification = flag("enable_ssl_verification", h.enable_ssl_verification);
    if let Some(token) = body["token"].as_str() {
        h.token = token.to_string();
    }
}

async fn handle(
    State(inner): State<Arc<Mutex<Inner>>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let base = format!(
        "http://{}",
        headers
            .get("host")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("127.0.0.1")
    );
    let (route, segments, fault, authorized) = {
        let mut g = inner.lock().unwrap();
        if let Some(ua) = headers.get("user-agent").and_then(|v| v.to_str().ok()) {
            g.user_agents.push(ua.to_string());
        }
        g.uris.push(
            uri.path_and_query()
                .map(|p| p.to_string())
                .unwrap_or_default(),
        );
        let Some(rest) = uri.path().strip_prefix("/api/v4/") else {
            return message(404, "404 Not Found");
        };
        let segments: Vec<String> = rest.split('/').map(str::to_string).collect();
        let s: Vec<&str> = segments.iter().map(String::as_str).collect();
        let route = match (method.as_str(), s.as_slice()) {
            ("GET", ["user"]) => USER,
            ("GET", ["projects", _]) => PROJECT,
            ("GET", ["projects", _, "hooks"]) => LIST_HOOKS,
            ("POST", ["projects", _, "hooks"]) => CREATE_HOOK,
            ("PUT", ["projects", _, "hooks", _]) => UPDATE_HOOK,
            _ => return message(404, "404 Not Found"),
        };
        *g.counts.entry(route.to_string()).or_default() += 1;
        let authorized = headers
            .get("private-token")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|t| t == g.token);
        let fault = if authorized {
            g.faults.get_mut(route).and_then(|q| q.pop_front())
        } else {
            None
        };
        (route, segments, fault, authorized)
    };
    if !authorized {
        return message(401, "401 Unauthorized");
    }
    match fault {
        Some(Fault::RateLimitReset { reset }) => {
            let mut r = message(429, "Retry later");
            let h = r.headers_mut();
            h.insert("ratelimit-limit", "600".parse().unwrap());
            h.insert("ratelimit-remaining", "0".parse().unwrap());
            h.insert("ratelimit-reset", reset.to_string().parse().unwrap());
            return r;
        }
        Some(Fault::RetryAfter { secs }) => {
            let mut r = message(429, "Retry later");
            r.headers_mut()
                .insert("retry-after", secs.to_string().parse().unwrap());
            return r;
        }
        Some(Fault::ServerError(status)) => return message(status, "500 Internal Server Error"),
        Some(Fault::Forbidden) => {
            return json_response(
                403,
                &json!({
                    "error": "insufficient_scope",
                    "error_description": "The request requires higher privileges than provided by the access token.",
                    "scope": "api",
                }),
            );
        }
        Some(Fault::Slow(d)) => tokio::time::sleep(d).await,
        None => {}
    }
    let mut g = inner.lock().unwrap();
    if route == USER {
        return json_response(
            200,
            &json!({"id": 7, "username": "project_7_bot_lettuce", "name": "lettuce-indexer", "bot": true}),
        );
    }
    let next_id = g.next_id + 1;
    let Some(project) = find_project(&mut g.projects, &segments[1]) else {
        return message(404, "404 Project Not Found");
    };
    let pid = project.id;
    match route {
        PROJECT => json_response(200, &project_json(&base, project)),
        LIST_HOOKS => json_response(
            200,
            &Value::Array(project.hooks.iter().map(|h| hook_json(pid, h)).collect()),
        ),
        CREATE_HOOK => {
            let Ok(body) = serde_json::from_slice::<Value>(&body) else {
                return json_response(400, &json!({"error": "body is not JSON"}));
            };
            if body["url"].as_str().is_none_or(str::is_empty) {
                return json_response(400, &json!({"error": "url is missing"}));
            }
            let mut hook = FakeHook {
                id: next_id,
                url: String::new(),
                push_events: true,
                merge_requests_events: false,
                issues_events: false,
                enable_ssl_verification: true,
                token: String::new(),
            };
            apply(&mut hook, &body);
            let out = hook_json(pid, &hook);
            project.hooks.push(hook);
            g.next_id = next_id;
            json_response(201, &out)
        }
        UPDATE_HOOK => {
            let Ok(body) = serde_json::from_slice::<Value>(&body) else {
                return json_response(400, &json!({"error": "body is not JSON"}));
            };
            let Some(hook) = segments[3]
                .parse::<u64>()
                .ok()
                .and_then(|id| project.hooks.iter_mut().find(|h| h.id == id))
            else {
                return message(404, "404 Not found");
            };
            apply(hook, &body);
            json_response(200, &hook_json(pid, hook))
        }
        _ => message(404, "404 Not Found"),
    }
}
