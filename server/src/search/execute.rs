//! Running a parsed search against the store: one page of matches, its includes, the total
//! when asked, and the cursors of the pages before and after.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, Hash as _, Hasher as _};
use std::str::FromStr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use fhir_models::ResourceType;
use fhir_models::search::SearchParameterDef;

use super::query::{Cursor, Filter, Include, SearchQuery, Total};
use super::sql::{self, ROW_COLUMNS, Sql};
use crate::error::FhirError;
use crate::store::{Cell, Kind, Micros, Planning, Store, Version};

/// Most `(type, id)` pairs fetched by one include query.
const INCLUDE_BATCH: usize = 500;

/// A resource a search found.
#[derive(Debug, Clone)]
pub struct Found {
    pub rid: i64,
    pub version: Version,
}

#[derive(Debug, Default)]
pub struct Page {
    pub matches: Vec<Found>,
    /// What comes with the matches without matching: `_include` and `_revinclude` (and their
    /// `:iterate` forms), all found by [`page`]'s one call to `includes`, or for `$everything`
    /// the resources its members refer to. A narrowing ([`SearchQuery::narrow`]) selects
    /// matches only, so this list is where a caller removes included resources its client may
    /// not see, before the Bundle is built from the page.
    pub included: Vec<Found>,
    pub total: Option<i64>,
    /// The `_cursor` of the next page, if there is one.
    pub next: Option<String>,
    /// The `_cursor` of the page before, if there is one.
    pub previous: Option<String>,
}

/// How often the counts of [`PlannerStats`] are taken again.
pub const RECOUNT_EVERY: Duration = Duration::from_secs(60);

/// What searches are planned from: how many live resources each type held when last counted,
/// and the estimates of recent searches.
///
/// A type is counted when a search first needs it, and again every [`RECOUNT_EVERY`] by
/// [`Self::recount`] (off the request path); a plan needs the order of magnitude, not the exact
/// figure. An estimate (how many resources each filter of a search matches, up to its cap; see
/// [`Plan`]) is kept as long, so that a search asked again — a waiting room or a worklist
/// polled every few seconds — is planned without counting again. An estimate only chooses how
/// a search finds its matches, never which it finds, with one exception: a filter counted to
/// match nothing makes the search empty. So an estimate with a count of nothing is never kept.
#[derive(Debug, Default)]
pub struct PlannerStats {
    counted: Mutex<HashMap<ResourceType, i64>>,
    /// Held while a type is counted for the first time, so that the searches which arrive
    /// meanwhile wait for that count rather than each counting the type again (on a server
    /// just started under load, dozens of counts of hundreds of thousands of rows at once).
    first_counts: tokio::sync::Mutex<()>,
    /// Each kept estimate by a hash of its statement and values, with when it was counted.
    estimates: Mutex<HashMap<u64, (Instant, Vec<Cell>)>>,
    /// The keys of that hash, drawn at random, so that no client can choose statements whose
    /// hashes meet.
    hash_keys: std::hash::RandomState,
}

/// Most estimates kept at once: a couple of hundred bytes each. Past it, those older than
/// [`RECOUNT_EVERY`] are forgotten, and if that is not enough, all.
const MOST_ESTIMATES: usize = 8_192;

impl PlannerStats {
    /// How many live resources `types` hold together, counting those never counted.
    async fn of(&self, store: &Store, types: &[ResourceType]) -> Result<i64, FhirError> {
        self.of_counted_by(types, |rt| count_type(store, rt)).await
    }

