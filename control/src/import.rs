//! Bulk import of hashed keys, for teams moving from another gateway or their own app:
//! `POST /v1/keys/import` (admin token, `content-type: application/x-ndjson`) and
//! `gatehouse-control import FILE` (`import_cli.rs`) run the same [`Importer`].
//!
//! The input is NDJSON, one key per line, each naming the key by its SHA-256 (the fields
//! and their rules: `import/record.rs`). It is read as it arrives and never held whole
//! (`import/lines.rs` holds one line at most): a million keys is some 250 MB. The body may
//! be up to [`BODY_LIMIT`], a line up to [`lines::MAX_LINE_BYTES`].
//!
//! Each line stands alone. A valid one is imported unless a key with its SHA-256 is
//! stored already, in which case it is skipped and the stored key is left exactly as it
//! is (so a re-run imports nothing twice); an invalid one is reported with its line number
//! (from 1; blank lines count but are otherwise ignored) and a message that names the
//! field, and refuses nothing else. The answer counts each kind: `{"imported", "skipped",
//! "failed", "errors"}`, `errors` listing the first [`MAX_LISTED_ERRORS`] failed lines.
//!
//! Valid keys are inserted in batches of at most [`MAX_RECORDS_PER_CHANGE`], the most the
//! feed contract lets one version carry (control/FEED.md, "Changes"): each batch is one
//! change, with its own feed version and audit event, and up to
//! [`MAX_BATCHES_PER_TRANSACTION`] batches are committed in one transaction
//! ([`Store::import_keys`]), its keys in the order of their SHA-256; the long-polls are
//! woken as soon as it commits. An
//! import that stops half-way (the database fails, the body is cut off or over the limit)
//! keeps the batches it committed; running it again skips them. The per-user key limit
//! (`GATEHOUSE_MAX_KEYS_PER_USER`) does not apply: these keys exist already, and refusing
//! one would lock its owner out; it still counts them when the user is issued a new key.
//!
//! Never: take a plaintext key, or log, echo or audit a key's hash.

mod lines;
mod record;

pub use lines::MAX_LINE_BYTES;
pub use record::{DEFAULT_DEVICE_NAME, Rules};

use crate::app::{AppState, RequestCtx};
use crate::error::ApiError;
use crate::store::{
    ChangeCtx, ImportOutcome, MAX_BATCHES_PER_TRANSACTION, MAX_RECORDS_PER_CHANGE, NewKey, Store,
    StoreError, StoreResult,
};
use axum::Json;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use futures_util::StreamExt;
use lines::{Line, Lines};
use serde::Serialize;

/// The route.
pub const PATH: &str = "/v1/keys/import";

/// The largest body `POST /v1/keys/import` reads: 1 GiB, some four million keys. Every
/// other route takes 64 KiB (`app::BODY_LIMIT`).
pub const BODY_LIMIT: usize = 1 << 30;

/// The most failed lines the answer lists; `failed` counts them all.
pub const MAX_LISTED_ERRORS: usize = 1000;

/// The media type of the body.
pub const CONTENT_TYPE: &str = "application/x-ndjson";

/// Input is cut into pieces of this size before it is split into lines, so that a large
/// chunk (a file read, a big network read) never makes more than this much work between
/// two batches.
const PIECE: usize = 64 * 1024;

/// A UTF-8 byte order mark, which some editors write at the start of a file.
const BOM: &[u8] = b"\xef\xbb\xbf";

/// What an import did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// Keys inserted.
    pub imported: u64,
    /// Lines whose key (by SHA-256) was stored already, left unchanged.
    pub skipped: u64,
    /// Lines refused.
    pub failed: u64,
    /// The first [`MAX_LISTED_ERRORS`] lines refused, in line order.
    pub errors: Vec<LineError>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LineError {
    /// From 1.
    pub line: u64,
    /// Names the field; never holds a value from the line.
    pub error: String,
}

impl Summary {
    /// Counts a refused line, and lists it if it is among the first [`MAX_LISTED_ERRORS`]
    /// (a taken key id is found when its batch commits, after later lines were read).
    fn fail(&mut self, line: u64, error: String) {
        self.failed += 1;
        let full = self.errors.len() >= MAX_LISTED_ERRORS;
        if full && self.errors.last().is_some_and(|last| last.line < line) {
            return;
        }
        let at = self.errors.partition_point(|e| e.line < line);
        self.errors.insert(at, LineError { line, error });
        self.errors.truncate(MAX_LISTED_ERRORS);
    }
}

