//! `farestream money …`: the money store from the command line.

use std::path::Path;

use anyhow::{Context, Result, bail};
use clap::Subcommand;

use farestream::config::Config;
use farestream::money::migrate_store::copy_store;
use farestream::money::pg_store::{PgSessionLimits, PgStore};
use farestream::money::{SqliteStore, StoreLocation, store_path};
use farestream_ingest::faults::Faults;
use farestream_ingest::node_id::NodeId;

#[derive(Subcommand)]
pub(crate) enum MoneyAction {
    /// Copy this data dir's SQLite money store into an empty PostgreSQL
    /// one, row for row, and check it (the server stopped). Then set
    /// payments.money_store to the same URL and start the server. The
    /// password comes from payments.money_store_password_file or
    /// FARESTREAM_MONEY_STORE_PASSWORD, never the URL.
    Migrate {
        /// The PostgreSQL store: postgres://USER@HOST:PORT/DATABASE.
        #[arg(long)]
        to: String,
    },
}

pub(crate) fn money(data_dir: &Path, config: &Config, action: MoneyAction) -> Result<()> {
    match action {
        MoneyAction::Migrate { to } => migrate(data_dir, config, &to),
    }
}

fn migrate(data_dir: &Path, config: &Config, to: &str) -> Result<()> {
    let source = store_path(data_dir);
    if !source.exists() {
        bail!("{} holds no money store to migrate", source.display());
    }
    // The server must not write the store while it is copied.
    let _lock = farestream_server::lock_data_dir(data_dir)?;
    // The copy is one transaction, idle on PostgreSQL while each table is
    // read back from SQLite to be checked: no idle limit for it.
    let limits = PgSessionLimits {
        idle_in_transaction_max: std::time::Duration::ZERO,
        ..farestream_server::money_store_session_limits(config)
    };
    let target = farestream_server::money_store_at(to, config, data_dir, &limits)?;
    let StoreLocation::Postgres(target) = target else { bail!("--to {to:?} is not a PostgreSQL URL") };
    let wait = std::time::Duration::from_millis(config.payments.store_busy_wait_ms);
    let mut from = SqliteStore::open(&source, wait)?;
    let mut into = PgStore::open(&target)?;
    let node = NodeId::load_or_create(data_dir, &Faults::default())?;
    let progress = indicatif::ProgressBar::new_spinner();
    let copied = copy_store(&mut from, &mut into, &node, &mut |table| progress.set_message(format!("copying {table}")))
        .with_context(|| format!("migrating {} to {}", source.display(), into.store()))?;
    progress.finish_and_clear();
    let rows: u64 = copied.iter().map(|(_, rows)| rows).sum();
    for (table, rows) in &copied {
        println!("{table:<20} {rows:>12} rows");
    }
    println!(
        "copied {rows} rows in {} tables to {}, each table read back and checked; \
         now set payments.money_store = {:?} and start the server",
        copied.len(),
        into.store(),
        to
    );
    Ok(())
}
