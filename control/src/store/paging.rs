//! How the store cuts the feed into answers of at most a page of records (control/FEED.md),
//! once for both backends: each backend only runs the few queries of [`FeedReader`]
//! inside its read transaction.
//!
//! **Which answer** ([`plan`]): a caller whose epoch (said, or carried by its cursor) is not
//! this database's gets the first page of a new snapshot; a cursor continues its snapshot
//! (a view above the database's version was never given out: refused); `since` 0 or ahead
//! of the database starts a snapshot; a `since` below the highest purged version is gone
//! (410); anything else gets changes.
//!
//! **Changes in whole versions.** Each table is read for its first `page + 1` rows with a
//! version above `since`, in version order. A table that returned that many may hold
//! more rows of its last version, so the rows known to be complete are those below the
//! smallest such last version (`B`; every row if no table filled up). Of those, versions
//! are taken in order while the records still fit the page; the answer's `version` is the
//! first version not taken minus one (every row of a version up to it is in the answer;
//! a version in between has no rows left, its records rewritten by a later one), or the
//! database's version when everything was taken. If not even the first version fits or
//! is known whole, that version alone is read and sent whole: a version is never split,
//! and a version is at most 1,000 records (bulk writes commit in batches of that size),
//! so such an answer is not much above a page. Every answer moves past `since`.
//!
//! **Snapshot pages** read the tables in a fixed order, keys by `sha256`, then user
//! revocations by user id, then jtis by their hash, each from just after the last record
//! of the page before (keyset pagination over each table's unique index: a page costs its
//! size, however deep into the snapshot). One record more than the page is read to know
//! whether another page follows; the position of the page's last record is the next
//! page's start.

use super::{FeedKey, FeedLevers, JtiRevocation, KeyRow, Levers, StoreResult, UserRevocation};
use std::collections::BTreeMap;

/// The feed's three tables, in the order a snapshot reads them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum FeedTable {
    Keys,
    Users,
    Jtis,
}

impl FeedTable {
    pub const ALL: [FeedTable; 3] = [FeedTable::Keys, FeedTable::Users, FeedTable::Jtis];

    /// The table's name in both schemas.
    pub(crate) fn name(self) -> &'static str {
        match self {
            FeedTable::Keys => "api_keys",
            FeedTable::Users => "user_revocations",
            FeedTable::Jtis => "jti_revocations",
        }
    }

    /// The unique column a snapshot pages by.
    pub(crate) fn id_column(self) -> &'static str {
        match self {
            FeedTable::Keys => "sha256",
            FeedTable::Users => "user_id",
            FeedTable::Jtis => "jti_sha256",
        }
    }
}

/// A place in a snapshot: just after the record `last` (a key's sha256, a user id, a jti
/// hash) of `table`. The next page starts there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotPos {
    pub table: FeedTable,
    pub last: String,
}

/// A snapshot page's continuation as the caller sent it back: the snapshot's epoch and
/// view (the database's version when its first page was read) and where it stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotAt {
    pub epoch: String,
    pub view: i64,
    pub pos: SnapshotPos,
}

/// What one feed request asks the store for.
#[derive(Clone, Copy, Debug)]
pub struct FeedAsk<'a> {
    /// The last version the caller applied; 0 for a snapshot.
    pub since: i64,
    /// The epoch the caller last saw, if it said.
    pub epoch: Option<&'a str>,
    /// The snapshot page to continue after (with `since` 0).
    pub after: Option<&'a SnapshotAt>,
    /// Records per answer (one version alone may be more).
    pub page: usize,
    /// Unix seconds: overrides expired by then are left out of `levers`.
    pub now: i64,
}

/// Records as one answer carries them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FeedRecords {
    pub keys: Vec<FeedKey>,
    pub users: Vec<UserRevocation>,
    pub jtis: Vec<JtiRevocation>,
    /// Every lever in force, when the answer carries them (control/FEED.md, "Levers").
    pub levers: Option<FeedLevers>,
}

