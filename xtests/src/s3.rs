//! A throwaway S3 server for tests: moto (`pip install 'moto[server]'`, installed by
//! `scripts/setup.d/20-moto.sh`) on a free loopback port, with one bucket, killed on drop.
//!
//! moto keeps everything in memory, so `stop` + `restart` on the same port comes back empty
//! and `restart` creates the bucket again. Path-style addressing, as MinIO deployments use.

use std::collections::HashMap;
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The static credentials the tests hand the worker. moto accepts any unless started with
/// `INITIAL_NO_AUTH_ACTION_COUNT` (see [`MotoServer::start_with_auth`]).
pub const ACCESS_KEY_ID: &str = "lettuce-test";
pub const SECRET_ACCESS_KEY: &str = "lettuce-test-secret";

/// A running moto server.
pub struct MotoServer {
    pub port: u16,
    pub bucket: String,
    /// Extra environment for moto (e.g. to turn authentication on).
    moto_env: Vec<(String, String)>,
    child: Option<Child>,
}

impl MotoServer {
    /// Starts moto on a free port and creates `bucket`.
    pub async fn start(bucket: &str) -> MotoServer {
        Self::start_env(bucket, Vec::new()).await
    }

    /// Starts moto with request authentication on: the bucket is created by the one
    /// unauthenticated action moto then allows, and every later request needs credentials
    /// moto's IAM knows, so [`ACCESS_KEY_ID`] is refused (`InvalidAccessKeyId`).
    pub async fn start_with_auth(bucket: &str) -> MotoServer {
        Self::start_env(
            bucket,
            vec![("INITIAL_NO_AUTH_ACTION_COUNT".into(), "1".into())],
        )
        .await
    }

    async fn start_env(bucket: &str, moto_env: Vec<(String, String)>) -> MotoServer {
        let port = free_port();
        let mut server = MotoServer {
            port,
            bucket: bucket.to_string(),
            moto_env,
            child: None,
        };
        server.launch().await;
        server
    }

    async fn launch(&mut self) {
        assert!(self.child.is_none(), "moto already running");
        let child = Command::new("python3")
            .args(["-m", "moto.server", "-H", "127.0.0.1", "-p"])
            .arg(self.port.to_string())
            .envs(self.moto_env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start moto (python3 -m moto.server); scripts/setup.d/20-moto.sh installs it");
        self.child = Some(child);
        // Wait for the port to accept connections. A TCP connect, not an HTTP request: with
        // authentication on, moto counts every request against its unauthenticated budget.
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "moto exited with {status} before answering on port {}",
                    self.port
                );
            }
            assert!(
                Instant::now() < deadline,
                "moto did not answer on port {} within 30s",
                self.port
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Plain HTTP: moto takes an unsigned `PUT /<bucket>` as CreateBucket.
        let resp = reqwest::Client::new()
            .put(format!("{}/{}", self.endpoint(), self.bucket))
            .send()
            .await
            .expect("create bucket on moto");
        assert!(
            resp.status().is_success(),
            "moto refused CreateBucket: {}",
            resp.status()
        );
    }

    /// Kills the server (its data goes with it); the port stays reserved for `restart`.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and creates the bucket again.
    pub async fn restart(&mut self) {
        self.launch().await;
    }

    /// The pid of the running server.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The `CODEWAZE_S3_*` variables that point a worker at this server.
    pub fn env(&self) -> HashMap<String, String> {
        [
            ("CODEWAZE_S3_BUCKET", self.bucket.clone()),
            ("CODEWAZE_S3_ENDPOINT", self.endpoint()),
            ("CODEWAZE_S3_REGION", "us-east-1".into()),
            ("CODEWAZE_S3_ACCESS_KEY_ID", ACCESS_KEY_ID.into()),
            ("CODEWAZE_S3_SECRET_ACCESS_KEY", SECRET_ACCESS_KEY.into()),
            ("CODEWAZE_S3_FORCE_PATH_STYLE", "true".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// An SDK client for this server, independent of the worker's, for checking what landed.
    pub fn client(&self) -> aws_sdk_s3::Client {
        use aws_sdk_s3::config::{BehaviorVersion, Builder, Credentials, Region};
        let conf = Builder::new()
            .behavior_version(BehaviorVersion::latest())
            .endpoint_url(self.endpoint())
            .region(Region::new("us-east-1"))
            .credentials_provider(Credentials::new(
                ACCESS_KEY_ID,
                SECRET_ACCESS_KEY,
                None,
                None,
                "xtests",
            ))
            .force_path_style(true)
            .build();
        aws_sdk_s3::Client::from_conf(conf)
    }
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        self.stop();
    }
}

pub use crate::services::free_port;