/// Why an import stopped before the end of its input.
#[derive(Debug)]
pub enum ImportError {
    /// The input is over the limit: the lines before it (`read`) were imported or
    /// refused, nothing after.
    TooLarge {
        limit: usize,
        read: u64,
    },
    Store(StoreError),
}

impl std::fmt::Display for ImportError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ImportError::TooLarge { limit, read } => write!(
                f,
                "the input is over {limit} bytes: the keys of lines 1 to {read} were imported"
            ),
            ImportError::Store(e) => write!(f, "{e}"),
        }
    }
}

impl From<StoreError> for ImportError {
    fn from(e: StoreError) -> ImportError {
        ImportError::Store(e)
    }
}

impl From<ImportError> for ApiError {
    fn from(e: ImportError) -> ApiError {
        match e {
            ImportError::TooLarge { limit, read } => ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "PAYLOAD_TOO_LARGE",
                format!(
                    "the body is over {} MiB: the keys of lines 1 to {read} were imported \
                     (running them again skips them); split the file",
                    limit >> 20
                ),
            ),
            ImportError::Store(e) => e.into(),
        }
    }
}

/// One import: NDJSON in, as chunks of any size, batches committed as they fill.
pub struct Importer<'a> {
    store: &'a dyn Store,
    rules: Rules<'a>,
    ctx: ChangeCtx,
    /// Called with the last version of each commit (the API wakes the long-polls).
    committed: &'a (dyn Fn(i64) + Send + Sync),
    limit: usize,
    read: usize,
    lines: Lines,
    /// Lines checked but not yet batched.
    checked: Vec<(u64, Result<NewKey, String>)>,
    /// Full batches waiting for the transaction, then the one being filled (never empty).
    batches: Vec<Vec<NewKey>>,
    /// The line of each key of `batches`.
    batch_lines: Vec<Vec<u64>>,
    summary: Summary,
}