impl FeedRecords {
    pub fn len(&self) -> usize {
        self.keys.len() + self.users.len() + self.jtis.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What the store read for one feed request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FeedAnswer {
    /// Every change in `(since, version]`, in whole versions; later versions wait when
    /// `version` is below the database's.
    Changes {
        epoch: String,
        version: i64,
        more: bool,
        records: FeedRecords,
    },
    /// A page of the snapshot taken at version `view`; `next` is where the following page
    /// starts, `None` on the last.
    Snapshot {
        epoch: String,
        view: i64,
        records: FeedRecords,
        next: Option<SnapshotPos>,
    },
    /// `since` is older than the oldest change kept: start a snapshot.
    Gone,
    /// The cursor's view is above the database's version: this database never gave it
    /// out.
    UnknownView,
}

/// Rows read for an answer, with their versions.
#[derive(Debug, Default)]
pub(crate) struct Rows {
    pub keys: Vec<KeyRow>,
    pub users: Vec<UserRevocation>,
    pub jtis: Vec<JtiRevocation>,
}

impl Rows {
    fn len(&self) -> usize {
        self.keys.len() + self.users.len() + self.jtis.len()
    }

    fn versions(&self, table: FeedTable) -> Vec<i64> {
        match table {
            FeedTable::Keys => self.keys.iter().map(|k| k.version).collect(),
            FeedTable::Users => self.users.iter().map(|u| u.version).collect(),
            FeedTable::Jtis => self.jtis.iter().map(|j| j.version).collect(),
        }
    }

    fn retain_up_to(&mut self, version: i64) {
        self.keys.retain(|k| k.version <= version);
        self.users.retain(|u| u.version <= version);
        self.jtis.retain(|j| j.version <= version);
    }

    /// Keeps the first `page` rows in snapshot order; the position of the last one kept
    /// if any were dropped.
    fn cut_at(&mut self, page: usize) -> Option<SnapshotPos> {
        if self.len() <= page {
            return None;
        }
        while self.len() > page {
            if self.jtis.pop().is_none() && self.users.pop().is_none() {
                self.keys.pop();
            }
        }
        let last = |table, id: Option<&String>| {
            id.map(|last| SnapshotPos {
                table,
                last: last.clone(),
            })
        };
        last(FeedTable::Jtis, self.jtis.last().map(|j| &j.jti_sha256))
            .or_else(|| last(FeedTable::Users, self.users.last().map(|u| &u.user)))
            .or_else(|| last(FeedTable::Keys, self.keys.last().map(|k| &k.sha256)))
    }

    fn into_records(self, levers: Option<Levers>) -> FeedRecords {
        FeedRecords {
            keys: self.keys.iter().map(FeedKey::from).collect(),
            users: self.users,
            jtis: self.jtis,
            levers: levers.map(FeedLevers::from),
        }
    }
}

/// The rows a [`FeedReader`] query selects.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Filter<'a> {
    /// `version > v`, in version order (then by id).
    VersionAbove(i64),
    /// `version = v`, by id.
    Version(i64),
    /// id `> s` (`""`: from the first), by id: keyset pagination.
    IdAbove(&'a str),
}

/// The reads an answer needs, run by a backend inside one read transaction so that they
/// all see one state of the database.
#[async_trait::async_trait]
pub(crate) trait FeedReader: Send {
    /// `(seq, epoch, purged_through, levers_version)` of the meta row.
    async fn meta(&mut self) -> StoreResult<(i64, String, i64, i64)>;
    /// Every lever in force at `now`.
    async fn levers(&mut self, now: i64) -> StoreResult<Levers>;
    /// Appends up to `limit` rows of `table` selected by `filter` to `into`; returns how
    /// many.
    async fn rows(
        &mut self,
        table: FeedTable,
        filter: Filter<'_>,
        limit: usize,
        into: &mut Rows,
    ) -> StoreResult<usize>;
}

/// The SQL of a [`FeedReader::rows`] query: `columns` of `table` selected by `filter`,
/// with the backend's two placeholders (the filter's value, then the limit).
pub(crate) fn rows_sql(
    table: FeedTable,
    columns: &str,
    filter: &Filter<'_>,
    placeholders: [&str; 2],
) -> String {
    let (name, id) = (table.name(), table.id_column());
    let [value, limit] = placeholders;
    let where_order = match filter {
        Filter::VersionAbove(_) => format!("version > {value} ORDER BY version, {id}"),
        Filter::Version(_) => format!("version = {value} ORDER BY {id}"),
        Filter::IdAbove(_) => format!("{id} > {value} ORDER BY {id}"),
    };
    format!("SELECT {columns} FROM {name} WHERE {where_order} LIMIT {limit}")
}

/// A limit as the databases take it.
pub(crate) fn sql_limit(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

/// Which answer a request gets (see the module doc).
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Plan<'a> {
    Changes {
        since: i64,
    },
    Snapshot {
        view: i64,
        after: Option<&'a SnapshotPos>,
    },
    Gone,
    UnknownView,
}

pub(crate) fn plan<'a>(ask: &FeedAsk<'a>, seq: i64, epoch: &str, purged_through: i64) -> Plan<'a> {
    let ours = ask.epoch.is_none_or(|e| e == epoch) && ask.after.is_none_or(|a| a.epoch == epoch);
    if !ours {
        return Plan::Snapshot {
            view: seq,
            after: None,
        };
    }
    if let Some(at) = ask.after {
        if at.view > seq {
            return Plan::UnknownView;
        }
        return Plan::Snapshot {
            view: at.view,
            after: Some(&at.pos),
        };
    }
    // since 0, or ahead of this database (restored from an older backup): a snapshot.
    if ask.since <= 0 || ask.since > seq {
        return Plan::Snapshot {
            view: seq,
            after: None,
        };
    }
    if ask.since < purged_through {
        return Plan::Gone;
    }
    Plan::Changes { since: ask.since }
}

