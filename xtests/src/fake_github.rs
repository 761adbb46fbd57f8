//! A fake GitHub on loopback, for the provider tests: what a GitHub App sees of the REST API.
//!
//! It verifies App JWTs as GitHub does (RS256 against the App's public key; expired, not yet
//! valid, lifetime over 10 minutes, wrong `iss`, bad signature → 401 with GitHub's JSON error
//! body), issues installation tokens with an `expires_at` the test controls, knows
//! installations and repositories (404 for others), serves `GET /app`, `GET /app/installations`,
//! `GET /repos/{o}/{r}`, `GET/POST /repos/{o}/{r}/hooks` and `PATCH /repos/{o}/{r}/hooks/{id}`,
//! optionally under `/api/v3` (GHES), counts requests per route and can be told to answer the
//! next requests of a route with a fault (rate limits, 5xx, 403, 401, a slow answer).

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, Uri};
use axum::response::Response;
use base64::Engine as _;
use serde_json::{Value, json};

/// An App key pair made by the openssl CLI at test time.
#[derive(Clone)]
pub struct AppKey {
    /// `BEGIN RSA PRIVATE KEY` PEM.
    pub pkcs1_pem: String,
    /// `BEGIN PRIVATE KEY` PEM.
    pub pkcs8_pem: String,
    /// DER `RSAPublicKey`, what the fake verifies with.
    pub public_der: Vec<u8>,
}

fn openssl(args: &[&str]) {
    let ok = std::process::Command::new("openssl")
        .args(args)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("the openssl CLI runs")
        .success();
    assert!(ok, "openssl {args:?} failed");
}