impl<'a> Importer<'a> {
    /// An import of at most `limit` bytes.
    pub fn new(
        store: &'a dyn Store,
        rules: Rules<'a>,
        ctx: ChangeCtx,
        committed: &'a (dyn Fn(i64) + Send + Sync),
        limit: usize,
    ) -> Importer<'a> {
        Importer {
            store,
            rules,
            ctx,
            committed,
            limit,
            read: 0,
            lines: Lines::new(),
            checked: Vec::new(),
            batches: vec![Vec::with_capacity(MAX_RECORDS_PER_CHANGE)],
            batch_lines: vec![Vec::with_capacity(MAX_RECORDS_PER_CHANGE)],
            summary: Summary::default(),
        }
    }

    /// Reads `chunk`, committing the batches it fills, a transaction's worth at a time.
    pub async fn push(&mut self, chunk: &[u8]) -> Result<(), ImportError> {
        for piece in chunk.chunks(PIECE) {
            let room = self.limit.saturating_sub(self.read);
            let over = piece.len() > room;
            let piece = piece.get(..room).unwrap_or(piece);
            self.read += piece.len();
            let (lines, checked, rules) = (&mut self.lines, &mut self.checked, &self.rules);
            lines.feed(piece, |n, line| check(n, line, rules, checked));
            self.batch_checked().await?;
            if over {
                self.flush().await?;
                return Err(ImportError::TooLarge {
                    limit: self.limit,
                    read: self.lines.ended(),
                });
            }
        }
        Ok(())
    }

    /// Ends the input: its last line, the last batch, and what the import did.
    pub async fn finish(mut self) -> Result<Summary, ImportError> {
        let (lines, checked, rules) = (&mut self.lines, &mut self.checked, &self.rules);
        lines.finish(|n, line| check(n, line, rules, checked));
        self.batch_checked().await?;
        self.flush().await?;
        Ok(self.summary)
    }

    /// Commits the keys batched so far, if any: when a transaction's worth is batched,
    /// at the end, and for an import that stops early.
    pub async fn flush(&mut self) -> StoreResult<()> {
        if self.batches.iter().all(Vec::is_empty) {
            return Ok(());
        }
        self.sort_by_hash();
        let done = self.store.import_keys(&self.batches, &self.ctx).await?;
        let mut last = None;
        for (batch, lines) in done.iter().zip(&self.batch_lines) {
            for (outcome, line) in batch.outcomes.iter().zip(lines) {
                match outcome {
                    ImportOutcome::Imported => self.summary.imported += 1,
                    ImportOutcome::Existing => self.summary.skipped += 1,
                    ImportOutcome::IdTaken => self
                        .summary
                        .fail(*line, "key_id is another key's already".to_string()),
                }
            }
            last = batch.version.or(last);
        }
        self.batches.truncate(1);
        self.batch_lines.truncate(1);
        for v in self.batches.iter_mut() {
            v.clear();
        }
        for v in self.batch_lines.iter_mut() {
            v.clear();
        }
        if let Some(version) = last {
            (self.committed)(version);
        }
        Ok(())
    }

    /// Puts the keys of this transaction in the order of their SHA-256, keeping each
    /// batch's size, so that they go into the hash's index (the largest, and the one
    /// inserts land in at random) in one sweep rather than at scattered pages. Each line
    /// keeps the outcome it has in line order: the sort is stable, so of two lines with
    /// one hash the earlier is still inserted and the later skipped; and when two lines
    /// name one `key_id` (which the earlier must get), the transaction stays in line
    /// order.
    fn sort_by_hash(&mut self) {
        let mut ids =
            std::collections::HashSet::with_capacity(self.batches.iter().map(Vec::len).sum());
        if !self
            .batches
            .iter()
            .flatten()
            .all(|k| ids.insert(k.id.as_str()))
        {
            return;
        }
        let sizes: Vec<usize> = self.batches.iter().map(Vec::len).collect();
        let mut all: Vec<(NewKey, u64)> = self
            .batches
            .iter_mut()
            .zip(self.batch_lines.iter_mut())
            .flat_map(|(keys, lines)| keys.drain(..).zip(lines.drain(..)))
            .collect();
        all.sort_by(|a, b| a.0.sha256.cmp(&b.0.sha256));
        let mut all = all.into_iter();
        for ((keys, lines), size) in self
            .batches
            .iter_mut()
            .zip(self.batch_lines.iter_mut())
            .zip(sizes)
        {
            for (key, line) in all.by_ref().take(size) {
                keys.push(key);
                lines.push(line);
            }
        }
    }

    /// Moves the checked lines into the batches (committing them whenever a
    /// transaction's worth is full) or into the errors.
    async fn batch_checked(&mut self) -> StoreResult<()> {
        let mut checked = std::mem::take(&mut self.checked);
        for (line, result) in checked.drain(..) {
            match result {
                Ok(key) => {
                    let (Some(batch), Some(lines)) =
                        (self.batches.last_mut(), self.batch_lines.last_mut())
                    else {
                        continue;
                    };
                    batch.push(key);
                    lines.push(line);
                    if batch.len() >= MAX_RECORDS_PER_CHANGE {
                        if self.batches.len() >= MAX_BATCHES_PER_TRANSACTION {
                            self.flush().await?;
                        } else {
                            self.batches
                                .push(Vec::with_capacity(MAX_RECORDS_PER_CHANGE));
                            self.batch_lines
                                .push(Vec::with_capacity(MAX_RECORDS_PER_CHANGE));
                        }
                    }
                }
                Err(error) => self.summary.fail(line, error),
            }
        }
        // The buffer is kept for the next piece.
        self.checked = checked;
        Ok(())
    }
}

/// Checks one line into `checked`; blank lines are skipped.
fn check(
    number: u64,
    line: Line<'_>,
    rules: &Rules<'_>,
    checked: &mut Vec<(u64, Result<NewKey, String>)>,
) {
    let text = match line {
        Line::TooLong => {
            checked.push((
                number,
                Err(format!(
                    "the line is longer than {MAX_LINE_BYTES} bytes: not read"
                )),
            ));
            return;
        }
        Line::Text(t) if number == 1 => t.strip_prefix(BOM).unwrap_or(t),
        Line::Text(t) => t,
    };
    if text.iter().all(u8::is_ascii_whitespace) {
        return;
    }
    checked.push((number, record::parse(text, rules)));
}

/// `application/x-ndjson`, parameters (a charset) ignored.
fn is_ndjson(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|mime| mime.trim().eq_ignore_ascii_case(CONTENT_TYPE))
}