/// How a delta answer is cut (see the module doc).
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Cut {
    /// The fetched rows with a version up to this one.
    UpTo(i64),
    /// This version alone, read whole.
    Alone(i64),
}

/// `versions`: per table, the versions of its first rows after `since` in order, and
/// whether the table was read to its limit (so may hold more rows of its last version).
pub(crate) fn cut(seq: i64, page: usize, versions: &[(Vec<i64>, bool)]) -> Cut {
    // Rows below `bound` are known complete in every table.
    let bound = versions
        .iter()
        .filter(|(_, filled)| *filled)
        .filter_map(|(v, _)| v.last().copied())
        .min();
    let mut per_version: BTreeMap<i64, usize> = BTreeMap::new();
    for (vs, _) in versions {
        for &v in vs {
            if bound.is_none_or(|b| v < b) {
                *per_version.entry(v).or_default() += 1;
            }
        }
    }
    let mut taken = 0usize;
    let mut any_taken = false;
    let mut first_left = None;
    for (&v, &n) in &per_version {
        if taken + n > page {
            first_left = Some(v);
            break;
        }
        taken += n;
        any_taken = true;
    }
    match (first_left.or(bound), any_taken) {
        (None, _) => Cut::UpTo(seq),
        (Some(w), true) => Cut::UpTo(w - 1),
        (Some(w), false) => Cut::Alone(w),
    }
}

