//! `worker license keygen|mint|inspect`: vendor and developer tooling around the license gate.
//! The rules live in `license`; this file parses flags, reads and writes the key files and
//! prints. `inspect` exits 3 with the gate's own error line, so it answers "would this boot?".

use std::fs;
use std::io::{self, Read as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use ed25519_dalek::pkcs8::EncodePrivateKey as _;
use time::OffsetDateTime;

use super::fail;
use crate::config::Env;
use crate::license::{self, Claims, LicenseError, MAX_TIMESTAMP};

/// Where `inspect` looks for the public key and the cache when neither flag nor env names one
/// (the documented defaults).
const DEFAULT_PUBLIC_KEY: &str = "/var/lib/lettuce/public.pem";
const DEFAULT_CACHE_PATH: &str = "/var/cache/lettuce/license.json";

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Make an Ed25519 keypair: private.pem (PKCS#8, mode 0600) and public.pem (SPKI)
    Keygen {
        /// Directory to write the two files into (created when missing)
        #[arg(long, default_value = ".")]
        out: PathBuf,
        /// Replace existing private.pem / public.pem
        #[arg(long)]
        force: bool,
    },
    /// Sign a license token from a private key and claims given as flags; prints the token
    Mint(MintArgs),
    /// Verify a token and print its claims and days left; exit 3 with the error otherwise
    Inspect(InspectArgs),
}

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("expiry").required(true).args(["days", "exp"])))]
pub struct MintArgs {
    /// PKCS#8 PEM private key (private.pem from `worker license keygen`)
    #[arg(long)]
    pub private_key: PathBuf,
    /// Customer (installation) the license is for
    #[arg(long)]
    pub sub: String,
    /// License id
    #[arg(long)]
    pub jti: String,
    /// Valid for this many days from now (negative mints an expired token, for tests)
    #[arg(long, allow_negative_numbers = true)]
    pub days: Option<i64>,
    /// Expiry as unix seconds
    #[arg(long)]
    pub exp: Option<i64>,
    /// Not valid before, as unix seconds
    #[arg(long)]
    pub nbf: Option<i64>,
    /// Seat cap (unlimited when absent)
    #[arg(long)]
    pub seats: Option<u32>,
    /// Repository cap (unlimited when absent)
    #[arg(long)]
    pub repos: Option<u32>,
    /// Whether the daily telemetry heartbeat is required
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub telemetry_required: bool,
}

#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    /// The token; `-` reads it from stdin; default: LETTUCE_LICENSE_KEY (preferred: an argument
    /// is visible to other users in the process list)
    pub token: Option<String>,
    /// Public key: a PEM file path or inline PEM; default: LETTUCE_LICENSE_PUBLIC_KEY, then
    /// /var/lib/lettuce/public.pem
    #[arg(long, allow_hyphen_values = true)]
    pub public_key: Option<String>,
    /// Print the claims as JSON
    #[arg(long)]
    pub json: bool,
}

pub fn run(command: Command, env: &Env) -> ExitCode {
    match command {
        Command::Keygen { out, force } => keygen(&out, force),
        Command::Mint(args) => mint(args),
        Command::Inspect(args) => inspect(args, env),
    }
}

fn keygen(out: &Path, force: bool) -> ExitCode {
    let private_path = out.join("private.pem");
    let public_path = out.join("public.pem");
    if !force {
        for p in [&private_path, &public_path] {
            if p.symlink_metadata().is_ok() {
                return fail(
                    &format!(
                        "error: {} exists; refusing to replace a key (use --force)",
                        p.display()
                    ),
                    1,
                );
            }
        }
    }
    let key = license::generate_signing_key();
    let private_pem = match key.to_pkcs8_pem(Default::default()) {
        Ok(p) => p,
        Err(e) => return fail(&format!("error: cannot encode the private key: {e}"), 1),
    };
    let written = fs::create_dir_all(out)
        .and_then(|()| license::replace_file(&private_path, private_pem.as_bytes(), 0o600))
        .and_then(|()| {
            license::replace_file(
                &public_path,
                license::public_key_pem(&key.verifying_key()).as_bytes(),
                0o644,
            )
        });
    if let Err(e) = written {
        return fail(
            &format!("error: cannot write the keypair in {}: {e}", out.display()),
            1,
        );
    }
    println!("{}", private_path.display());
    println!("{}", public_path.display());
    ExitCode::SUCCESS
}

