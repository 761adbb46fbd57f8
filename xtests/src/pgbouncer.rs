//! A throwaway PgBouncer in `transaction` mode in front of the test server, started on a free
//! loopback port with its own `pgbouncer.ini` in a temporary directory and stopped on drop.
//! Debian's package (`scripts/setup.d/60-pgbouncer.sh`) is 1.18: no prepared statements in
//! transaction mode, LISTEN lasts one statement.
//!
//! Every database name is forwarded to the test server (`* = host=… port=…`), so a
//! [`crate::TestDb`] is reached through the pooler by [`PgBouncer::url_for`]. The pool is small
//! (`default_pool_size`), so many clients share few server connections, as in production.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running PgBouncer.
pub struct PgBouncer {
    child: Child,
    /// Holds `pgbouncer.ini`, the auth file and the log; removed on drop.
    dir: PathBuf,
    pub port: u16,
}

/// Server connections per (database, user) pair: small, so clients really share them.
pub const POOL_SIZE: u32 = 4;

impl PgBouncer {
    /// Starts PgBouncer (transaction mode, [`POOL_SIZE`] server connections per database)
    /// forwarding to the server of [`crate::admin_url`], and waits until it answers.
    pub async fn start() -> PgBouncer {
        PgBouncer::start_with(POOL_SIZE).await
    }

    /// Like [`PgBouncer::start`] with `pool_size` server connections per database.
    pub async fn start_with(pool_size: u32) -> PgBouncer {
        let admin: tokio_postgres::Config = crate::admin_url().parse().expect("admin URL parses");
        let (host, port) = match admin.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(h)) => (
                h.clone(),
                admin.get_ports().first().copied().unwrap_or(5432),
            ),
            other => panic!("the PgBouncer tests need a TCP XTESTS_DATABASE_URL, not {other:?}"),
        };
        let user = admin.get_user().unwrap_or("postgres").to_string();
        let listen = crate::services::free_port();
        let dir = std::env::temp_dir().join(format!(
            "lettuce-pgbouncer-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir).expect("pgbouncer temp dir");
        let ini = dir.join("pgbouncer.ini");
        let users = dir.join("users.txt");
        std::fs::write(&users, format!("\"{user}\" \"\"\n")).expect("write auth file");
        std::fs::write(
            &ini,
            format!(
                "[databases]\n\
                 * = host={host} port={port}\n\
                 [pgbouncer]\n\
                 listen_addr = 127.0.0.1\n\
                 listen_port = {listen}\n\
                 unix_socket_dir =\n\
                 auth_type = trust\n\
                 auth_file = {users}\n\
                 pool_mode = transaction\n\
                 default_pool_size = {pool_size}\n\
                 max_client_conn = 2000\n\
                 logfile =\n\
                 pidfile =\n",
                users = users.display(),
            ),
        )
        .expect("write pgbouncer.ini");
        // PgBouncer refuses to run as root; `-u` makes it drop to the postgres user, which must
        // be able to read the directory.
        let mut cmd = Command::new(program());
        // SAFETY: geteuid(2) reads the process's own id; no memory is touched.
        if unsafe { libc::geteuid() } == 0 {
            use std::os::unix::fs::PermissionsExt;
            for p in [&dir, &ini, &users] {
                let mode = if p.is_dir() { 0o755 } else { 0o644 };
                std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
            }
            cmd.args(["-u", "postgres"]);
        }
        let log = std::fs::File::create(dir.join("pgbouncer.log")).expect("pgbouncer log");
        let mut child = cmd
            .arg(&ini)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start pgbouncer ({e}); scripts/setup.d/60-pgbouncer.sh installs it")
            });
        let bouncer_url = format!("postgres://{user}@127.0.0.1:{listen}/postgres");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok((client, conn)) =
                tokio_postgres::connect(&bouncer_url, tokio_postgres::NoTls).await
            {
                tokio::spawn(conn);
                if client.simple_query("SELECT 1").await.is_ok() {
                    break;
                }
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "pgbouncer exited with {status}:\n{}",
                    std::fs::read_to_string(dir.join("pgbouncer.log")).unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "pgbouncer did not answer on port {listen} within 20 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        PgBouncer {
            child,
            dir,
            port: listen,
        }
    }

    /// `db_url` (a URL of the test server, e.g. [`crate::TestDb::url`]) reached through this
    /// PgBouncer instead: same user and database, the pooler's host and port.
    pub fn url_for(&self, db_url: &str) -> String {
        let cfg: tokio_postgres::Config = db_url.parse().expect("test URL parses");
        format!(
            "postgres://{}@127.0.0.1:{}/{}",
            cfg.get_user().unwrap_or("postgres"),
            self.port,
            cfg.get_dbname().unwrap_or("postgres")
        )
    }

    /// What PgBouncer logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("pgbouncer.log")).unwrap_or_default()
    }
}

/// `pgbouncer` on PATH, else Debian's `/usr/sbin/pgbouncer`.
fn program() -> PathBuf {
    let sbin = PathBuf::from("/usr/sbin/pgbouncer");
    if sbin.exists() {
        sbin
    } else {
        PathBuf::from("pgbouncer")
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