impl AppKey {
    /// A fresh 2048-bit RSA key.
    pub fn generate() -> AppKey {
        let dir: PathBuf = std::env::temp_dir().join(format!(
            "lettuce-fakegh-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let p = |n: &str| dir.join(n).display().to_string();
        openssl(&["genrsa", "-traditional", "-out", &p("k1.pem"), "2048"]);
        openssl(&[
            "pkcs8",
            "-topk8",
            "-nocrypt",
            "-in",
            &p("k1.pem"),
            "-out",
            &p("k8.pem"),
        ]);
        openssl(&[
            "rsa",
            "-in",
            &p("k1.pem"),
            "-RSAPublicKey_out",
            "-outform",
            "DER",
            "-out",
            &p("pub.der"),
        ]);
        let key = AppKey {
            pkcs1_pem: std::fs::read_to_string(p("k1.pem")).unwrap(),
            pkcs8_pem: std::fs::read_to_string(p("k8.pem")).unwrap(),
            public_der: std::fs::read(p("pub.der")).unwrap(),
        };
        std::fs::remove_dir_all(&dir).unwrap();
        key
    }

    /// The PKCS#1 PEM on one line with literal `\n` (how deployments often mangle it).
    pub fn escaped_pem(&self) -> String {
        self.pkcs1_pem.trim().replace('\n', "\\n")
    }

    /// Base64 of the PKCS#1 PEM.
    pub fn base64_pem(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.pkcs1_pem.as_bytes())
    }
}

/// A canned misbehaviour for the next request(s) of a route.
#[derive(Clone, Debug)]
pub enum Fault {
    /// 403 with `x-ratelimit-remaining: 0` and `x-ratelimit-reset` = this Unix time.
    PrimaryRateLimit { reset: i64 },
    /// 403 with `retry-after: secs` (a secondary rate limit).
    SecondaryRateLimit { retry_after: u64 },
    /// This 5xx status.
    ServerError(u16),
    /// 403 "Resource not accessible by integration" naming the permission GitHub wanted.
    Forbidden { accepted_permissions: String },
    /// 401 "Bad credentials".
    Unauthorized,
    /// Answer normally, after this delay.
    Slow(Duration),
}

#[derive(Clone, Debug)]
pub struct FakeHook {
    pub id: u64,
    pub url: String,
    pub events: Vec<String>,
    pub active: bool,
    pub secret: String,
    pub content_type: String,
}

struct Repo {
    id: u64,
    installation: u64,
    default_branch: String,
    private: bool,
    hooks: Vec<FakeHook>,
}

struct Inner {
    app_id: u64,
    slug: String,
    public_der: Vec<u8>,
    prefix: String,
    installations: HashMap<u64, String>,
    repos: HashMap<String, Repo>,
    /// token → (installation, expires_at unix).
    tokens: HashMap<String, (u64, i64)>,
    issued: Vec<String>,
    jwts: Vec<String>,
    token_ttl: Duration,
    token_delay: Duration,
    faults: HashMap<String, VecDeque<Fault>>,
    counts: HashMap<String, usize>,
    user_agents: Vec<String>,
    next_id: u64,
}

/// The running fake; stops when dropped.
pub struct FakeGithub {
    inner: Arc<Mutex<Inner>>,
    /// `http://127.0.0.1:<port>` (the server base, without the GHES prefix).
    pub base: String,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeGithub {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn error(status: u16, message: &str) -> Response {
    json_response(
        status,
        &json!({
            "message": message,
            "documentation_url": "https://docs.github.com/rest",
            "status": status.to_string(),
        }),
    )
}

fn json_response(status: u16, body: &Value) -> Response {
    Response::builder()
        .status(status)
        .header("content-type", "application/json; charset=utf-8")
        .body(Body::from(serde_json::to_vec(body).unwrap()))
        .unwrap()
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn rfc3339(t: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(t)
        .unwrap()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

impl FakeGithub {
    /// A fake for App `app_id` whose public key is `key`'s. `ghes`: serve under `/api/v3`.
    pub async fn start(app_id: u64, key: &AppKey, ghes: bool) -> FakeGithub {
        Self::start_with_public_key(app_id, key.public_der.clone(), ghes).await
    }

    pub async fn start_with_public_key(app_id: u64, public_der: Vec<u8>, ghes: bool) -> FakeGithub {
        let inner = Arc::new(Mutex::new(Inner {
            app_id,
            slug: "lettuce-test-app".into(),
            public_der,
            prefix: if ghes {
                "/api/v3".into()
            } else {
                String::new()
            },
            installations: HashMap::new(),
            repos: HashMap::new(),
            tokens: HashMap::new(),
            issued: Vec::new(),
            jwts: Vec::new(),
            token_ttl: Duration::from_secs(3600),
            token_delay: Duration::ZERO,
            faults: HashMap::new(),
            counts: HashMap::new(),
            user_agents: Vec::new(),
            next_id: 1000,
        }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(inner.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeGithub { inner, base, task }
    }

    /// What `GITHUB_API_URL` should be: the base plus `/api/v3` for GHES.
    pub fn api_url(&self) -> String {
        format!("{}{}", self.base, self.inner.lock().unwrap().prefix)
    }

    pub fn add_installation(&self, id: u64, account: &str) {
        self.inner
            .lock()
            .unwrap()
            .installations
            .insert(id, account.into());
    }

    /// Removes an installation (the App was uninstalled): its tokens stop working too.
    pub fn remove_installation(&self, id: u64) {
        let mut g = self.inner.lock().unwrap();
        g.installations.remove(&id);
        g.tokens.retain(|_, (i, _)| *i != id);
    }

    pub fn add_repo(&self, installation: u64, full_name: &str, default_branch: &str) {
        let mut g = self.inner.lock().unwrap();
        g.next_id += 1;
        let id = g.next_id;
        g.repos.insert(
            full_name.into(),
            Repo {
                id,
                installation,
                default_branch: default_branch.into(),
                private: true,
                hooks: Vec::new(),
            },
        );
    }

    /// The `expires_at` of tokens issued from now on: now + `ttl`.
    pub fn set_token_ttl(&self, ttl: Duration) {
        self.inner.lock().unwrap().token_ttl = ttl;
    }

    /// How long `access_tokens` takes to answer (so concurrent callers overlap).
    pub fn set_token_delay(&self, delay: Duration) {
        self.inner.lock().unwrap().token_delay = delay;
    }

    /// Invalidates every installation token issued so far (GitHub revoked them).
    pub fn revoke_tokens(&self) {
        self.inner.lock().unwrap().tokens.clear();
    }

    /// The next `times` requests to `route` (as counted, e.g. `GET /repos/{o}/{r}/hooks`) get
    /// `fault`.
    pub fn fail_next(&self, route: &str, fault: Fault, times: usize) {
        let mut g = self.inner.lock().unwrap();
        let q = g.faults.entry(route.to_string()).or_default();
        for _ in 0..times {
            q.push_back(fault.clone());
        }
    }

    /// Requests seen for `route` (`POST /app/installations/{id}/access_tokens`, …).
    pub fn count(&self, route: &str) -> usize {
        self.inner
            .lock()
            .unwrap()
            .counts
            .get(route)
            .copied()
            .unwrap_or(0)
    }

    /// Whether `token` is a live installation token (issued, not revoked, not expired) of an
    /// installation that can see `full_name`: what GitHub's git endpoint checks before
    /// serving a clone.
    pub fn token_grants(&self, token: &str, full_name: &str) -> bool {
        grants(&self.inner.lock().unwrap(), token, full_name)
    }

    /// [`FakeGithub::token_grants`] as a closure, for the git server's token check.
    pub fn token_checker(&self) -> impl Fn(&str, &str) -> bool + Send + Sync + 'static {
        let inner = self.inner.clone();
        move |token: &str, full_name: &str| grants(&inner.lock().unwrap(), token, full_name)
    }

    /// Every installation token issued and every JWT presented, for secret scans.
    pub fn secrets_seen(&self) -> Vec<String> {
        let g = self.inner.lock().unwrap();
        g.issued.iter().chain(g.jwts.iter()).cloned().collect()
    }

    pub fn user_agents(&self) -> Vec<String> {
        self.inner.lock().unwrap().user_agents.clone()
    }

    pub fn hooks(&self, full_name: &str) -> Vec<FakeHook> {
        self.inner
            .lock()
            .unwrap()
            .repos
            .get(full_name)
            .map(|r| r.hooks.clone())
            .unwrap_or_default()
    }
}

/// GitHub's JWT checks. `Err` is the 401 message.
fn grants(g: &Inner, token: &str, full_name: &str) -> bool {
    let Some(&(installation, expires)) = g.tokens.get(token) else {
        return false;
    };
    expires > now()
        && g.installations.contains_key(&installation)
        && g.repos
            .get(full_name)
            .is_some_and(|r| r.installation == installation)
}

fn verify_jwt(g: &Inner, token: &str) -> Result<(), &'static str> {
    let mut parts = token.split('.');
    let (Some(h), Some(c), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("A JSON web token could not be decoded");
    };
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header: Value = b64
        .decode(h)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or("A JSON web token could not be decoded")?;
    if header["alg"] != "RS256" {
        return Err("A JSON web token could not be decoded");
    }
    let sig = b64
        .decode(s)
        .map_err(|_| "A JSON web token could not be decoded")?;
    let key = ring::signature::UnparsedPublicKey::new(
        &ring::signature::RSA_PKCS1_2048_8192_SHA256,
        &g.public_der,
    );
    if key.verify(format!("{h}.{c}").as_bytes(), &sig).is_err() {
        return Err("A JSON web token could not be decoded");
    }
    let claims: Value = b64
        .decode(c)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or("A JSON web token could not be decoded")?;
    let (Some(iat), Some(exp)) = (claims["iat"].as_i64(), claims["exp"].as_i64()) else {
        return Err(
            "'Expiration time' claim ('exp') must be a numeric value representing the future time at which the assertion expires",
        );
    };
    let t = now();
    if exp <= t {
        return Err(
            "'Expiration time' claim ('exp') must be a numeric value representing the future time at which the assertion expires",
        );
    }
    if iat > t + 1 {
        return Err(
            "'Issued at' claim ('iat') must be an Integer representing the time that the assertion was issued",
        );
    }
    if exp - iat > 600 || exp > t + 600 {
        return Err("'Expiration time' claim ('exp') is too far in the future");
    }
    let iss = match &claims["iss"] {
        Value::String(s) => s.parse::<u64>().ok(),
        Value::Number(n) => n.as_u64(),
        _ => None,
    };
    if iss != Some(g.app_id) {
        return Err("'Issuer' claim ('iss') must be an Integer");
    }
    Ok(())
}

fn bearer(headers: &HeaderMap) -> Option<String> {
    let v = headers.get("authorization")?.to_str().ok()?;
    v.strip_prefix("Bearer ")
        .or_else(|| v.strip_prefix("token "))
        .map(str::to_string)
}

async fn handle(
    State(inner): State<Arc<Mutex<Inner>>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    // Route and count first, under the lock; sleep outside it.
    let (route, fault, delay) = {
        let mut g = inner.lock().unwrap();
        if let Some(ua) = headers.get("user-agent").and_then(|v| v.to_str().ok()) {
            g.user_agents.push(ua.to_string());
        }
        let path = uri.path().to_string();
        let Some(rest) = path.strip_prefix(g.prefix.as_str()).map(str::to_string) else {
            return error(404, "Not Found");
        };
        let segments: Vec<&str> = rest.trim_start_matches('/').split('/').collect();
        let route = match (method.as_str(), segments.as_slice()) {
            ("GET", ["app"]) => "GET /app".to_string(),
            ("GET", ["app", "installations"]) => "GET /app/installations".to_string(),
            ("POST", ["app", "installations", _, "access_tokens"]) => {
                "POST /app/installations/{id}/access_tokens".to_string()
            }
            ("GET", ["repos", _, _]) => "GET /repos/{o}/{r}".to_string(),
            ("GET", ["repos", _, _, "hooks"]) => "GET /repos/{o}/{r}/hooks".to_string(),
            ("POST", ["repos", _, _, "hooks"]) => "POST /repos/{o}/{r}/hooks".to_string(),
            ("PATCH", ["repos", _, _, "hooks", _]) => "PATCH /repos/{o}/{r}/hooks/{id}".to_string(),
            _ => return error(404, "Not Found"),
        };
        *g.counts.entry(route.clone()).or_default() += 1;
        let fault = g.faults.get_mut(&route).and_then(|q| q.pop_front());
        let delay = if route.starts_with("POST /app/installations") {
            g.token_delay
        } else {
            Duration::ZERO
        };
        (route, fault, delay)
    };
    let delay = match &fault {
        Some(Fault::Slow(d)) => delay + *d,
        _ => delay,
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    match fault {
        Some(Fault::PrimaryRateLimit { reset }) => {
            let mut r = error(403, "API rate limit exceeded for installation ID 1.");
            let h = r.headers_mut();
            h.insert("x-ratelimit-limit", "5000".parse().unwrap());
            h.insert("x-ratelimit-remaining", "0".parse().unwrap());
            h.insert("x-ratelimit-reset", reset.to_string().parse().unwrap());
            return r;
        }
        Some(Fault::SecondaryRateLimit { retry_after }) => {
            let mut r = error(
                403,
                "You have exceeded a secondary rate limit. Please wait a few minutes before you try again.",
            );
            r.headers_mut()
                .insert("retry-after", retry_after.to_string().parse().unwrap());
            return r;
        }
        Some(Fault::ServerError(status)) => return error(status, "Server Error"),
        Some(Fault::Forbidden {
            accepted_permissions,
        }) => {
            let mut r = error(403, "Resource not accessible by integration");
            r.headers_mut().insert(
                "x-accepted-github-permissions",
                accepted_permissions.parse().unwrap(),
            );
            return r;
        }
        Some(Fault::Unauthorized) => return error(401, "Bad credentials"),
        Some(Fault::Slow(_)) | None => {}
    }
    let mut g = inner.lock().unwrap();
    let path = uri.path().to_string();
    let rest = path
        .strip_prefix(g.prefix.as_str())
        .unwrap_or(&path)
        .to_string();
    let segments: Vec<&str> = rest.trim_start_matches('/').split('/').collect();
    let Some(credential) = bearer(&headers) else {
        return error(401, "Requires authentication");
    };
    if route.starts_with("GET /app") || route.starts_with("POST /app") {
        g.jwts.push(credential.clone());
        if let Err(message) = verify_jwt(&g, &credential) {
            return error(401, message);
        }
        return match route.as_str() {
            "GET /app" => json_response(
                200,
                &json!({"id": g.app_id, "slug": g.slug, "name": "Lettuce Test App",
                        "owner": {"login": "acme"}, "permissions": {"metadata": "read", "repository_hooks": "write"}}),
            ),
            "GET /app/installations" => {
                let mut list: Vec<Value> = g
                    .installations
                    .iter()
                    .map(|(id, account)| json!({"id": id, "account": {"login": account}, "app_id": g.app_id}))
                    .collect();
                list.sort_by_key(|v| v["id"].as_u64());
                // Paged as GitHub pages it: `per_page` (default 30, at most 100), `page` from 1.
                let param = |name: &str| {
                    uri.query()
                        .unwrap_or("")
                        .split('&')
                        .find_map(|kv| kv.strip_prefix(&format!("{name}=")[..]))
                        .and_then(|v| v.parse::<usize>().ok())
                };
                let per_page = param("per_page").unwrap_or(30).clamp(1, 100);
                let page = param("page").unwrap_or(1).max(1);
                let list: Vec<Value> = list
                    .into_iter()
                    .skip((page - 1) * per_page)
                    .take(per_page)
                    .collect();
                json_response(200, &Value::Array(list))
            }
            _ => {
                let Some(id) = segments.get(2).and_then(|s| s.parse::<u64>().ok()) else {
                    return error(404, "Not Found");
                };
                if !g.installations.contains_key(&id) {
                    return error(404, "Not Found");
                }
                let token = format!("ghs_{:032x}", rand::random::<u128>());
                let expires = now() + g.token_ttl.as_secs() as i64;
                g.tokens.insert(token.clone(), (id, expires));
                g.issued.push(token.clone());
                json_response(
                    201,
                    &json!({"token": token, "expires_at": rfc3339(expires),
                            "permissions": {"metadata": "read", "repository_hooks": "write"},
                            "repository_selection": "all"}),
                )
            }
        };
    }
    // Repository routes need a valid installation token.
    let Some(&(installation, expires)) = g.tokens.get(&credential) else {
        return error(401, "Bad credentials");
    };
    if expires <= now() {
        return error(401, "Bad credentials");
    }
    let full_name = format!("{}/{}", segments[1], segments[2]);
    let next_id = g.next_id + 1;
    let Some(repo) = g
        .repos
        .get_mut(&full_name)
        .filter(|r| r.installation == installation)
    else {
        return error(404, "Not Found");
    };
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let hook_json = |h: &FakeHook| {
        json!({"id": h.id, "type": "Repository", "name": "web", "active": h.active, "events": h.events,
               "config": {"url": h.url, "content_type": h.content_type, "insecure_ssl": "0",
                          "secret": if h.secret.is_empty() { Value::Null } else { json!("********") }}})
    };
    let events = |b: &Value| -> Vec<String> {
        b["events"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|e| e.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_else(|| vec!["push".into()])
    };
    match route.as_str() {
        "GET /repos/{o}/{r}" => json_response(
            200,
            &json!({"id": repo.id, "name": segments[2], "full_name": full_name,
                    "private": repo.private, "default_branch": repo.default_branch,
                    "clone_url": "(fake: not used)"}),
        ),
        "GET /repos/{o}/{r}/hooks" => json_response(
            200,
            &Value::Array(repo.hooks.iter().map(hook_json).collect()),
        ),
        "POST /repos/{o}/{r}/hooks" => {
            let hook = FakeHook {
                id: next_id,
                url: body["config"]["url"].as_str().unwrap_or_default().into(),
                events: events(&body),
                active: body["active"].as_bool().unwrap_or(true),
                secret: body["config"]["secret"].as_str().unwrap_or_default().into(),
                content_type: body["config"]["content_type"]
                    .as_str()
                    .unwrap_or("form")
                    .into(),
            };
            let out = hook_json(&hook);
            repo.hooks.push(hook);
            g.next_id = next_id;
            json_response(201, &out)
        }
        _ => {
            let Some(id) = segments.get(4).and_then(|s| s.parse::<u64>().ok()) else {
                return error(404, "Not Found");
            };
            let Some(hook) = repo.hooks.iter_mut().find(|h| h.id == id) else {
                return error(404, "Not Found");
            };
            if let Some(url) = body["config"]["url"].as_str() {
                hook.url = url.into();
            }
            if let Some(secret) = body["config"]["secret"].as_str() {
                hook.secret = secret.into();
            }
            if body.get("events").is_some() {
                hook.events = events(&body);
            }
            if let Some(active) = body["active"].as_bool() {
                hook.active = active;
            }
            json_response(200, &hook_json(hook))
        }
    }
}