    /// [`Self::of`], with `count` counting a type never counted: one count at a time, so that
    /// a type is counted once however many searches first need it together.
    async fn of_counted_by<F>(
        &self,
        types: &[ResourceType],
        count: impl Fn(ResourceType) -> F,
    ) -> Result<i64, FhirError>
    where
        F: Future<Output = Result<i64, FhirError>>,
    {
        let (mut total, missing) = {
            let counted = self.counted.lock().unwrap_or_else(|e| e.into_inner());
            let mut total = 0;
            let mut missing = Vec::new();
            for rt in types {
                match counted.get(rt) {
                    Some(n) => total += n,
                    None => missing.push(*rt),
                }
            }
            (total, missing)
        };
        if missing.is_empty() {
            return Ok(total);
        }
        let _counting = self.first_counts.lock().await;
        for rt in missing {
            // Counted while this search waited its turn, or to be counted now.
            let known = self
                .counted
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&rt)
                .copied();
            let n = match known {
                Some(n) => n,
                None => {
                    let n = count(rt).await?;
                    self.counted
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(rt, n);
                    n
                }
            };
            total += n;
        }
        Ok(total)
    }

    /// Counts again every type counted so far, and forgets the estimates as old.
    pub async fn recount(&self, store: &Store) -> Result<(), FhirError> {
        let types: Vec<ResourceType> = self
            .counted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .copied()
            .collect();
        for rt in types {
            let n = count_type(store, rt).await?;
            self.counted
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(rt, n);
        }
        self.forget_estimates_before(Instant::now());
        Ok(())
    }

    /// The one row of the estimate `sql` (`columns` integers): as kept, if counted less than
    /// [`RECOUNT_EVERY`] ago, else counted now, and kept if `keep` holds for it.
    async fn estimate(
        &self,
        store: &Store,
        sql: &Sql,
        columns: usize,
        keep: impl Fn(&[Cell]) -> bool,
    ) -> Result<Vec<Cell>, FhirError> {
        let key = estimate_key(&self.hash_keys, sql);
        let now = Instant::now();
        let kept = self
            .lock_estimates()
            .get(&key)
            .filter(|(at, _)| now.saturating_duration_since(*at) < RECOUNT_EVERY)
            .map(|(_, counts)| counts.clone());
        if let Some(counts) = kept {
            return Ok(counts);
        }
        let rows = store
            .query(&sql.text, &sql.binds, &vec![Kind::Int; columns])
            .await?;
        let counts = rows.into_iter().next().unwrap_or_default();
        if keep(&counts) {
            let mut estimates = self.lock_estimates();
            if estimates.len() >= MOST_ESTIMATES {
                drop(estimates);
                self.forget_estimates_before(now);
                estimates = self.lock_estimates();
                if estimates.len() >= MOST_ESTIMATES {
                    estimates.clear();
                }
            }
            estimates.insert(key, (now, counts.clone()));
        }
        Ok(counts)
    }

    /// Forgets the estimates counted [`RECOUNT_EVERY`] or longer before `now`.
    fn forget_estimates_before(&self, now: Instant) {
        self.lock_estimates()
            .retain(|_, (at, _)| now.saturating_duration_since(*at) < RECOUNT_EVERY);
    }

    fn lock_estimates(&self) -> std::sync::MutexGuard<'_, HashMap<u64, (Instant, Vec<Cell>)>> {
        self.estimates.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The key of an estimate: a hash of its statement and values. Two estimates that share one (a
/// chance of one in 2^64 a pair) would only plan each other's searches less well, as neither
/// is of nothing.
fn estimate_key(keys: &impl BuildHasher, sql: &Sql) -> u64 {
    let mut hasher = keys.build_hasher();
    sql.text.hash(&mut hasher);
    for bind in &sql.binds {
        match bind {
            Cell::Null => 0u8.hash(&mut hasher),
            Cell::Int(n) => (1u8, n).hash(&mut hasher),
            Cell::Real(x) => (2u8, x.to_bits()).hash(&mut hasher),
            Cell::Text(t) => (3u8, t).hash(&mut hasher),
            Cell::Blob(b) => (4u8, b).hash(&mut hasher),
        }
    }
    hasher.finish()
}

/// Whether none of `counts` is zero.
fn none_zero(counts: &[Cell]) -> bool {
    !counts.iter().any(|cell| matches!(cell, Cell::Int(0)))
}

async fn count_type(store: &Store, rt: ResourceType) -> Result<i64, FhirError> {
    let sql = sql::type_size(rt);
    let rows = store.query(&sql.text, &sql.binds, &[Kind::Int]).await?;
    Ok(match rows.first().and_then(|row| row.first()) {
        Some(Cell::Int(n)) => *n,
        _ => 0,
    })
}

/// How a search runs: which filter it starts from, if any, found by counting each filter's
/// matches up to a cap. The database plans each query without knowing which values are rare
/// (a token's code may be an identifier or a gender), so the server measures. Filters are
/// counted one at a time, likeliest to be rare first, each only as far as the rarest so far:
/// after an identifier's one match, a date range costs one index entry to rule out.
#[derive(Debug, Default)]
struct Plan {
    /// The rarest filter: `(filter index, matches, its cap)`; the count is exact below the cap.
    rarest: Option<(usize, i64, i64)>,
    /// The chain filters whose linked resources were all counted, below their limit: few
    /// enough to be found once by a search that tests each resource it walks.
    linked: Vec<usize>,
}

impl Plan {
    async fn new(
        store: &Store,
        stats: &PlannerStats,
        query: &SearchQuery,
    ) -> Result<Plan, FhirError> {
        // An `_id` finds its resources through the primary key; nothing can beat it.
        if query.filters.iter().any(|f| matches!(f, Filter::Id(_))) {
            return Ok(Plan::default());
        }
        // Read from its index in `rid` order, the one filter's page costs that page's rows,
        // whether a hundred resources match or a million; counting them would cost more than
        // the page (at 100k patients, 8,746 index entries to learn that a LOINC code is
        // common, against 51 for its first page).
        if sql::in_rid_order(query) {
            return Ok(Plan::starting_from(0));
        }
        let mut candidates: Vec<usize> = (0..query.filters.len())
            .filter(|&i| sql::can_drive(&query.filters[i]))
            .collect();
        if candidates.is_empty() {
            return Ok(Plan::default());
        }
        candidates.sort_by_key(|&i| sql::likely_size(&query.filters[i]));
        let size = stats.of(store, &query.types).await?;
        let page = i64::from(query.count) + 1;
        let mut rarest: Option<(usize, i64, i64)> = None;
        let mut linked = Vec::new();
        // Every filter but the chains is counted by one statement, in order, each no further
        // than the least count before it (see [`sql::estimates`]): one round trip, and one
        // plan, however many filters.
        let (chains, plain): (Vec<usize>, Vec<usize>) = candidates
            .into_iter()
            .partition(|&i| matches!(query.filters[i], Filter::Chain { .. }));
        if !plain.is_empty() {
            let caps: Vec<(usize, i64)> = plain
                .iter()
                .map(|&i| (i, cap(&query.filters[i], page, size, false)))
                .collect();
            let sql = sql::estimates(query, &caps);
            let counts = stats.estimate(store, &sql, caps.len(), none_zero).await?;
            for (j, &(i, cap)) in caps.iter().enumerate() {
                let n = match counts.get(j) {
                    Some(Cell::Int(n)) => *n,
                    _ => cap,
                };
                if rarest.is_none_or(|(_, least, _)| n < least) {
                    rarest = Some((i, n, cap));
                }
            }
        }
        let tests_per_link = tests_per_link(store.is_postgres());
        let most_links = most_links(page, size, tests_per_link);
        for i in chains {
            if rarest.is_some_and(|(_, n, _)| n == 0) {
                break;
            }
            let walked = store.is_postgres() && sql::reference_walk(query, None) == Some(i);
            let cap = cap(&query.filters[i], page, size, walked);
            // Counting past the rarest so far would only show this one is not rarer.
            let limit = rarest.map_or(cap, |(_, n, _)| cap.min(n));
            let n = match chain_estimate(store, stats, query, i, limit, most_links).await? {
                Some(ChainSize {
                    matches,
                    links,
                    expected,
                }) => {
                    // Found once, the linked resources make each test of a walk cheaper,
                    // worth it while they are fewer than a few times the tests.
                    let tests = page.saturating_mul(size) / expected.max(1);
                    if links.is_some_and(|links| links < tests_per_link.saturating_mul(tests)) {
                        linked.push(i);
                    }
                    matches
                }
                None => {
                    let sql = sql::estimates(query, &[(i, limit)]);
                    let counts = stats.estimate(store, &sql, 1, none_zero).await?;
                    match counts.first() {
                        Some(Cell::Int(n)) => *n,
                        _ => limit,
                    }
                }
            };
            if rarest.is_none_or(|(_, least, _)| n < least) {
                rarest = Some((i, n, cap));
            }
        }
        Ok(Plan { rarest, linked })
    }

    /// A plan that starts from filter `i` without counting its matches (so not known to be
    /// empty).
    fn starting_from(i: usize) -> Plan {
        Plan {
            rarest: Some((i, 1, i64::MAX)),
            linked: Vec::new(),
        }
    }

    /// Whether a filter matches nothing, and so the search does.
    fn empty(&self) -> bool {
        self.rarest.is_some_and(|(_, n, _)| n == 0)
    }

    /// The filter to start from to find every match: the rarest.
    fn all_matches(&self) -> Option<usize> {
        self.rarest.map(|(i, _, _)| i)
    }

    /// The filter to start from to find a page in `rid` order: the rarest, if under its cap.
    fn first_matches(&self) -> Option<usize> {
        self.rarest
            .filter(|&(_, n, cap)| n < cap)
            .map(|(i, _, _)| i)
    }
}

/// The estimate of the chain filter `i` from [`sql::chain_estimate`]: the resources its link
/// matches, times how many resources refer to each of a sample of them. `None` when `i` is not
/// a chain, when counting its matches is as cheap, or when the sample cannot tell — many linked
/// resources, each referred to less than once — and only counting the matches can.
///
/// Zero only when exact, so that a search found empty is empty: an extrapolated zero is one.
async fn chain_estimate(
    store: &Store,
    stats: &PlannerStats,
    query: &SearchQuery,
    i: usize,
    limit: i64,
    links: i64,
) -> Result<Option<ChainSize>, FhirError> {
    // Below this the exact count follows as few matches as the sample would.
    if limit <= 2 * sql::CHAIN_SAMPLE {
        return Ok(None);
    }
    let links = links.max(limit);
    let Some((sql, targets)) = sql::chain_estimate(query, i, limit, links) else {
        return Ok(None);
    };
    let ints = |row: &[Cell]| -> Vec<i64> {
        row.iter()
            .map(|cell| match cell {
                Cell::Int(n) => *n,
                _ => 0,
            })
            .collect()
    };
    // Kept only when it finds the chain matching something.
    let found_some =
        |row: &[Cell]| chain_size(&ints(row), limit, links).is_some_and(|size| size.matches > 0);
    let row = stats.estimate(store, &sql, 3 * targets, found_some).await?;
    if row.is_empty() {
        return Ok(None);
    }
    Ok(chain_size(&ints(&row), limit, links))
}

/// A chain's estimate.
#[derive(Debug, PartialEq, Eq)]
struct ChainSize {
    /// How many resources it matches, at most the limit of its estimate.
    matches: i64,
    /// How many resources it links to, when below the count's limit: counted in full, or for
    /// a two-level chain with many inner matches estimated from a sample of them (see
    /// [`sql::chain_estimate`]).
    links: Option<i64>,
    /// How many resources it matches, extrapolated from the sample past the limit.
    expected: i64,
}

/// A chain's estimate from the counts of [`sql::chain_estimate`] (three a target type, the
/// linked resources counted up to `links`), at most `limit`, as [`chain_estimate`] describes it.
fn chain_size(counts: &[i64], limit: i64, links: i64) -> Option<ChainSize> {
    let mut total = 0i64;
    let mut exact = true;
    let mut all_links = Some(0i64);
    for target in counts.chunks(3) {
        let &[linked, sampled, referring] = target else {
            return None;
        };
        all_links = all_links
            .filter(|_| linked < links)
            .map(|n| n.saturating_add(linked));
        let n = if sampled < sql::CHAIN_SAMPLE {
            // The sample was every linked resource: exact, up to the limit.
            referring
        } else {
            exact &= referring >= limit;
            // A float is exact enough for an estimate.
            let n = (linked as f64 * referring as f64 / sampled as f64).ceil() as i64;
            if linked >= links && n < limit {
                // The linked resources were counted only so far, so `n` may be short of the
                // truth by any amount.
                return None;
            }
            n.max(referring)
        };
        total = total.saturating_add(n);
    }
    let n = total.min(limit);
    Some(ChainSize {
        matches: if exact { n } else { n.max(1) },
        links: all_links,
        expected: total,
    })
}

/// How many linked resources, found once, cost as much as one test of a walk that follows a
/// chain from each candidate: twice on SQLite, whose tests cost little, eight times on
/// PostgreSQL, whose tests cost far more. Measured at 100k patients, for a page of 11
/// Encounters by their patients' practitioner's family name: on SQLite 2 µs against 1 µs a
/// test; on PostgreSQL 4–11 µs a test, against 1.2–1.9 ms for the whole page from 800–2,800
/// linked patients and 3.0 ms from 4,700–6,500.
fn tests_per_link(postgres: bool) -> i64 {
    if postgres { 8 } else { 2 }
}

/// How many linked resources a chain's estimate counts: as many as can pay for themselves.
/// Found once, they do while fewer than `tests_per_link` times the tests of a walk
/// (`page · size / m` for `m` matches, at least one for each linked resource), so never past
/// `√(tests_per_link · page · size)`. Counted no further, a chain linked to more is walked
/// testing each candidate.
fn most_links(page: i64, size: i64, tests_per_link: i64) -> i64 {
    root_of(tests_per_link as f64, page, size)
}

/// `√(weight · page · size)`, where the two ways of finding a page meet: from every match of a
/// filter, or walking `size` resources testing each (see [`cap`] and [`most_links`]).
fn root_of(weight: f64, page: i64, size: i64) -> i64 {
    // A float is exact enough for a threshold, and its square root of an i64 fits one.
    (weight * page as f64 * size.max(1) as f64).sqrt() as i64
}

/// Where the estimate of `filter` stops counting, for a page of `page` among `size` resources.
///
/// A page in `rid` order either starts from the filter's matches, reading all `m` of them, or
/// walks the types searched in order and tests each resource, needing about `page · size / m`
/// tests. Measured on SQLite, a value's match costs about a fifth of a test, so the two meet
/// near `m = √(5 · page · size)`; a chain's or `_has`'s match costs more than its test, and
/// counting it costs as much again, so for those the cap that bounds the worse of the two is
/// near `√(0.7 · page · size)`. A chain whose references are walked in order from their own
/// index (`walked`, see [`sql::reference_walk`]) is tested for far less than a descent per
/// resource: measured on PostgreSQL at 100k patients, for a page of 11 Encounters by their
/// patients' practitioner's family name, walking beat finding all the matches from about 600
/// of them (0.5–1.0 ms against 1.7–5.3 ms at 800–1,250 matches, 2.7 against 1.3 ms at 200), so
/// for it the two meet near `√(0.15 · page · size)`. Below its cap a filter is started from.
fn cap(filter: &Filter, page: i64, size: i64, walked: bool) -> i64 {
    let weight = match (sql::follows_references(filter), walked) {
        (true, true) => 0.15,
        (true, false) => 0.7,
        (false, _) => 5.0,
    };
    root_of(weight, page, size).clamp(MIN_CAP, MAX_CAP)
}

/// Bounds of [`cap`]: an estimate this small costs nothing, one this large is already dear.
const MIN_CAP: i64 = 100;
const MAX_CAP: i64 = 50_000;

/// How many resources match, without fetching any.
pub async fn count(
    store: &Store,
    stats: &PlannerStats,
    query: &SearchQuery,
) -> Result<i64, FhirError> {
    let plan = Plan::new(store, stats, query).await?;
    count_planned(store, query, &plan).await
}

async fn count_planned(store: &Store, query: &SearchQuery, plan: &Plan) -> Result<i64, FhirError> {
    if plan.empty() {
        return Ok(0);
    }
    let sql = sql::count(query, plan.all_matches());
    let rows = store.query(&sql.text, &sql.binds, &[Kind::Int]).await?;
    match rows.first().and_then(|row| row.first()) {
        Some(Cell::Int(n)) => Ok(*n),
        _ => Ok(0),
    }
}

/// One page of `query`.
pub async fn page(
    store: &Store,
    stats: &PlannerStats,
    query: &SearchQuery,
) -> Result<Page, FhirError> {
    let value_order = sql::value_order(query);
    let plan = match value_order {
        // Read in its value's order, the one filter starts every page: no count chooses it.
        Some(_) => Plan::starting_from(0),
        None => Plan::new(store, stats, query).await?,
    };
    if plan.empty() {
        return Ok(Page {
            total: match query.total {
                Total::Accurate => Some(0),
                Total::Cheap if query.cursor.is_none() => Some(0),
                _ => None,
            },
            ..Page::default()
        });
    }
    let not_a_cursor = || {
        FhirError::BadRequest(vec![
            crate::error::Issue::error(
                "invalid",
                "search parameter _cursor: is not a cursor this server gave",
            )
            .at("_cursor"),
        ])
    };
    let cursor_keys = match (&query.cursor, value_order) {
        (Some(cursor), Some((def, text))) => {
            let key = value_key(store, def, text, cursor)
                .await?
                .ok_or_else(not_a_cursor)?;
            vec![Cell::Text(key)]
        }
        (Some(cursor), None) if !query.sort.is_empty() => {
            let (sql, kinds) = sql::sort_keys_of(query, cursor.rid);
            let mut rows = store.query(&sql.text, &sql.binds, &kinds).await?;
            if rows.is_empty() {
                return Err(not_a_cursor());
            }
            rows.swap_remove(0)
        }
        _ => Vec::new(),
    };
    // Sorted by anything but `rid`, every match is read to be sorted anyway.
    let driver = if query.sort.is_empty() {
        plan.first_matches()
    } else {
        plan.all_matches()
    };
    let linked = if driver.is_none() {
        plan.linked.as_slice()
    } else {
        &[]
    };
    let walk = match value_order {
        None if store.is_postgres() => sql::reference_walk(query, driver),
        _ => None,
    };
    let (sql, key_kinds) = match value_order {
        Some((def, text)) => {
            let key = match cursor_keys.first() {
                Some(Cell::Text(key)) => Some(key.as_str()),
                _ => None,
            };
            (sql::value_page(query, def, text, key), Vec::new())
        }
        None => sql::page(query, driver, linked, walk, &cursor_keys),
    };
    // A walk's plan is fixed by its form: it reads the chain's references, or the resources
    // searched, in `rid` order and tests each. PostgreSQL would plan it anew for every call all
    // the same, as its generic plan guesses a chained string's matches at hundreds (a range of
    // unknown bounds) where a name has tens, or a page's `LIMIT` at a tenth of the type, and
    // costs it accordingly: planning a `_has` page took a fifth of its time.
    let planning = if walk.is_some()
        || (value_order.is_none() && sql::walks_resources(query, driver, linked))
    {
        Planning::Generic
    } else {
        Planning::Default
    };
    let mut columns = ROW_COLUMNS.to_vec();
    columns.extend(&key_kinds);
    // An accurate total counts every match; the count and the page are independent queries,
    // so they run side by side (two pooled connections, or two SQLite readers): the answer
    // waits for the longer of the two, not for both.
    let counted = async {
        match query.total {
            Total::Accurate => count_planned(store, query, &plan).await.map(Some),
            _ => Ok(None),
        }
    };
    let (rows, counted) = tokio::try_join!(
        store.query_planned(&sql.text, &sql.binds, &columns, planning),
        counted
    )?;
    let mut matches = rows
        .into_iter()
        .map(found_from_row)
        .collect::<Result<Vec<_>, _>>()?;
    let limit = query.count as usize;
    let more = matches.len() > limit;
    matches.truncate(limit);
    let backwards = query.cursor.as_ref().is_some_and(|c| c.backwards);
    // In a value's order the cursor names the version found, whose value marks the place.
    let cursor = |backwards: bool, found: &Found| {
        Cursor {
            backwards,
            rid: found.rid,
            version: value_order.map(|_| found.version.version_id),
        }
        .encode()
    };
    let (next, previous) = if backwards {
        matches.reverse();
        (
            matches.last().map(|f| cursor(false, f)),
            more.then(|| matches.first().map(|f| cursor(true, f)))
                .flatten(),
        )
    } else {
        (
            more.then(|| matches.last().map(|f| cursor(false, f)))
                .flatten(),
            query
                .cursor
                .as_ref()
                .and_then(|_| matches.first().map(|f| cursor(true, f))),
        )
    };
    let total = match query.total {
        Total::Accurate => counted,
        Total::Cheap if query.cursor.is_none() && !more => {
            Some(i64::try_from(matches.len()).unwrap_or(i64::MAX))
        }
        _ => None,
    };
    let included = includes(store, query, &matches).await?;
    Ok(Page {
        matches,
        included,
        total,
        next,
        previous,
    })
}

/// The value a page in [`sql::value_order`] of the string `text` of `def` continues from:
/// that by which the cursor's resource matched, its least in the range, in the version the
/// cursor names. A resource changed or deleted since is read in that version, so that paging
/// goes on where it was. A cursor without a version takes the newest that matched. `None`
/// when that version never matched.
async fn value_key(
    store: &Store,
    def: &SearchParameterDef,
    text: &str,
    cursor: &Cursor,
) -> Result<Option<String>, FhirError> {
    let (rid, version) = (cursor.rid, cursor.version);
    let sql = sql::value_key(def, text, rid, version);
    let rows = store.query(&sql.text, &sql.binds, &[Kind::Text]).await?;
    if let Some(Cell::Text(key)) = rows
        .into_iter()
        .next()
        .and_then(|row| row.into_iter().next())
    {
        return Ok(Some(key));
    }
    let sql = sql::versions_of(rid, version);
    let rows = store
        .query(&sql.text, &sql.binds, &[Kind::Text, Kind::Blob])
        .await?;
    for row in rows {
        let mut cells = row.into_iter();
        let (Some(Cell::Text(resource_type)), Some(body)) =
            (cells.next(), cells.next().and_then(body_of))
        else {
            continue;
        };
        let (Ok(rt), Ok(resource)) = (
            ResourceType::from_str(&resource_type),
            serde_json::from_slice::<serde_json::Value>(&body),
        ) else {
            continue;
        };
        let least = super::index::extract(rt, &resource, "")
            .strings
            .into_iter()
            .filter(|row| row.param == def.code && sql::in_value_range(&row.normalized, text))
            .map(|row| row.normalized)
            .min();
        if least.is_some() {
            return Ok(least);
        }
    }
    Ok(None)
}

/// A resource body as stored (a blob, or text where a backend gives text); none for a
/// delete.
fn body_of(cell: Cell) -> Option<Vec<u8>> {
    match cell {
        Cell::Blob(b) => Some(b),
        Cell::Text(t) => Some(t.into_bytes()),
        _ => None,
    }
}

fn found_from_row(row: Vec<Cell>) -> Result<Found, FhirError> {
    let mut cells = row.into_iter();
    let mut next = || cells.next().unwrap_or(Cell::Null);
    let int = |cell: Cell| match cell {
        Cell::Int(v) => Ok(v),
        other => Err(FhirError::Internal(anyhow::anyhow!(
            "expected an integer, got {other:?}"
        ))),
    };
    let text = |cell: Cell| match cell {
        Cell::Text(v) => Ok(v),
        other => Err(FhirError::Internal(anyhow::anyhow!(
            "expected text, got {other:?}"
        ))),
    };
    let rid = int(next())?;
    let seq = int(next())?;
    let resource_type = text(next())?;
    let id = text(next())?;
    let version_id = int(next())?;
    let last_updated = int(next())?;
    let method = text(next())?;
    let body = body_of(next());
    Ok(Found {
        rid,
        version: Version {
            seq,
            resource_type: ResourceType::from_str(&resource_type).map_err(|_| {
                FhirError::Internal(anyhow::anyhow!("unknown resource type in storage"))
            })?,
            id,
            version_id,
            last_updated: Micros(last_updated),
            method: method.parse()?,
            body,
        },
    })
}

pub(super) async fn fetch(store: &Store, sql: Sql) -> Result<Vec<Found>, FhirError> {
    let rows = store.query(&sql.text, &sql.binds, &ROW_COLUMNS).await?;
    rows.into_iter().map(found_from_row).collect()
}

/// `_include` and `_revinclude` of a page, then their `:iterate` forms once over everything
/// found so far. A resource appears once, as a match if it is one.
async fn includes(
    store: &Store,
    query: &SearchQuery,
    matches: &[Found],
) -> Result<Vec<Found>, FhirError> {
    if matches.is_empty() || (query.includes.is_empty() && query.revincludes.is_empty()) {
        return Ok(Vec::new());
    }
    let mut seen: HashSet<i64> = matches.iter().map(|f| f.rid).collect();
    let mut included = Vec::new();
    for iterate in [false, true] {
        let sources: Vec<Found> = if iterate {
            matches.iter().chain(&included).cloned().collect()
        } else {
            matches.to_vec()
        };
        let mut found = Vec::new();
        for include in query.includes.iter().filter(|i| i.iterate == iterate) {
            found.extend(forward(store, include, &sources).await?);
        }
        for include in query.revincludes.iter().filter(|i| i.iterate == iterate) {
            found.extend(reverse(store, include, &sources).await?);
        }
        for f in found {
            if seen.insert(f.rid) {
                included.push(f);
            }
        }
    }
    Ok(included)
}

async fn forward(
    store: &Store,
    include: &Include,
    sources: &[Found],
) -> Result<Vec<Found>, FhirError> {
    let rids: Vec<i64> = sources
        .iter()
        .filter(|f| include.source.is_none_or(|s| s == f.version.resource_type))
        .map(|f| f.rid)
        .collect();
    let targets: Vec<ResourceType> = include.target.into_iter().collect();
    let mut out = Vec::new();
    for batch in rids.chunks(INCLUDE_BATCH) {
        let sql = sql::referenced(batch, include.param.map(|p| p.code), &targets);
        out.extend(fetch(store, sql).await?);
    }
    Ok(out)
}

async fn reverse(
    store: &Store,
    include: &Include,
    sources: &[Found],
) -> Result<Vec<Found>, FhirError> {
    let rids: Vec<i64> = sources
        .iter()
        .filter(|f| include.target.is_none_or(|t| t == f.version.resource_type))
        .map(|f| f.rid)
        .collect();
    let mut out = Vec::new();
    for batch in rids.chunks(INCLUDE_BATCH) {
        let sql = sql::referring(batch, include.source, include.param.map(|p| p.code));
        out.extend(fetch(store, sql).await?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::{Duration, Instant};

    use fhir_models::ResourceType;
    use serde_json::json;

    use super::{
        ChainSize, PlannerStats, RECOUNT_EVERY, chain_size, most_links, none_zero, tests_per_link,
    };
    use crate::search::sql::{self, CHAIN_SAMPLE};
    use crate::store::{Cell, Change, Precondition, Store, WriteMethod};

    /// Creates Patient `id` with its index rows.
    async fn create_patient(store: &Store, id: &str) {
        let body = json!({"resourceType": "Patient", "id": id});
        let index = crate::search::index::extract(ResourceType::Patient, &body, "");
        let change = Change::Put {
            body,
            method: WriteMethod::Post,
            index: Box::new(index),
        };
        store
            .write(ResourceType::Patient, id, Precondition::Absent, change)
            .await
            .expect("the patient is written");
    }

    #[tokio::test]
    async fn a_type_first_needed_by_many_searches_at_once_is_counted_once() {
        let stats = PlannerStats::default();
        let counts = AtomicUsize::new(0);
        let count = |rt: ResourceType| {
            let counts = &counts;
            async move {
                counts.fetch_add(1, Ordering::SeqCst);
                // A count takes a while, during which the other searches arrive.
                tokio::time::sleep(Duration::from_millis(20)).await;
                Ok(if rt == ResourceType::Patient { 100 } else { 7 })
            }
        };
        let types = [ResourceType::Patient, ResourceType::Encounter];
        let sizes =
            futures::future::join_all((0..16).map(|_| stats.of_counted_by(&types, count))).await;
        for size in sizes {
            assert_eq!(size.expect("the size"), 107);
        }
        assert_eq!(counts.load(Ordering::SeqCst), 2, "each type counted once");
        assert_eq!(
            stats
                .of_counted_by(&[ResourceType::Encounter], count)
                .await
                .expect("the size"),
            7
        );
        assert_eq!(counts.load(Ordering::SeqCst), 2, "and not again");
    }

    #[tokio::test]
    async fn an_estimate_is_kept_for_a_while_unless_it_counts_nothing() {
        let path = std::env::temp_dir().join(format!(
            "telemed-estimates-{}.db",
            uuid::Uuid::new_v4().simple()
        ));
        let store = Store::open(&format!("sqlite://{}", path.display()), 4)
            .await
            .expect("the store opens");
        let stats = PlannerStats::default();
        let patients = sql::type_size(ResourceType::Patient);
        let estimate = async || {
            stats
                .estimate(&store, &patients, 1, none_zero)
                .await
                .expect("the estimate")
        };
        // Nothing is not kept: it would keep finding nothing after a patient is created.
        assert_eq!(estimate().await, [Cell::Int(0)]);
        create_patient(&store, "a").await;
        assert_eq!(estimate().await, [Cell::Int(1)]);
        // Something is kept, the second patient unseen ...
        create_patient(&store, "b").await;
        assert_eq!(estimate().await, [Cell::Int(1)]);
        // ... until it is as old as the sizes of the types.
        stats.forget_estimates_before(Instant::now() + RECOUNT_EVERY);
        assert_eq!(estimate().await, [Cell::Int(2)]);
        store.close().await;
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
    }

    fn size(matches: i64, links: Option<i64>, expected: i64) -> Option<ChainSize> {
        Some(ChainSize {
            matches,
            links,
            expected,
        })
    }

    #[test]
    fn a_chain_whose_links_were_all_sampled_is_counted_exactly() {
        assert_eq!(chain_size(&[3, 3, 7], 1000, 4000), size(7, Some(3), 7));
        assert_eq!(chain_size(&[0, 0, 0], 1000, 4000), size(0, Some(0), 0));
    }

    #[test]
    fn a_chain_is_its_links_times_the_sampled_references_to_each() {
        assert_eq!(
            chain_size(&[500, CHAIN_SAMPLE, 64], 1241, 4964),
            size(1000, Some(500), 1000)
        );
        // Many links, each referred to twice: past the limit.
        assert_eq!(
            chain_size(&[1241, CHAIN_SAMPLE, 64], 1241, 4964),
            size(1241, Some(1241), 2482)
        );
        assert_eq!(
            chain_size(&[4964, CHAIN_SAMPLE, 64], 1241, 4964),
            size(1241, None, 9928)
        );
    }

    #[test]
    fn an_extrapolated_chain_is_never_empty() {
        assert_eq!(
            chain_size(&[500, CHAIN_SAMPLE, 0], 1241, 4964),
            size(1, Some(500), 0)
        );
    }

    #[test]
    fn the_sample_cannot_tell_about_many_links_rarely_referred_to() {
        assert_eq!(chain_size(&[4964, CHAIN_SAMPLE, 4], 1241, 4964), None);
    }

    #[test]
    fn a_chain_counts_its_links_as_far_as_finding_them_once_can_pay() {
        // A page of 11 of 200,000 Encounters.
        let (page, size) = (11, 200_000);
        for postgres in [false, true] {
            let per_test = tests_per_link(postgres);
            let most = most_links(page, size, per_test);
            // Linked to a tenth fewer than `most` resources, each referred to once, a walk
            // tests enough to pay for finding them once; linked to twice as many, it cannot.
            let fewer = most * 9 / 10;
            assert!(fewer < per_test * (page * size / fewer), "{most}");
            assert!(2 * most > per_test * (page * size / (2 * most)), "{most}");
        }
        // On PostgreSQL, Encounters by the family name of 17 practitioners of 1,000 (1,700
        // linked patients, 3,400 matches): the page from the linked patients found once took
        // 1.9 ms against 6.8 ms testing each candidate, so they must be counted.
        assert!(most_links(page, size, tests_per_link(true)) > 1_700);
    }

    #[test]
    fn the_targets_of_a_chain_add_up() {
        assert_eq!(
            chain_size(&[2, 2, 5, 100, CHAIN_SAMPLE, 32], 1000, 4000),
            size(105, Some(102), 105)
        );
    }
}