/// The answer to `ask`, read through `r` (already inside its read transaction).
pub(crate) async fn answer(r: &mut dyn FeedReader, ask: &FeedAsk<'_>) -> StoreResult<FeedAnswer> {
    let page = ask.page.max(1);
    let (seq, epoch, purged_through, levers_version) = r.meta().await?;
    match plan(ask, seq, &epoch, purged_through) {
        Plan::Gone => Ok(FeedAnswer::Gone),
        Plan::UnknownView => Ok(FeedAnswer::UnknownView),
        Plan::Changes { since } => {
            let mut rows = Rows::default();
            let mut versions = Vec::with_capacity(FeedTable::ALL.len());
            // One row more than the page: a table that has it may go on, one that has
            // not was read to its end.
            let limit = page.saturating_add(1);
            for table in FeedTable::ALL {
                let n = r
                    .rows(table, Filter::VersionAbove(since), limit, &mut rows)
                    .await?;
                versions.push((rows.versions(table), n >= limit));
            }
            let version = match cut(seq, page, &versions) {
                Cut::UpTo(version) => {
                    rows.retain_up_to(version);
                    version
                }
                Cut::Alone(version) => {
                    rows = Rows::default();
                    for table in FeedTable::ALL {
                        r.rows(table, Filter::Version(version), usize::MAX, &mut rows)
                            .await?;
                    }
                    version
                }
            };
            // The levers go whole with the answer whose versions hold their last change;
            // a lever change touches no row, so it never splits or delays a version.
            let levers = if since < levers_version && levers_version <= version {
                Some(r.levers(ask.now).await?)
            } else {
                None
            };
            Ok(FeedAnswer::Changes {
                epoch,
                version,
                more: version < seq,
                records: rows.into_records(levers),
            })
        }
        Plan::Snapshot { view, after } => {
            let want = page.saturating_add(1);
            let mut rows = Rows::default();
            let (start, from) = after.map_or((FeedTable::Keys, ""), |p| (p.table, p.last.as_str()));
            for table in FeedTable::ALL.into_iter().filter(|t| *t >= start) {
                let have = rows.len();
                if have >= want {
                    break;
                }
                let from = if table == start { from } else { "" };
                r.rows(table, Filter::IdAbove(from), want - have, &mut rows)
                    .await?;
            }
            let next = rows.cut_at(page);
            // The first page holds the levers, read in the transaction that fixed the
            // view: a lever change after the view reaches the caller as a change once it
            // has read the last page and asks from the view.
            let levers = match after {
                None => Some(r.levers(ask.now).await?),
                Some(_) => None,
            };
            Ok(FeedAnswer::Snapshot {
                epoch,
                view,
                records: rows.into_records(levers),
                next,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(epoch: &str, view: i64) -> SnapshotAt {
        SnapshotAt {
            epoch: epoch.to_string(),
            view,
            pos: SnapshotPos {
                table: FeedTable::Users,
                last: "u1".to_string(),
            },
        }
    }

    fn ask<'a>(since: i64, epoch: Option<&'a str>, after: Option<&'a SnapshotAt>) -> FeedAsk<'a> {
        FeedAsk {
            since,
            epoch,
            after,
            page: 10,
            now: 0,
        }
    }

    #[test]
    fn another_epoch_said_or_carried_starts_a_new_snapshot() {
        let fresh = Plan::Snapshot {
            view: 9,
            after: None,
        };
        assert_eq!(plan(&ask(5, Some("old"), None), 9, "e", 0), fresh);
        let theirs = at("old", 3);
        assert_eq!(plan(&ask(0, None, Some(&theirs)), 9, "e", 0), fresh);
        let ours = at("e", 3);
        assert_eq!(plan(&ask(0, Some("old"), Some(&ours)), 9, "e", 0), fresh);
        // Even a since that is gone here: the caller's versions mean nothing here.
        assert_eq!(plan(&ask(1, Some("old"), None), 9, "e", 5), fresh);
    }

    #[test]
    fn a_cursor_continues_its_snapshot_unless_its_view_is_ahead() {
        let ours = at("e", 3);
        assert_eq!(
            plan(&ask(0, Some("e"), Some(&ours)), 9, "e", 7),
            Plan::Snapshot {
                view: 3,
                after: Some(&ours.pos)
            }
        );
        let ahead = at("e", 10);
        assert_eq!(
            plan(&ask(0, None, Some(&ahead)), 9, "e", 0),
            Plan::UnknownView
        );
    }

    #[test]
    fn since_zero_or_ahead_is_a_snapshot_below_purged_is_gone_else_changes() {
        let snap = Plan::Snapshot {
            view: 9,
            after: None,
        };
        assert_eq!(plan(&ask(0, None, None), 9, "e", 4), snap);
        assert_eq!(plan(&ask(10, Some("e"), None), 9, "e", 4), snap);
        assert_eq!(plan(&ask(3, None, None), 9, "e", 4), Plan::Gone);
        assert_eq!(
            plan(&ask(4, None, None), 9, "e", 4),
            Plan::Changes { since: 4 }
        );
        assert_eq!(
            plan(&ask(9, Some("e"), None), 9, "e", 4),
            Plan::Changes { since: 9 }
        );
    }

    fn t(versions: &[i64], filled: bool) -> (Vec<i64>, bool) {
        (versions.to_vec(), filled)
    }

    #[test]
    fn everything_that_fits_is_answered_up_to_the_database_version() {
        assert_eq!(
            cut(9, 10, &[t(&[], false), t(&[], false), t(&[], false)]),
            Cut::UpTo(9)
        );
        assert_eq!(
            cut(
                9,
                10,
                &[t(&[2, 3, 3], false), t(&[4], false), t(&[7], false)]
            ),
            Cut::UpTo(9)
        );
    }

    #[test]
    fn the_records_of_all_tables_count_against_one_page() {
        // 2 + 2 + 1 rows, page 3: versions 2 and 3 (3 records) fit, 4 does not.
        assert_eq!(
            cut(
                9,
                3,
                &[t(&[2, 4], false), t(&[3, 4], false), t(&[6], false)]
            ),
            Cut::UpTo(3)
        );
    }

    #[test]
    fn a_version_is_never_split() {
        // Page 3: version 2 (1 record) fits, version 3 (3 records) would pass the page.
        assert_eq!(
            cut(9, 3, &[t(&[2, 3, 3], true), t(&[3], false), t(&[], false)]),
            Cut::UpTo(2)
        );
        // A filled table's last version may go on past the page: it is not taken.
        assert_eq!(
            cut(9, 3, &[t(&[2, 3, 3], true), t(&[], false), t(&[], false)]),
            Cut::UpTo(2)
        );
        // The first version is more than a page: it goes alone, whole.
        assert_eq!(
            cut(9, 2, &[t(&[4, 4], true), t(&[], false), t(&[], false)]),
            Cut::Alone(4)
        );
        assert_eq!(
            cut(9, 2, &[t(&[4], false), t(&[4, 4], true), t(&[], false)]),
            Cut::Alone(4)
        );
        assert_eq!(
            cut(9, 2, &[t(&[4], false), t(&[4, 5], true), t(&[4], false)]),
            Cut::Alone(4)
        );
    }

    #[test]
    fn the_answer_ends_just_before_the_first_version_left_out() {
        // Versions 5 to 7 have no rows left (rewritten by 8): the answer covers them.
        assert_eq!(
            cut(20, 2, &[t(&[4, 8, 8], true), t(&[], false), t(&[], false)]),
            Cut::UpTo(7)
        );
        // The smallest last version of the tables that filled up bounds what is known.
        assert_eq!(
            cut(
                20,
                100,
                &[t(&[2, 3, 9], true), t(&[4, 6], true), t(&[5], false)]
            ),
            Cut::UpTo(5)
        );
    }
}