fn mint(args: MintArgs) -> ExitCode {
    let key = match license::load_signing_key(&args.private_key) {
        Ok(k) => k,
        Err(e) => return fail(&format!("error: --private-key {e}"), 1),
    };
    let now = OffsetDateTime::now_utc();
    let exp = match (args.days, args.exp) {
        (Some(days), _) => days
            .checked_mul(86_400)
            .and_then(|s| s.checked_add(now.unix_timestamp())),
        (None, Some(exp)) => Some(exp),
        (None, None) => unreachable!("clap requires --days or --exp"),
    };
    let exp = match exp {
        Some(e) if (0..=MAX_TIMESTAMP).contains(&e) => e,
        _ => {
            return fail(
                &format!(
                    "error: the expiry must fall between 1970 and 9999 ({MAX_TIMESTAMP} unix seconds)"
                ),
                2,
            );
        }
    };
    let claims = Claims {
        sub: args.sub,
        jti: args.jti,
        iat: Some(now.unix_timestamp()),
        exp,
        nbf: args.nbf,
        seats: args.seats,
        repos: args.repos,
        telemetry_required: args.telemetry_required,
    };
    let token = license::sign(&claims, &key);
    // Check the token against its own public key so the vendor learns at once about a token
    // no worker would accept (for tests, an expired one is still printed).
    match license::verify(&token, &key.verifying_key(), now) {
        Ok(_) => {}
        Err(e @ LicenseError::Expired { .. }) | Err(e @ LicenseError::Invalid(_)) => {
            eprintln!("warning: a worker would refuse this token now: {e}");
        }
        Err(e) => return fail(&format!("error: the minted token does not verify: {e}"), 1),
    }
    println!("{token}");
    ExitCode::SUCCESS
}

fn inspect(args: InspectArgs, env: &Env) -> ExitCode {
    let token = match args.token.as_deref() {
        Some("-") => {
            let mut s = String::new();
            if let Err(e) = io::stdin().read_to_string(&mut s) {
                return fail(&format!("error: cannot read the token from stdin: {e}"), 1);
            }
            s
        }
        Some(t) => t.to_string(),
        None => env.get("LETTUCE_LICENSE_KEY").cloned().unwrap_or_default(),
    };
    let token = token.trim();
    if token.is_empty() {
        return fail(
            "LicenseMissing: no token given; pass TOKEN, - for stdin, or set LETTUCE_LICENSE_KEY",
            3,
        );
    }
    let source = args
        .public_key
        .or_else(|| env.get("LETTUCE_LICENSE_PUBLIC_KEY").cloned())
        .unwrap_or_else(|| DEFAULT_PUBLIC_KEY.to_string());
    let now = OffsetDateTime::now_utc();
    let claims =
        match license::load_public_key(&source).and_then(|k| license::verify(token, &k, now)) {
            Ok(c) => c,
            Err(e) => return fail(&e.to_string(), 3),
        };
    let days_left = license::days_left(&claims, now);
    let sha = license::token_sha256(token);
    if args.json {
        let out = serde_json::json!({
            "claims": claims,
            "days_left": days_left,
            "token_sha256": sha,
        });
        println!("{out:#}");
        return ExitCode::SUCCESS;
    }
    let opt_time = |t: Option<i64>| t.map_or_else(|| "-".to_string(), license::format_unix);
    let cap = |c: Option<u32>| c.map_or_else(|| "unlimited".to_string(), |n| n.to_string());
    println!("license verified");
    println!("  sub                 {}", claims.sub);
    println!("  jti                 {}", claims.jti);
    println!("  issued (iat)        {}", opt_time(claims.iat));
    println!("  not before (nbf)    {}", opt_time(claims.nbf));
    println!("  expires (exp)       {}", license::format_unix(claims.exp));
    println!("  days left           {days_left}");
    println!("  seats               {}", cap(claims.seats));
    println!("  repos               {}", cap(claims.repos));
    println!("  telemetry_required  {}", claims.telemetry_required);
    println!("  token_sha256        {sha}");
    // The cache is shown for information only; it never changes the verdict above.
    let cache_path = env
        .get("LETTUCE_LICENSE_CACHE_PATH")
        .cloned()
        .unwrap_or_else(|| DEFAULT_CACHE_PATH.to_string());
    if let Some(cache) = license::read_cache(Path::new(&cache_path)) {
        let same = if cache.token_sha256 == sha {
            "this token"
        } else {
            "a different token"
        };
        println!(
            "  cache               {cache_path}: last verified {} ({same})",
            cache
                .verified_at
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default()
        );
    }
    ExitCode::SUCCESS
}
