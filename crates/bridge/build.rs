//! Rebuilds when a migration is added: `sqlx::migrate!` embeds the files of
//! `migrations/` at compile time but cannot tell cargo about new ones.

fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
