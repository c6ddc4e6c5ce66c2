//! The bridge's database: PostgreSQL or SQLite through `sqlx`, with the
//! same tables and the same SQL on both (`$N` placeholders work on both).
//!
//! ```text
//!  open(url) ── refuse a schema newer than this binary ── run embedded migrations
//!
//!  write(batch), one transaction:
//!    for each partition (sorted): UPDATE consumer_offsets SET next_offset = next
//!                                 WHERE ... AND next_offset = expected   (or INSERT when none)
//!                                 ── 0 rows: fenced, ROLLBACK
//!    INSERT INTO messages ... ON CONFLICT DO NOTHING
//!    INSERT INTO dead_letters ... ON CONFLICT DO NOTHING
//!  COMMIT
//! ```
//!
//! The compare-and-set on `consumer_offsets` runs first, so it takes the
//! partition's row lock before any row is written: two consumers reading the
//! same partition cannot both commit the same range, and a consumer that read
//! from a stale position rolls back instead of leaving a gap.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::Duration;

use events::TopicPartition;
use proto::bytes::Bytes;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use sqlx::{Acquire as _, QueryBuilder, Row as _};

static POSTGRES: Migrator = sqlx::migrate!("migrations/postgres");
static SQLITE: Migrator = sqlx::migrate!("migrations/sqlite");

/// Why opening the store failed. Nothing was changed, except that
/// migrations before the failing one may have been applied.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("database url {0:?} is neither postgres://... nor sqlite:...")]
    Url(String),
    #[error("connecting to the database: {0}")]
    Connect(#[source] sqlx::Error),
    #[error("reading the schema version: {0}")]
    Version(#[source] sqlx::Error),
    /// The database was migrated by a newer bridge; this one refuses to
    /// touch it rather than write rows the newer schema may not expect.
    #[error(
        "database schema version {database} is newer than this bridge's latest migration {binary}: \
         run a bridge at least as new as the one that migrated the database"
    )]
    SchemaTooNew { database: i64, binary: i64 },
    #[error("migrating the database schema: {0}")]
    Migrate(#[source] sqlx::migrate::MigrateError),
}

#[derive(Debug, Clone)]
enum Pool {
    Postgres(PgPool),
    Sqlite(SqlitePool),
}

/// Runs the same code on whichever pool the store has: the SQL is shared and
/// sqlx's types are per-database, so this is a macro, not a generic function.
macro_rules! on_pool {
    ($store:expr, $pool:ident => $body:expr) => {
        match &$store.pool {
            Pool::Postgres($pool) => $body,
            Pool::Sqlite($pool) => $body,
        }
    };
}

/// Adds `VALUES (...), ...` for `rows` and the conflict clause to an
/// [`INSERT_MESSAGES`] builder (a macro for the same reason as `on_pool!`).
macro_rules! push_messages {
    ($q:expr, $rows:expr) => {{
        $q.push_values($rows, |mut b, r: &&MessageRow| {
            b.push_bind(&r.message_id)
                .push_bind(r.kind)
                .push_bind(&r.conversation_key)
                .push_bind(&r.payload)
                .push_bind(&r.worker)
                .push_bind(&r.origin)
                .push_bind(&r.source)
                .push_bind(r.error_code)
                .push_bind(&r.error_message)
                .push_bind(r.chunks)
                .push_bind(r.truncated)
                .push_bind(r.created_unix_ms)
                .push_bind(r.deadline_unix_ms)
                .push_bind(&r.topic)
                .push_bind(r.partition)
                .push_bind(r.offset)
                .push_bind(r.usage.as_ref().map(|u| u.prompt_tokens))
                .push_bind(r.usage.as_ref().map(|u| u.completion_tokens))
                .push_bind(r.usage.as_ref().map(|u| u.cached_tokens))
                .push_bind(r.usage.as_ref().map(|u| u.first_token_ms))
                .push_bind(r.usage.as_ref().map(|u| &u.backend))
                .push_bind(r.usage.as_ref().map(|u| &u.model));
        });
        $q.push(" ON CONFLICT (conversation_key, message_id, kind) DO NOTHING");
    }};
}

/// One message row to insert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageRow {
    pub message_id: String,
    pub kind: i32,
    pub conversation_key: String,
    pub payload: Vec<u8>,
    pub worker: String,
    pub origin: String,
    pub source: String,
    pub error_code: Option<i32>,
    pub error_message: Option<String>,
    pub chunks: i64,
    pub truncated: bool,
    pub created_unix_ms: i64,
    pub deadline_unix_ms: i64,
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    /// Replies a model answered: what it cost.
    pub usage: Option<Usage>,
    /// The record's value as read, for a dead letter if the row is refused
    /// (not stored with the row).
    pub raw: Bytes,
}