/// `POST /v1/keys/import`.
pub async fn post(
    State(s): State<AppState>,
    ctx: RequestCtx,
    req: Request,
) -> Result<Json<Summary>, ApiError> {
    if !is_ndjson(req.headers()) {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UNSUPPORTED_MEDIA_TYPE",
            format!("expected content-type: {CONTENT_TYPE}"),
        ));
    }
    let now = s.clock.now_secs();
    let rules = Rules {
        plans: &s.config.plans,
        now,
        clock: &*s.clock,
    };
    let wake = |version| s.committed(version);
    let mut import = Importer::new(&*s.store, rules, ctx.change(now), &wake, BODY_LIMIT);
    let mut body = req.into_body().into_data_stream();
    while let Some(chunk) = body.next().await {
        let Ok(chunk) = chunk else {
            // The client went away or broke the framing: what was read whole stays.
            import.flush().await?;
            return Err(ApiError::bad_request(
                "the body could not be read to its end; the keys read until then were \
                 imported (running the file again skips them)",
            ));
        };
        import.push(&chunk).await?;
    }
    let summary = import.finish().await?;
    tracing::info!(
        imported = summary.imported,
        skipped = summary.skipped,
        failed = summary.failed,
        request_id = %ctx.request_id,
        "keys imported"
    );
    Ok(Json(summary))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::clock::ManualClock;
    use crate::plans::Plans;
    use crate::store::sqlite::SqliteStore;
    use std::sync::Mutex;

    const NOW: i64 = 1_767_225_600;

    fn ctx() -> ChangeCtx {
        ChangeCtx {
            now: NOW,
            actor: "test".to_string(),
            request_id: "r".to_string(),
            client: None,
        }
    }

    fn line(i: usize) -> String {
        format!(
            "{{\"sha256\":\"{i:064x}\",\"user_id\":\"u{i}\",\"tenant_id\":\"t\",\"plan\":\"free\"}}\n"
        )
    }

    /// A new SQLite database, in a folder removed when the first value is dropped.
    async fn store() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("c.db").display());
        let store = SqliteStore::open(&url).await.unwrap();
        (dir, store)
    }

    fn rules<'a>(plans: &'a Plans, clock: &'a ManualClock) -> Rules<'a> {
        Rules {
            plans,
            now: NOW,
            clock,
        }
    }

    /// Imports `input` into `store` in one piece, with the default plans.
    async fn import_all(store: &SqliteStore, input: &str) -> Summary {
        let plans = Plans::default();
        let wake = |_| {};
        let clock = ManualClock::at_secs(NOW as u64);
        let mut import = Importer::new(store, rules(&plans, &clock), ctx(), &wake, usize::MAX);
        import.push(input.as_bytes()).await.unwrap();
        import.finish().await.unwrap()
    }

    #[test]
    fn only_ndjson_is_taken() {
        let mut h = HeaderMap::new();
        assert!(!is_ndjson(&h));
        for (ct, ok) in [
            ("application/x-ndjson", true),
            ("Application/X-NDJSON; charset=utf-8", true),
            ("application/json", false),
            ("application/x-ndjsonx", false),
            ("text/plain", false),
        ] {
            h.insert(header::CONTENT_TYPE, ct.parse().unwrap());
            assert_eq!(is_ndjson(&h), ok, "{ct}");
        }
    }

    #[tokio::test]
    async fn batches_hold_at_most_a_thousand_keys_and_each_commit_wakes_the_feed() {
        let (_dir, store) = store().await;
        let plans = Plans::default();
        let woken = Mutex::new(Vec::new());
        let wake = |v| woken.lock().unwrap().push(v);
        let clock = ManualClock::at_secs(NOW as u64);
        let rules = rules(&plans, &clock);
        let mut import = Importer::new(&store, rules, ctx(), &wake, usize::MAX);
        let input: String = (0..2500).map(line).collect();
        // One byte at a time, then in one piece: the chunks change nothing.
        for b in input.as_bytes().get(..1000).unwrap().chunks(1) {
            import.push(b).await.unwrap();
        }
        import
            .push(input.as_bytes().get(1000..).unwrap())
            .await
            .unwrap();
        let summary = import.finish().await.unwrap();
        assert_eq!(
            (summary.imported, summary.skipped, summary.failed),
            (2500, 0, 0)
        );
        // Three batches, three versions, one transaction.
        assert_eq!(*woken.lock().unwrap(), [3]);
        let audit = store.audit(10, None).await.unwrap();
        let targets: Vec<&str> = audit.iter().map(|e| e.target.as_str()).collect();
        assert_eq!(targets, ["500 keys", "1000 keys", "1000 keys"]);
        assert!(audit.iter().all(|e| e.action == "key.import"));
    }

    #[tokio::test]
    async fn a_key_repeated_in_a_later_batch_of_the_same_transaction_is_skipped() {
        let (_dir, store) = store().await;
        // Line 1501 repeats line 1000 (same hash, other user). Sorted by hash, the two
        // are the last key of batch 1 and the first of batch 2: batch 2 meets batch 1's
        // uncommitted row.
        let mut input: String = (0..1500).map(line).collect();
        input.push_str(&line(999).replace("\"u999\"", "\"someone_else\""));
        let summary = import_all(&store, &input).await;
        assert_eq!(
            (summary.imported, summary.skipped, summary.failed),
            (1500, 1, 0)
        );
        let audit = store.audit(10, None).await.unwrap();
        let targets: Vec<&str> = audit.iter().map(|e| e.target.as_str()).collect();
        assert_eq!(targets, ["500 keys", "1000 keys"]);
        let kept = store
            .find_key_by_hash(&format!("{:064x}", 999))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(kept.user_id, "u999", "the earlier line is the one imported");
    }

    #[tokio::test]
    async fn of_two_lines_naming_one_key_id_the_earlier_gets_it_whatever_their_hashes() {
        let (_dir, store) = store().await;
        let named = |i: usize| line(i).replace("{", "{\"key_id\":\"legacy-1\",");
        let input = format!("{}{}{}", named(9), line(5), named(1));
        let summary = import_all(&store, &input).await;
        assert_eq!(
            (summary.imported, summary.skipped, summary.failed),
            (2, 0, 1)
        );
        assert_eq!(summary.errors[0].line, 3);
        let kept = store.get_key("legacy-1").await.unwrap().unwrap();
        assert_eq!(kept.sha256, format!("{:064x}", 9));
    }

    #[tokio::test]
    async fn a_transaction_goes_in_in_hash_order_and_each_line_keeps_its_outcome() {
        let (_dir, store) = store().await;
        // Hashes in falling order, a repeat of line 2 at line 1200, and a bad line 1201:
        // after sorting, line 1200 sits beside line 2 in batch 2, and what the summary
        // says of each line is still about that line.
        let mut input: String = (0..1199).rev().map(line).collect();
        input.push_str(&line(1197).replace("\"u1197\"", "\"later\""));
        input.push_str("{\"sha256\": 7}\n");
        let summary = import_all(&store, &input).await;
        assert_eq!(
            (summary.imported, summary.skipped, summary.failed),
            (1199, 1, 1)
        );
        assert_eq!(summary.errors.len(), 1);
        assert_eq!(summary.errors[0].line, 1201);
        let kept = store
            .find_key_by_hash(&format!("{:064x}", 1197))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(kept.user_id, "u1197");
        // The smallest hash, from the last good line, went in with the first batch.
        let first_batch = store
            .find_key_by_hash(&format!("{:064x}", 0))
            .await
            .unwrap()
            .unwrap();
        let last_batch = store
            .find_key_by_hash(&format!("{:064x}", 1198))
            .await
            .unwrap()
            .unwrap();
        assert!(first_batch.version < last_batch.version);
    }

    #[tokio::test]
    async fn input_over_the_limit_stops_after_committing_what_was_read() {
        let (_dir, store) = store().await;
        let plans = Plans::default();
        let wake = |_| {};
        let clock = ManualClock::at_secs(NOW as u64);
        let rules = rules(&plans, &clock);
        let input: String = (0..10).map(line).collect();
        let limit = line(0).len() * 3 + 5;
        let mut import = Importer::new(&store, rules, ctx(), &wake, limit);
        match import.push(input.as_bytes()).await {
            Err(ImportError::TooLarge { read: 3, .. }) => {}
            other => panic!("{other:?}"),
        }
        assert_eq!(store.version().await.unwrap(), 1);
        let err = ApiError::from(ImportError::TooLarge {
            limit: BODY_LIMIT,
            read: 3,
        });
        assert_eq!(err.status, StatusCode::PAYLOAD_TOO_LARGE);
        assert!(
            err.info.message.contains("over 1024 MiB"),
            "{}",
            err.info.message
        );
    }
}
