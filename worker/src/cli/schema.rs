//! `worker schema print|apply`.

use std::process::ExitCode;

use super::fail;
use crate::config::Config;

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Print the embedded statement list
    Print,
    /// Apply the statement list (under the advisory lock) and exit
    Apply,
}

pub async fn run(command: Command, config: Config) -> ExitCode {
    match command {
        Command::Print => {
            print!("{}", crate::db::schema::script());
            ExitCode::SUCCESS
        }
        Command::Apply => {
            let pool = match crate::boot::connect(&config).await {
                Ok(p) => p,
                Err(e) => return fail(&e.to_string(), e.exit_code()),
            };
            let list = crate::db::schema::EMBEDDED;
            match crate::db::schema::apply(&pool, &list, true).await {
                Ok(crate::db::schema::Applied::LeftNewer { database }) => {
                    println!(
                        "schema left as it is: the database is at revision {database}, newer than \
                         this binary's {}, and declares it compatible",
                        list.revision
                    );
                    ExitCode::SUCCESS
                }
                Ok(_) => {
                    println!(
                        "schema applied (revision {}, {} statements, digest {})",
                        list.revision,
                        list.statements.len(),
                        list.digest()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => fail(&format!("SchemaError: {e}"), 6),
            }
        }
    }
}