/// What one model reply cost, as its worker recorded it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    /// Prompt tokens the backend served from its prefix cache.
    pub cached_tokens: i64,
    /// Milliseconds from the request to the backend to its first token.
    pub first_token_ms: i64,
    pub backend: String,
    pub model: String,
}

/// One dead letter: a record that could not be decoded or stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub error: String,
    pub raw: Vec<u8>,
}

/// What one partition contributes to a batch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PartitionBatch {
    /// The stored next offset the batch was read from; `None` when the
    /// partition has no row yet.
    pub expected: Option<i64>,
    /// The next offset after the batch.
    pub next: i64,
    pub rows: Vec<MessageRow>,
    pub dead: Vec<DeadLetter>,
}

/// Rows and offsets written in one transaction.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Batch {
    pub group: String,
    pub partitions: BTreeMap<TopicPartition, PartitionBatch>,
}

impl Batch {
    /// Message rows and dead letters in the batch.
    pub fn len(&self) -> usize {
        self.partitions.values().map(|p| p.rows.len() + p.dead.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The result of [`Store::write`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Written {
    /// Committed: `inserted` new rows, `duplicates` rows already stored,
    /// `dead` dead letters (including rows that could not be stored).
    Committed { inserted: u64, duplicates: u64, dead: u64 },
    /// Rolled back: the stored offset of these partitions was not the
    /// batch's `expected` (another consumer advanced it). Nothing changed.
    Fenced(Vec<TopicPartition>),
}

/// A stored message, as the history API returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    pub seq: i64,
    pub message_id: String,
    pub kind: i32,
    pub conversation_key: String,
    pub payload: Vec<u8>,
    pub worker: String,
    pub origin: String,
    pub source: String,
    pub error_code: Option<i32>,
    pub error_message: Option<String>,
    pub chunks: i64,
    pub truncated: bool,
    pub created_unix_ms: i64,
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub usage: Option<Usage>,
}

/// The bridge's database; cheap to clone (a connection pool).
#[derive(Debug, Clone)]
pub struct Store {
    pool: Pool,
}

const MESSAGE_COLUMNS: &str = "seq, message_id, kind, conversation_key, payload, worker, origin, source, \
     error_code, error_message, chunks, truncated, created_unix_ms, topic, kafka_partition, kafka_offset, \
     prompt_tokens, completion_tokens, cached_tokens, first_token_ms, backend, model";

/// PostgreSQL refuses NUL characters in text; the bridge stores errors as
/// text, so NULs in them (from a poison record's content) are replaced.
fn text(s: &str) -> String {
    s.replace('\0', "\u{FFFD}")
}

impl Store {
    /// Connects to `url` (`postgres://...`, `sqlite:path`, `sqlite::memory:`),
    /// refuses a schema newer than this binary, and applies the migrations.
    pub async fn open(url: &str, max_connections: u32) -> Result<Self, OpenError> {
        let pool = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Pool::Postgres(
                PgPoolOptions::new()
                    .max_connections(max_connections.max(1))
                    .acquire_timeout(Duration::from_secs(10))
                    .connect(url)
                    .await
                    .map_err(OpenError::Connect)?,
            )
        } else if url.starts_with("sqlite:") {
            let opts = SqliteConnectOptions::from_str(url)
                .map_err(OpenError::Connect)?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .busy_timeout(Duration::from_secs(10));
            // An in-memory database lives as long as its one connection.
            let memory = url.contains(":memory:") || url.contains("mode=memory");
            let mut pool = SqlitePoolOptions::new().max_connections(if memory { 1 } else { max_connections.max(1) });
            if memory {
                pool = pool.min_connections(1).idle_timeout(None).max_lifetime(None);
            }
            Pool::Sqlite(pool.connect_with(opts).await.map_err(OpenError::Connect)?)
        } else {
            return Err(OpenError::Url(url.into()));
        };
        let store = Self { pool };
        store.check_schema_version().await?;
        on_pool!(store, pool => store.migrator().run(pool).await.map_err(OpenError::Migrate)?);
        Ok(store)
    }

    fn migrator(&self) -> &'static Migrator {
        match self.pool {
            Pool::Postgres(_) => &POSTGRES,
            Pool::Sqlite(_) => &SQLITE,
        }
    }

    /// `postgres` or `sqlite`.
    pub fn kind(&self) -> &'static str {
        match self.pool {
            Pool::Postgres(_) => "postgres",
            Pool::Sqlite(_) => "sqlite",
        }
    }

