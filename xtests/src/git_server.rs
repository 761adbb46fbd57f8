//! A smart-HTTP git server on loopback, for the git fetch tests: git's own
//! `git http-backend` run as CGI for every request, behind HTTP Basic auth.
//!
//! Raw tokio TCP with a minimal HTTP/1.1 parser (one request per connection, answered with
//! `Connection: close`): request bodies with `Content-Length` or `Transfer-Encoding: chunked`
//! (git chunks large POSTs) are streamed into the CGI's stdin, its stdout is streamed back
//! after its CGI headers (`Status:` becomes the status line). Request headers reach the CGI
//! as `HTTP_*` variables, so `Content-Encoding: gzip` (`HTTP_CONTENT_ENCODING`) and
//! `Git-Protocol` (protocol v2) work.
//!
//! Test controls: the credentials required ([`GitServer::require`]), the status for a wrong
//! token (401 or 403), down (connections refused, or 503) and back up, a delay before each
//! request is handled, counts of requests, response bytes and chunked requests, and the
//! paths seen. Repositories are bare repositories under the project root, updated by `git
//! push` from a working directory ([`WorkRepo`]).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// Decides whether a token may read repository `owner/name`.
pub type TokenCheck = Arc<dyn Fn(&str, &str) -> bool + Send + Sync>;

/// How the server is down.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Down {
    /// The listener is closed: connections are refused.
    Refuse,
    /// Every request is answered 503.
    Unavailable,
}

struct State {
    project_root: PathBuf,
    home: PathBuf,
    backend: PathBuf,
    creds: Mutex<Option<(String, String)>>,
    /// A token check instead of one fixed token: (user, check(token, "owner/name")).
    checker: Mutex<Option<(String, TokenCheck)>>,
    wrong_status: AtomicU16,
    unavailable: AtomicBool,
    delay_ms: AtomicU64,
    requests: AtomicUsize,
    bytes_sent: AtomicU64,
    chunked: AtomicUsize,
    gzipped: AtomicUsize,
    paths: Mutex<Vec<String>>,
}