    /// The latest migration this binary knows.
    pub fn binary_schema_version(&self) -> i64 {
        self.migrator().iter().map(|m| m.version).max().unwrap_or(0)
    }

    /// The latest migration applied to the database, if any.
    pub async fn database_schema_version(&self) -> Result<Option<i64>, sqlx::Error> {
        let exists: bool = match &self.pool {
            Pool::Postgres(p) => {
                sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
                    .fetch_one(p)
                    .await?
            }
            Pool::Sqlite(p) => {
                sqlx::query_scalar::<_, i64>(
                    "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'",
                )
                .fetch_one(p)
                .await?
                    > 0
            }
        };
        if !exists {
            return Ok(None);
        }
        on_pool!(self, p => sqlx::query_scalar("SELECT MAX(version) FROM _sqlx_migrations WHERE success")
            .fetch_one(p)
            .await)
    }

    async fn check_schema_version(&self) -> Result<(), OpenError> {
        let binary = self.binary_schema_version();
        match self.database_schema_version().await.map_err(OpenError::Version)? {
            Some(database) if database > binary => Err(OpenError::SchemaTooNew { database, binary }),
            _ => Ok(()),
        }
    }

    /// Whether the database answers.
    pub async fn ping(&self) -> Result<(), sqlx::Error> {
        on_pool!(self, p => sqlx::query("SELECT 1").execute(p).await.map(drop))
    }

    /// The stored next offsets of `group`.
    pub async fn offsets(&self, group: &str) -> Result<BTreeMap<TopicPartition, i64>, sqlx::Error> {
        let rows = on_pool!(self, p => {
            sqlx::query("SELECT topic, kafka_partition, next_offset FROM consumer_offsets WHERE group_id = $1")
                .bind(group)
                .fetch_all(p)
                .await?
                .into_iter()
                .map(|r| Ok((TopicPartition::new(r.try_get::<String, _>(0)?, r.try_get(1)?), r.try_get(2)?)))
                .collect::<Result<BTreeMap<_, _>, sqlx::Error>>()?
        });
        Ok(rows)
    }

    /// Writes `batch` in one transaction; see the [module docs](self).
    pub async fn write(&self, batch: &Batch) -> Result<Written, sqlx::Error> {
        self.write_inner(batch, false).await
    }

    /// Like [`Store::write`], but each row in its own savepoint: a row the
    /// database refuses becomes a dead letter with the database's error, and
    /// the others are stored. Slower; used after [`Store::write`] failed.
    pub async fn write_row_by_row(&self, batch: &Batch) -> Result<Written, sqlx::Error> {
        self.write_inner(batch, true).await
    }

    async fn write_inner(&self, batch: &Batch, row_by_row: bool) -> Result<Written, sqlx::Error> {
        on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let mut fenced = Vec::new();
            for (tp, part) in &batch.partitions {
                let done = match part.expected {
                    Some(expected) => sqlx::query(
                        "UPDATE consumer_offsets SET next_offset = $1, updated_at = CURRENT_TIMESTAMP \
                         WHERE group_id = $2 AND topic = $3 AND kafka_partition = $4 AND next_offset = $5",
                    )
                    .bind(part.next)
                    .bind(&batch.group)
                    .bind(&tp.topic)
                    .bind(tp.partition)
                    .bind(expected),
                    None => sqlx::query(
                        "INSERT INTO consumer_offsets (next_offset, group_id, topic, kafka_partition) \
                         VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                    )
                    .bind(part.next)
                    .bind(&batch.group)
                    .bind(&tp.topic)
                    .bind(tp.partition),
                }
                .execute(&mut *tx)
                .await?
                .rows_affected();
                if done != 1 {
                    fenced.push(tp.clone());
                }
            }
            if !fenced.is_empty() {
                tx.rollback().await?;
                return Ok(Written::Fenced(fenced));
            }
            let rows: Vec<&MessageRow> = batch.partitions.values().flat_map(|p| &p.rows).collect();
            let mut dead: Vec<DeadLetter> = batch.partitions.values().flat_map(|p| p.dead.iter().cloned()).collect();
            let mut inserted = 0;
            let mut refused = 0;
            if row_by_row {
                for row in &rows {
                    let mut sp = (&mut *tx).begin().await?;
                    let mut q = QueryBuilder::new(INSERT_MESSAGES);
                    push_messages!(q, std::slice::from_ref(row));
                    match q.build().execute(&mut *sp).await {
                        Ok(r) => {
                            sp.commit().await?;
                            inserted += r.rows_affected();
                        }
                        Err(e) => {
                            sp.rollback().await?;
                            refused += 1;
                            dead.push(dead_row(row, &e));
                        }
                    }
                }
            } else {
                inserted = InsertRows::insert_rows(&mut *tx, &rows).await?;
            }
            for chunk in dead.chunks(500) {
                let mut q = QueryBuilder::new(
                    "INSERT INTO dead_letters (topic, kafka_partition, kafka_offset, record_key, error, raw) ",
                );
                q.push_values(chunk, |mut b, d| {
                    b.push_bind(&d.topic)
                        .push_bind(d.partition)
                        .push_bind(d.offset)
                        .push_bind(&d.key)
                        .push_bind(text(&d.error))
                        .push_bind(&d.raw);
                });
                q.push(" ON CONFLICT DO NOTHING");
                q.build().execute(&mut *tx).await?;
            }
            tx.commit().await?;
            let stored = rows.len() as u64 - refused;
            Ok(Written::Committed {
                inserted,
                duplicates: stored - inserted,
                dead: dead.len() as u64,
            })
        })
    }

    /// Up to `limit` messages of a conversation with `seq > after`, in order.
    pub async fn history(&self, key: &str, after: i64, limit: i64) -> Result<Vec<StoredMessage>, sqlx::Error> {
        let sql = format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages WHERE conversation_key = $1 AND seq > $2 ORDER BY seq LIMIT $3"
        );
        on_pool!(self, p => {
            sqlx::query(&sql)
                .bind(key)
                .bind(after)
                .bind(limit)
                .fetch_all(p)
                .await?
                .iter()
                .map(|r| {
                    Ok(StoredMessage {
                        seq: r.try_get(0)?,
                        message_id: r.try_get(1)?,
                        kind: r.try_get(2)?,
                        conversation_key: r.try_get(3)?,
                        payload: r.try_get(4)?,
                        worker: r.try_get(5)?,
                        origin: r.try_get(6)?,
                        source: r.try_get(7)?,
                        error_code: r.try_get(8)?,
                        error_message: r.try_get(9)?,
                        chunks: r.try_get(10)?,
                        truncated: r.try_get(11)?,
                        created_unix_ms: r.try_get(12)?,
                        topic: r.try_get(13)?,
                        partition: r.try_get(14)?,
                        offset: r.try_get(15)?,
                        usage: match r.try_get::<Option<i64>, _>(16)? {
                            None => None,
                            Some(prompt_tokens) => Some(Usage {
                                prompt_tokens,
                                completion_tokens: r.try_get::<Option<i64>, _>(17)?.unwrap_or(0),
                                cached_tokens: r.try_get::<Option<i64>, _>(18)?.unwrap_or(0),
                                first_token_ms: r.try_get::<Option<i64>, _>(19)?.unwrap_or(0),
                                backend: r.try_get::<Option<String>, _>(20)?.unwrap_or_default(),
                                model: r.try_get::<Option<String>, _>(21)?.unwrap_or_default(),
                            }),
                        },
                    })
                })
                .collect()
        })
    }

    /// Every stored message's source `(topic, partition, offset, message_id, kind)`,
    /// ordered by seq: for tests and checks.
    pub async fn message_sources(&self) -> Result<Vec<(String, i32, i64, String, i32)>, sqlx::Error> {
        on_pool!(self, p => {
            sqlx::query("SELECT topic, kafka_partition, kafka_offset, message_id, kind FROM messages ORDER BY seq")
                .fetch_all(p)
                .await?
                .iter()
                .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?, r.try_get(4)?)))
                .collect()
        })
    }

    /// Every dead letter, oldest first.
    pub async fn dead_letters(&self) -> Result<Vec<DeadLetter>, sqlx::Error> {
        Ok(self
            .dead_letter_page(0, i64::MAX)
            .await?
            .into_iter()
            .map(|(_, d)| d)
            .collect())
    }

    /// Up to `limit` dead letters with `id > after`, oldest first, with their ids.
    pub async fn dead_letter_page(&self, after: i64, limit: i64) -> Result<Vec<(i64, DeadLetter)>, sqlx::Error> {
        on_pool!(self, p => {
            sqlx::query(
                "SELECT id, topic, kafka_partition, kafka_offset, record_key, error, raw FROM dead_letters \
                 WHERE id > $1 ORDER BY id LIMIT $2",
            )
            .bind(after)
            .bind(limit)
            .fetch_all(p)
            .await?
            .iter()
            .map(|r| {
                Ok((
                    r.try_get(0)?,
                    DeadLetter {
                        topic: r.try_get(1)?,
                        partition: r.try_get(2)?,
                        offset: r.try_get(3)?,
                        key: r.try_get(4)?,
                        error: r.try_get(5)?,
                        raw: r.try_get(6)?,
                    },
                ))
            })
            .collect()
        })
    }

    /// Closes the pool, waiting for connections in use.
    pub async fn close(&self) {
        on_pool!(self, p => p.close().await)
    }
}