/// The running server; stops and deletes its repositories when dropped.
pub struct GitServer {
    state: Arc<State>,
    root: PathBuf,
    addr: SocketAddr,
    accept: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Drop for GitServer {
    fn drop(&mut self) {
        if let Some(t) = self.accept.lock().unwrap().take() {
            t.abort();
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// Runs git (the test's own, not the worker's) with a fixed identity and no user config.
pub fn git(dir: &Path, home: &Path, args: &[&str]) -> String {
    let out = std::process::Command::new("git")
        .args([
            "-c",
            "user.name=Lettuce Test",
            "-c",
            "user.email=test@lettuce.invalid",
            "-c",
            "commit.gpgsign=false",
            "-c",
            "init.defaultBranch=main",
        ])
        .args(args)
        .current_dir(dir)
        .env("HOME", home)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .output()
        .expect("run git");
    assert!(
        out.status.success(),
        "git {args:?} in {} failed: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn exec_path() -> PathBuf {
    let out = std::process::Command::new("git")
        .arg("--exec-path")
        .output()
        .expect("git --exec-path");
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

impl GitServer {
    /// A server on `127.0.0.1:0` with no repositories and no credentials required yet.
    pub async fn start() -> GitServer {
        let root = std::env::temp_dir().join(format!(
            "lettuce-gitsrv-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        let project_root = root.join("projects");
        let home = root.join("home");
        for d in [&project_root, &home, &root.join("work")] {
            std::fs::create_dir_all(d).unwrap();
        }
        let backend = exec_path().join("git-http-backend");
        assert!(backend.exists(), "{} is missing", backend.display());
        let state = Arc::new(State {
            project_root,
            home,
            backend,
            creds: Mutex::new(None),
            checker: Mutex::new(None),
            wrong_status: AtomicU16::new(401),
            unavailable: AtomicBool::new(false),
            delay_ms: AtomicU64::new(0),
            requests: AtomicUsize::new(0),
            bytes_sent: AtomicU64::new(0),
            chunked: AtomicUsize::new(0),
            gzipped: AtomicUsize::new(0),
            paths: Mutex::new(Vec::new()),
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(accept_loop(listener, state.clone()));
        GitServer {
            state,
            root,
            addr,
            accept: Mutex::new(Some(task)),
        }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The clone URL of `owner/name`.
    pub fn url(&self, full_name: &str) -> String {
        format!("{}/{full_name}.git", self.base())
    }

    /// Requires `Authorization: Basic base64(user:token)` on every request.
    pub fn require(&self, user: &str, token: &str) {
        *self.state.creds.lock().unwrap() = Some((user.into(), token.into()));
    }

    /// Requires HTTP Basic `user:<token>` where `check(token, "owner/name")` accepts the token
    /// for the repository requested (e.g. a fake GitHub's live installation tokens).
    pub fn require_checked(&self, user: &str, check: TokenCheck) {
        *self.state.checker.lock().unwrap() = Some((user.into(), check));
    }

    /// The status for a request with credentials that do not match: 401 (with
    /// `WWW-Authenticate`) or 403.
    pub fn set_wrong_token_status(&self, status: u16) {
        self.state.wrong_status.store(status, Ordering::SeqCst);
    }

    /// Takes the server down; returns once a new connection would see it.
    pub async fn set_down(&self, how: Down) {
        match how {
            Down::Unavailable => self.state.unavailable.store(true, Ordering::SeqCst),
            Down::Refuse => {
                let task = self.accept.lock().unwrap().take();
                if let Some(t) = task {
                    t.abort();
                    let _ = t.await;
                }
            }
        }
    }

    /// Brings the server back up on the same port.
    pub async fn set_up(&self) {
        self.state.unavailable.store(false, Ordering::SeqCst);
        if self.accept.lock().unwrap().is_some() {
            return;
        }
        let mut tries = 0;
        let listener = loop {
            match TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(e) if tries < 50 => {
                    tries += 1;
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("rebinding {}: {e}", self.addr),
            }
        };
        let task = tokio::spawn(accept_loop(listener, self.state.clone()));
        *self.accept.lock().unwrap() = Some(task);
    }

    /// A delay before each request is handled (after its head is read).
    pub fn set_delay(&self, delay: Duration) {
        self.state
            .delay_ms
            .store(delay.as_millis() as u64, Ordering::SeqCst);
    }

    /// Requests seen (every request whose head was read, whatever its answer).
    pub fn requests(&self) -> usize {
        self.state.requests.load(Ordering::SeqCst)
    }

    /// Bytes of response (status line, headers and body) written.
    pub fn bytes_sent(&self) -> u64 {
        self.state.bytes_sent.load(Ordering::SeqCst)
    }

    /// Requests whose body came with `Transfer-Encoding: chunked`.
    pub fn chunked_requests(&self) -> usize {
        self.state.chunked.load(Ordering::SeqCst)
    }

    /// Requests whose body came with `Content-Encoding: gzip`.
    pub fn gzipped_requests(&self) -> usize {
        self.state.gzipped.load(Ordering::SeqCst)
    }

    /// The path (with query) of the last request.
    pub fn last_path(&self) -> Option<String> {
        self.state.paths.lock().unwrap().last().cloned()
    }

    /// `METHOD target` of every request so far.
    pub fn paths(&self) -> Vec<String> {
        self.state.paths.lock().unwrap().clone()
    }

    /// Zeroes the request and byte counts.
    pub fn reset_counters(&self) {
        self.state.requests.store(0, Ordering::SeqCst);
        self.state.bytes_sent.store(0, Ordering::SeqCst);
        self.state.chunked.store(0, Ordering::SeqCst);
        self.state.gzipped.store(0, Ordering::SeqCst);
        self.state.paths.lock().unwrap().clear();
    }

    /// Creates the served bare repository `owner/name` (default branch `main`) and a working
    /// directory whose `origin` is it.
    pub fn create_repo(&self, full_name: &str) -> WorkRepo {
        let bare = self.state.project_root.join(format!("{full_name}.git"));
        std::fs::create_dir_all(&bare).unwrap();
        let home = self.state.home.clone();
        git(&bare, &home, &["init", "--bare", "--quiet", "-b", "main"]);
        let dir = self.root.join("work").join(full_name);
        std::fs::create_dir_all(&dir).unwrap();
        git(&dir, &home, &["init", "--quiet", "-b", "main"]);
        git(
            &dir,
            &home,
            &["remote", "add", "origin", &bare.display().to_string()],
        );
        WorkRepo { dir, bare, home }
    }
}

/// A working directory pushing to a served bare repository.
pub struct WorkRepo {
    /// The working directory.
    pub dir: PathBuf,
    /// The served bare repository.
    pub bare: PathBuf,
    home: PathBuf,
}

impl WorkRepo {
    /// Runs git in the working directory; panics on failure; returns stdout.
    pub fn git(&self, args: &[&str]) -> String {
        git(&self.dir, &self.home, args)
    }

    /// Runs git in the served bare repository.
    pub fn git_bare(&self, args: &[&str]) -> String {
        git(&self.bare, &self.home, args)
    }

    /// Writes `contents` to `path` (parents created).
    pub fn write(&self, path: &str, contents: impl AsRef<[u8]>) {
        let p = self.dir.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, contents).unwrap();
    }

    /// Commits everything and pushes the current branch; returns the commit id.
    pub fn commit(&self, message: &str) -> String {
        self.git(&["add", "-A"]);
        self.git(&["commit", "--quiet", "--allow-empty", "-m", message]);
        self.push_current();
        self.head()
    }

    /// Pushes the current branch to the served repository (forced).
    pub fn push_current(&self) {
        let branch = self.git(&["symbolic-ref", "--short", "HEAD"]);
        let spec = format!("+HEAD:refs/heads/{}", branch.trim());
        self.git(&["push", "--quiet", "origin", &spec]);
    }

    /// Creates and switches to `branch`.
    pub fn branch(&self, branch: &str) {
        self.git(&["checkout", "--quiet", "-b", branch]);
    }

    /// Switches to an existing `branch`.
    pub fn checkout(&self, branch: &str) {
        self.git(&["checkout", "--quiet", branch]);
    }

    /// An annotated tag on HEAD, pushed.
    pub fn tag(&self, name: &str) {
        self.git(&["tag", "-a", "-m", name, name]);
        self.git(&["push", "--quiet", "origin", &format!("refs/tags/{name}")]);
    }

    /// Makes `branch` the served repository's default branch (its HEAD).
    pub fn set_default_branch(&self, branch: &str) {
        self.git_bare(&["symbolic-ref", "HEAD", &format!("refs/heads/{branch}")]);
    }

    /// The commit id of HEAD.
    pub fn head(&self) -> String {
        self.git(&["rev-parse", "HEAD"]).trim().to_string()
    }

    /// `git ls-tree -r -z --long --full-tree <rev>` of the working directory, raw.
    pub fn ls_tree_raw(&self, rev: &str) -> Vec<u8> {
        let out = std::process::Command::new("git")
            .args(["ls-tree", "-r", "-z", "--long", "--full-tree", rev])
            .current_dir(&self.dir)
            .env("HOME", &self.home)
            .output()
            .unwrap();
        assert!(out.status.success());
        out.stdout
    }
}

async fn accept_loop(listener: TcpListener, state: Arc<State>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let _ = serve(stream, state).await;
        });
    }
}

struct Request {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

async fn read_head<R: AsyncBufReadExt + Unpin>(r: &mut R) -> std::io::Result<Option<Request>> {
    let mut line = Vec::new();
    let mut total = 0usize;
    let mut lines: Vec<String> = Vec::new();
    loop {
        line.clear();
        let n = r.read_until(b'\n', &mut line).await?;
        if n == 0 {
            return Ok(None);
        }
        total += n;
        if total > 64 * 1024 {
            return Err(std::io::Error::other("request head too large"));
        }
        let text = String::from_utf8_lossy(&line)
            .trim_end_matches(['\r', '\n'])
            .to_string();
        if text.is_empty() {
            if lines.is_empty() {
                continue;
            }
            break;
        }
        lines.push(text);
    }
    let mut first = lines[0].split(' ');
    let (Some(method), Some(target)) = (first.next(), first.next()) else {
        return Err(std::io::Error::other("bad request line"));
    };
    let headers = lines[1..]
        .iter()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    Ok(Some(Request {
        method: method.into(),
        target: target.into(),
        headers,
    }))
}

/// Copies the request body (by `Content-Length` or chunked) from `r` into `w`.
async fn copy_body<R, W>(req: &Request, r: &mut R, w: &mut W) -> std::io::Result<()>
where
    R: AsyncBufReadExt + Unpin,
    W: AsyncWrite + Unpin,
{
    let chunked = req
        .header("transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    if chunked {
        loop {
            let mut size_line = Vec::new();
            r.read_until(b'\n', &mut size_line).await?;
            let text = String::from_utf8_lossy(&size_line);
            let hex = text.trim().split(';').next().unwrap_or("").trim();
            let size = u64::from_str_radix(hex, 16)
                .map_err(|_| std::io::Error::other(format!("bad chunk size {text:?}")))?;
            if size == 0 {
                // Trailers, up to the empty line.
                loop {
                    let mut t = Vec::new();
                    if r.read_until(b'\n', &mut t).await? == 0 || t == b"\r\n" || t == b"\n" {
                        break;
                    }
                }
                break;
            }
            let copied = tokio::io::copy(&mut (&mut *r).take(size), w).await?;
            if copied != size {
                return Err(std::io::Error::other("chunk cut short"));
            }
            let mut crlf = Vec::new();
            r.read_until(b'\n', &mut crlf).await?;
        }
    } else if let Some(len) = req.header("content-length") {
        let len: u64 = len
            .parse()
            .map_err(|_| std::io::Error::other("bad content-length"))?;
        let copied = tokio::io::copy(&mut (&mut *r).take(len), w).await?;
        if copied != len {
            return Err(std::io::Error::other("body cut short"));
        }
    }
    w.flush().await?;
    Ok(())
}

async fn respond<W: AsyncWrite + Unpin>(
    w: &mut W,
    state: &State,
    status: &str,
    extra: &[(&str, &str)],
    body: &str,
) -> std::io::Result<()> {
    let mut out = format!("HTTP/1.1 {status}\r\n");
    for (k, v) in extra {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str(&format!(
        "Content-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    ));
    w.write_all(out.as_bytes()).await?;
    state
        .bytes_sent
        .fetch_add(out.len() as u64, Ordering::SeqCst);
    w.flush().await
}

/// `owner/name` of a request target `/owner/name.git/…`.
fn repo_of(target: &str) -> String {
    let path = target.split('?').next().unwrap_or("");
    let path = path.trim_start_matches('/');
    match path
        .find(".git/")
        .or_else(|| path.strip_suffix(".git").map(|p| p.len()))
    {
        Some(i) => path[..i].to_string(),
        None => path.to_string(),
    }
}

fn check_auth(req: &Request, state: &State) -> Result<Option<String>, u16> {
    let checker = state.checker.lock().unwrap().clone();
    if let Some((want_user, check)) = checker {
        let value = req.header("authorization").ok_or(401u16)?;
        let b64 = value
            .strip_prefix("Basic ")
            .or_else(|| value.strip_prefix("basic "))
            .ok_or(401u16)?;
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .ok()
            .and_then(|b| String::from_utf8(b).ok());
        return match decoded.as_deref().and_then(|d| d.split_once(':')) {
            Some((u, t)) if u == want_user && check(t, &repo_of(&req.target)) => {
                Ok(Some(u.to_string()))
            }
            _ => Err(state.wrong_status.load(Ordering::SeqCst)),
        };
    }
    let creds = state.creds.lock().unwrap().clone();
    let Some((want_user, want_token)) = creds else {
        return Ok(None);
    };
    let Some(value) = req.header("authorization") else {
        return Err(401);
    };
    let Some(b64) = value
        .strip_prefix("Basic ")
        .or_else(|| value.strip_prefix("basic "))
    else {
        return Err(401);
    };
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .ok()
        .and_then(|b| String::from_utf8(b).ok());
    match decoded.as_deref().and_then(|d| d.split_once(':')) {
        Some((u, t)) if u == want_user && t == want_token => Ok(Some(u.to_string())),
        _ => Err(state.wrong_status.load(Ordering::SeqCst)),
    }
}

async fn serve(stream: TcpStream, state: Arc<State>) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read);
    let Some(req) = read_head(&mut read).await? else {
        return Ok(());
    };
    state.requests.fetch_add(1, Ordering::SeqCst);
    state
        .paths
        .lock()
        .unwrap()
        .push(format!("{} {}", req.method, req.target));
    let delay = state.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    if req
        .header("expect")
        .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"))
    {
        write.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await?;
    }
    if state.unavailable.load(Ordering::SeqCst) {
        copy_body(&req, &mut read, &mut tokio::io::sink()).await?;
        return respond(&mut write, &state, "503 Service Unavailable", &[], "down\n").await;
    }
    let user = match check_auth(&req, &state) {
        Ok(u) => u,
        Err(status) => {
            copy_body(&req, &mut read, &mut tokio::io::sink()).await?;
            return if status == 403 {
                respond(&mut write, &state, "403 Forbidden", &[], "forbidden\n").await
            } else {
                respond(
                    &mut write,
                    &state,
                    "401 Unauthorized",
                    &[("WWW-Authenticate", "Basic realm=\"lettuce-test\"")],
                    "unauthorized\n",
                )
                .await
            };
        }
    };
    if req
        .header("transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
    {
        state.chunked.fetch_add(1, Ordering::SeqCst);
    }
    if req
        .header("content-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("gzip"))
    {
        state.gzipped.fetch_add(1, Ordering::SeqCst);
    }
    run_cgi(&req, user, &mut read, &mut write, &state).await
}

async fn run_cgi<R, W>(
    req: &Request,
    user: Option<String>,
    read: &mut R,
    write: &mut W,
    state: &State,
) -> std::io::Result<()>
where
    R: AsyncBufReadExt + Unpin,
    W: AsyncWrite + Unpin,
{
    let (path, query) = req.target.split_once('?').unwrap_or((&req.target, ""));
    let path = percent_decode(path);
    let mut cmd = tokio::process::Command::new(&state.backend);
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", &state.home)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_PROJECT_ROOT", &state.project_root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("GATEWAY_INTERFACE", "CGI/1.1")
        .env("SERVER_PROTOCOL", "HTTP/1.1")
        .env("SERVER_SOFTWARE", "lettuce-xtests")
        .env("REMOTE_ADDR", "127.0.0.1")
        .env("REQUEST_METHOD", &req.method)
        .env("PATH_INFO", &path)
        .env("QUERY_STRING", query)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    if let Some(u) = &user {
        cmd.env("REMOTE_USER", u).env("AUTH_TYPE", "Basic");
    }
    if let Some(ct) = req.header("content-type") {
        cmd.env("CONTENT_TYPE", ct);
    }
    let chunked = req
        .header("transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    if !chunked && let Some(len) = req.header("content-length") {
        cmd.env("CONTENT_LENGTH", len);
    }
    for (k, v) in &req.headers {
        let lower = k.to_ascii_lowercase();
        if matches!(
            lower.as_str(),
            "authorization" | "content-type" | "content-length" | "transfer-encoding"
        ) {
            continue;
        }
        let name = format!("HTTP_{}", k.to_ascii_uppercase().replace('-', "_"));
        cmd.env(name, v);
        if lower == "git-protocol" {
            cmd.env("GIT_PROTOCOL", v);
        }
    }
    let mut child = cmd.spawn()?;
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let feed = async {
        let r = copy_body(req, read, &mut stdin).await;
        drop(stdin);
        r
    };
    let answer = async { relay_cgi_output(&mut stdout, write, state).await };
    let (fed, answered) = tokio::join!(feed, answer);
    let _ = child.wait().await;
    fed.and(answered)
}

/// Reads the CGI headers, writes the HTTP status line and headers, then streams the body.
async fn relay_cgi_output<R, W>(stdout: &mut R, write: &mut W, state: &State) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let (head_end, body_start) = loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break (i, i + 4);
        }
        if let Some(i) = find(&buf, b"\n\n") {
            break (i, i + 2);
        }
        let n = stdout.read(&mut chunk).await?;
        if n == 0 {
            let body = "the CGI ended before its headers\n";
            return respond(write, state, "502 Bad Gateway", &[], body).await;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut status = "200 OK".to_string();
    let mut out = String::new();
    for line in head.lines().map(|l| l.trim_end_matches('\r')) {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        if k.eq_ignore_ascii_case("status") {
            status = v.trim().to_string();
        } else if !k.eq_ignore_ascii_case("connection") {
            out.push_str(&format!("{}: {}\r\n", k.trim(), v.trim()));
        }
    }
    let head = format!("HTTP/1.1 {status}\r\n{out}Connection: close\r\n\r\n");
    write.write_all(head.as_bytes()).await?;
    let mut sent = head.len() as u64;
    write.write_all(&buf[body_start..]).await?;
    sent += (buf.len() - body_start) as u64;
    loop {
        let n = stdout.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        write.write_all(&chunk[..n]).await?;
        sent += n as u64;
    }
    write.flush().await?;
    write.shutdown().await?;
    state.bytes_sent.fetch_add(sent, Ordering::SeqCst);
    Ok(())
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn percent_decode(s: &str) -> String {
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2]))
        {
            out.push(h * 16 + l);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