/// Inserts a batch's rows the fastest way each database offers, skipping
/// rows already stored; returns how many were new.
trait InsertRows {
    async fn insert_rows(&mut self, rows: &[&MessageRow]) -> Result<u64, sqlx::Error>;
}

/// PostgreSQL: one statement for the whole batch, each column bound as one
/// array and turned back into rows by `UNNEST` (22 binds, one prepared
/// statement, whatever the batch size).
impl InsertRows for sqlx::PgConnection {
    async fn insert_rows(&mut self, rows: &[&MessageRow]) -> Result<u64, sqlx::Error> {
        fn col<T>(rows: &[&MessageRow], f: impl Fn(&MessageRow) -> T) -> Vec<T> {
            rows.iter().map(|r| f(r)).collect()
        }
        let sql = format!(
            "{INSERT_MESSAGES} SELECT * FROM UNNEST($1::text[], $2::int4[], $3::text[], $4::bytea[], $5::text[], \
             $6::text[], $7::text[], $8::int4[], $9::text[], $10::int8[], $11::bool[], $12::int8[], $13::int8[], \
             $14::text[], $15::int4[], $16::int8[], $17::int8[], $18::int8[], $19::int8[], $20::int8[], \
             $21::text[], $22::text[]) ON CONFLICT (conversation_key, message_id, kind) DO NOTHING"
        );
        let r = sqlx::query(&sql)
            .bind(col(rows, |r| r.message_id.clone()))
            .bind(col(rows, |r| r.kind))
            .bind(col(rows, |r| r.conversation_key.clone()))
            .bind(col(rows, |r| r.payload.clone()))
            .bind(col(rows, |r| r.worker.clone()))
            .bind(col(rows, |r| r.origin.clone()))
            .bind(col(rows, |r| r.source.clone()))
            .bind(col(rows, |r| r.error_code))
            .bind(col(rows, |r| r.error_message.clone()))
            .bind(col(rows, |r| r.chunks))
            .bind(col(rows, |r| r.truncated))
            .bind(col(rows, |r| r.created_unix_ms))
            .bind(col(rows, |r| r.deadline_unix_ms))
            .bind(col(rows, |r| r.topic.clone()))
            .bind(col(rows, |r| r.partition))
            .bind(col(rows, |r| r.offset))
            .bind(col(rows, |r| r.usage.as_ref().map(|u| u.prompt_tokens)))
            .bind(col(rows, |r| r.usage.as_ref().map(|u| u.completion_tokens)))
            .bind(col(rows, |r| r.usage.as_ref().map(|u| u.cached_tokens)))
            .bind(col(rows, |r| r.usage.as_ref().map(|u| u.first_token_ms)))
            .bind(col(rows, |r| r.usage.as_ref().map(|u| u.backend.clone())))
            .bind(col(rows, |r| r.usage.as_ref().map(|u| u.model.clone())))
            .execute(self)
            .await?;
        Ok(r.rows_affected())
    }
}

/// SQLite (the embedded default): multi-row `VALUES`, 500 rows a statement
/// (22 binds a row stay below its limit on bind parameters).
impl InsertRows for sqlx::SqliteConnection {
    async fn insert_rows(&mut self, rows: &[&MessageRow]) -> Result<u64, sqlx::Error> {
        let mut inserted = 0;
        for chunk in rows.chunks(500) {
            let mut q = QueryBuilder::new(INSERT_MESSAGES);
            push_messages!(q, chunk);
            inserted += q.build().execute(&mut *self).await?.rows_affected();
        }
        Ok(inserted)
    }
}

const INSERT_MESSAGES: &str = "INSERT INTO messages (message_id, kind, conversation_key, payload, worker, origin, \
     source, error_code, error_message, chunks, truncated, created_unix_ms, deadline_unix_ms, topic, kafka_partition, \
     kafka_offset, prompt_tokens, completion_tokens, cached_tokens, first_token_ms, backend, model) ";

/// A row the database refused, as a dead letter carrying the row's fields.
fn dead_row(row: &MessageRow, e: &sqlx::Error) -> DeadLetter {
    DeadLetter {
        topic: row.topic.clone(),
        partition: row.partition,
        offset: row.offset,
        key: Some(row.conversation_key.clone().into_bytes()),
        error: format!("storing message {} failed: {e}", row.message_id),
        raw: row.raw.to_vec(),
    }
}
