//! SQL for a parsed search, the same text for SQLite and PostgreSQL.
//!
//! A filter takes one of two forms. As a *set* (`r.rid IN (SELECT …)`) it is computed once
//! from a value index, the type and parameter leading each index, and a query can start
//! from it; a chain or `_has` set is a join from the innermost value outwards, which the
//! database streams. As a *probe* (`(SELECT 1 … WHERE x.rid = r.rid … LIMIT 1) IS NOT NULL`)
//! it tests one resource through the `(rid, param, value…)` index, and names no type so that no
//! other index can serve it. A query uses at most one set, the filter [`super::execute`] found rarest, and
//! probes for the rest; with no rare filter it walks the type's live resources in `rid` order
//! and probes each, stopping when the page is full. A search by one string alone is read in
//! the order of its values instead ([`value_order`]), straight from the value index. Paging is
//! keyset: rows come ordered by the sort keys (or the value) and `rid`, and a page starts after
//! the last row of the one before, so rows written meanwhile never shift a page.

use fhir_models::ResourceType;
use fhir_models::search::{SearchParamType, SearchParameterDef};

use super::query::{Cursor, Filter, Modifier, Prefix, SearchNumber, SearchQuery, SearchValue};
use crate::store::{Cell, Kind, VERSION_COLUMNS};

/// SQL text with its values; placeholders are `$1, $2, …` in order of appearance.
#[derive(Debug, Default, Clone)]
pub struct Sql {
    pub text: String,
    pub binds: Vec<Cell>,
}

impl Sql {
    pub(super) fn push(&mut self, text: &str) -> &mut Self {
        self.text.push_str(text);
        self
    }

    pub(super) fn bind(&mut self, value: Cell) -> &mut Self {
        self.binds.push(value);
        let n = self.binds.len();
        self.text.push_str(&format!("${n}"));
        self
    }

    pub(super) fn text(&mut self, value: &str) -> &mut Self {
        self.bind(Cell::Text(value.to_owned()))
    }

    pub(super) fn int(&mut self, value: i64) -> &mut Self {
        self.bind(Cell::Int(value))
    }

    fn real(&mut self, value: f64) -> &mut Self {
        self.bind(Cell::Real(value))
    }
}

/// The end of a prefix range: every text that starts with `prefix` is below `prefix` + this.
const ABOVE_ALL: char = '\u{10FFFF}';

/// The columns of a found resource, before its sort keys.
pub const ROW_COLUMNS: [Kind; 8] = [
    Kind::Int,
    Kind::Int,
    Kind::Text,
    Kind::Text,
    Kind::Int,
    Kind::Int,
    Kind::Text,
    Kind::Blob,
];
/// The columns of [`ROW_COLUMNS`] after the rid, read from the `resources` row `alias`, which
/// holds the current version's body beside it.
pub(super) fn current_columns(alias: &str) -> String {
    VERSION_COLUMNS
        .split(", ")
        .map(|column| format!("{alias}.{column}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The sort key values of the resource `rid` (where a cursor points), and their kinds.
pub fn sort_keys_of(query: &SearchQuery, rid: i64) -> (Sql, Vec<Kind>) {
    let mut sql = Sql::default();
    sql.push("SELECT ");
    for (i, key) in query.sort.iter().enumerate() {
        if i > 0 {
            sql.push(", ");
        }
        sort_expression(&mut sql, key.def, &key.code, key.descending);
    }
    sql.push(" FROM resources r WHERE r.rid = ").int(rid);
    let kinds = query
        .sort
        .iter()
        .map(|key| sort_kind(key.def, &key.code))
        .collect();
    (sql, kinds)
}

/// The query of one page (`count + 1` rows, to know whether there is another), and the kinds
/// of its sort key columns. `cursor_keys` are the sort key values of the cursor's resource;
/// `driver` the filter to start from (see [`matches`]); `linked` the chain filters whose linked
/// resources are few enough to be found once ([`Form::Linked`]).
pub fn page(
    query: &SearchQuery,
    driver: Option<usize>,
    linked: &[usize],
    walk: Option<usize>,
    cursor_keys: &[Cell],
) -> (Sql, Vec<Kind>) {
    let mut sql = Sql::default();
    let keys: Vec<(Kind, bool)> = query
        .sort
        .iter()
        .map(|key| (sort_kind(key.def, &key.code), key.descending))
        .collect();
    let backwards = query.cursor.as_ref().is_some_and(|c| c.backwards);
    let order = |prefix: &str| {
        let mut order = String::from(" ORDER BY ");
        for (i, (_, descending)) in keys.iter().enumerate() {
            let descending = *descending != backwards;
            order.push_str(&format!(
                "{prefix}k{i}{}, ",
                if descending { " DESC" } else { "" }
            ));
        }
        order.push_str(&format!(
            "{prefix}rid{}",
            if backwards { " DESC" } else { "" }
        ));
        order
    };
    let rid_only_driver = driver.filter(|&d| {
        keys.is_empty()
            && query
                .filters
                .iter()
                .enumerate()
                .all(|(i, f)| i == d || rid_only(f))
    });
    let walked = walk.and_then(|c| match &query.filters[c] {
        Filter::Chain { def, targets } if driver.is_none() => Some((c, *def, targets)),
        _ => None,
    });
    // A search reads the bodies it returns and no others. A page chosen from a set of rids,
    // or by walking the resources in `rid` order, reads each chosen resource's row once, body
    // and all. A page that may sort its candidates chooses them first and only then reads
    // their rows again for the bodies, so that no sort carries a body.
    let deferred =
        walked.is_none() && rid_only_driver.is_none() && (!keys.is_empty() || driver.is_some());
    let chosen = if deferred {
        "r.rid".to_owned()
    } else {
        format!("r.rid, {}", current_columns("r"))
    };
    sql.push("SELECT p.rid, ")
        .push(&current_columns(if deferred { "b" } else { "p" }));
    for i in 0..keys.len() {
        sql.push(&format!(", p.k{i}"));
    }
    sql.push(" FROM (");
    // The rest of a page chosen from a set of rids named `alias.rid` (the sets of the two
    // forms below), found by filter `found_by`: past the cursor, the other filters tested on
    // each, the first `count + 1` in order, then their resources read if still live.
    let rest_of_set = |sql: &mut Sql, alias: &str, found_by: usize| {
        if let Some(cursor) = &query.cursor {
            let past = if backwards { "<" } else { ">" };
            sql.push(&format!(" AND {alias}.rid {past} "))
                .int(cursor.rid);
        }
        for (i, filter) in query.filters.iter().enumerate() {
            if i != found_by {
                let form = if linked.contains(&i) {
                    Form::Linked
                } else {
                    Form::Exists
                };
                sql.push(" AND ");
                filter_condition(sql, alias, &query.types, filter, form);
            }
        }
        sql.push(&order(&format!("{alias}.")));
        sql.push(" LIMIT ").int(i64::from(query.count) + 1);
        sql.push(") d CROSS JOIN resources r WHERE r.rid = d.rid AND r.deleted = FALSE");
        sql.push(&order("d."));
    };
    if let Some((c, def, targets)) = walked {
        // The chain's references are read in `rid` order from one index, each carrying where
        // it leads, and the first of them whose target passes (and whose resource passes the
        // other filters) make the page: no probe of a candidate's own references.
        sql.push(&format!(
            "SELECT {chosen} FROM (SELECT DISTINCT w.rid FROM search_reference w WHERE "
        ));
        type_condition(&mut sql, "w.resource_type", &query.types);
        sql.push(" AND w.param = ").text(def.code);
        sql.push(" AND (");
        target_tests(&mut sql, "w", "wt", targets, linked.contains(&c));
        sql.push(")");
        rest_of_set(&mut sql, "w", c);
    } else if let Some(d) = rid_only_driver {
        // The page is chosen from the driver's set alone, its rids sorted and the other
        // filters tested on them, and only the page's resources are then read: a set of
        // thousands costs one sort of their rids, not thousands of row reads.
        sql.push(&format!(
            "SELECT {chosen} FROM (SELECT DISTINCT s.rid FROM "
        ));
        set_of(&mut sql, &query.types, &query.filters[d]);
        sql.push(" s WHERE 1 = 1");
        rest_of_set(&mut sql, "s", d);
    } else if keys.is_empty() {
        sql.push(&format!("SELECT {chosen} FROM resources r WHERE "));
        matches(&mut sql, query, driver, linked);
        if let Some(cursor) = &query.cursor {
            sql.push(if backwards {
                " AND r.rid < "
            } else {
                " AND r.rid > "
            })
            .int(cursor.rid);
        }
        sql.push(&order("r."));
    } else {
        // Sort keys are computed in a subquery so the keyset condition can name them.
        sql.push(&format!("SELECT * FROM (SELECT {chosen}"));
        for (i, key) in query.sort.iter().enumerate() {
            sql.push(", ");
            sort_expression(&mut sql, key.def, &key.code, key.descending);
            sql.push(&format!(" AS k{i}"));
        }
        sql.push(" FROM resources r WHERE ");
        matches(&mut sql, query, driver, linked);
        sql.push(") m");
        if let Some(cursor) = &query.cursor {
            sql.push(" WHERE ");
            keyset(&mut sql, &keys, cursor, cursor_keys);
        }
        sql.push(&order(""));
    }
    sql.push(" LIMIT ").int(i64::from(query.count) + 1);
    sql.push(") p");
    if deferred {
        sql.push(" JOIN resources b ON b.rid = p.rid");
    }
    sql.push(&order("p."));
    (sql, keys.into_iter().map(|(kind, _)| kind).collect())
}

/// The chain filter a page with no driver can walk by its references rather than by the
/// resources searched (see [`page`]; on PostgreSQL, whose `search_reference_walk` index holds
/// them in that order): a search of one type in `rid` order, each of whose filters tests only
/// a resource's rid, with a chain whose targets are tested on their index rows alone. Each
/// candidate then costs the test of where its reference leads, not a probe for the reference
/// first.
pub fn reference_walk(query: &SearchQuery, driver: Option<usize>) -> Option<usize> {
    if driver.is_some()
        || !query.sort.is_empty()
        || query.types.len() != 1
        || !query.filters.iter().all(rid_only)
    {
        return None;
    }
    query.filters.iter().position(|filter| {
        matches!(filter, Filter::Chain { targets, .. }
            if targets.iter().all(|(_, target)| on_rows_alone(target)))
    })
}

/// Whether the page of `query` walks the resources searched in `rid` order and tests every
/// filter on each ([`page`] with no driver, no chain found once, no `_sort`): one plan serves
/// every value, the type's index read in order with a probe per filter, and each candidate's
/// probes cost the same whatever it is searched for. Not when a filter tests the row's own
/// columns (`_id`, `_lastUpdated`), which an index of the row may find quicker for some values,
/// nor without a filter: with no probe to weigh, a plan for a page of unknown size may read
/// the whole table and sort it.
pub fn walks_resources(query: &SearchQuery, driver: Option<usize>, linked: &[usize]) -> bool {
    driver.is_none()
        && !query.filters.is_empty()
        && linked.is_empty()
        && query.sort.is_empty()
        && !query.filters.iter().any(reads_the_row)
}

/// Whether a search's matches can be read in `rid` order straight from one index: a search of
/// one type with no `_sort`, by one value of one parameter that its index holds in `rid` order
/// within that value — a token with its system (`identifier=system|value`,
/// `code=http://loinc.org|8310-5`), a reference to one resource by type and id
/// (`subject=Patient/1`), a URI. The index is searched by every column before `rid` with an
/// equality, so a page is its first rows past the cursor, however many resources match: nothing
/// needs counting to choose how to find it.
pub fn in_rid_order(query: &SearchQuery) -> bool {
    if !query.sort.is_empty() || query.types.len() != 1 {
        return false;
    }
    let [
        Filter::Param {
            def,
            modifier,
            values,
        },
    ] = query.filters.as_slice()
    else {
        return false;
    };
    let [value] = values.as_slice() else {
        return false;
    };
    match (def.kind, modifier, value) {
        (
            SearchParamType::Token,
            Modifier::None,
            SearchValue::Token {
                system: Some(system),
                code: Some(_),
            },
        ) => !system.is_empty(),
        (
            SearchParamType::Reference,
            Modifier::None | Modifier::Type(_),
            SearchValue::Reference {
                target_type: Some(_),
                id: Some(_),
                url: None,
            },
        ) => true,
        (SearchParamType::Uri, Modifier::None, SearchValue::Uri(_)) => true,
        _ => false,
    }
}

/// The filter whose values order a search's pages, when that is not `rid`: a search by one
/// string, starts-with (`Patient?name=smi`, the patient picker), of one type, with nothing
/// else to test and no `_sort`. Its matches come in the order of the value each matched by,
/// its least matching one, then of `rid`, read straight from the value index: a page costs
/// its own rows however many names start so. In `rid` order every match would be read and
/// sorted first. The order follows from the query alone, so every page of it has the same.
pub fn value_order(query: &SearchQuery) -> Option<(&'static SearchParameterDef, &str)> {
    if !query.sort.is_empty() || query.types.len() != 1 {
        return None;
    }
    match query.filters.as_slice() {
        [
            Filter::Param {
                def,
                modifier: Modifier::None,
                values,
            },
        ] if def.kind == SearchParamType::String => match values.as_slice() {
            [SearchValue::String(text)] => Some((*def, text.as_str())),
            _ => None,
        },
        _ => None,
    }
}

/// The query of one page in [`value_order`] (`count + 1` rows, [`ROW_COLUMNS`]). Each
/// resource is taken at its least matching row, the one no other of its rows in the range
/// precedes (one probe of the `(rid, param, normalized)` index), and the range is read from
/// the cursor's value on.
pub fn value_page(
    query: &SearchQuery,
    def: &SearchParameterDef,
    text: &str,
    cursor_key: Option<&str>,
) -> Sql {
    let mut sql = Sql::default();
    let backwards = query.cursor.as_ref().is_some_and(|c| c.backwards);
    let direction = if backwards { " DESC" } else { "" };
    let first = text;
    let last = format!("{text}{ABOVE_ALL}");
    sql.push(&format!(
        "SELECT p.rid, {} FROM (SELECT d.rid, {}, d.k0 FROM (SELECT x.rid, \
             x.normalized AS k0 FROM search_string x WHERE x.param = ",
        current_columns("p"),
        current_columns("r")
    ))
    .text(def.code)
    .push(" AND ");
    type_condition(&mut sql, "x.resource_type", &query.types);
    // The range's bound on the cursor's side is the cursor's value, when it lies inside:
    // one bound a side, so that the index is entered where the page starts.
    match (&query.cursor, cursor_key) {
        (Some(cursor), Some(key)) if !cursor.backwards => {
            if key >= first {
                sql.push(" AND x.normalized >= ").text(key);
            } else {
                sql.push(" AND x.normalized >= ").text(first);
            }
            sql.push(" AND x.normalized < ").text(&last);
            sql.push(" AND (x.normalized > ")
                .text(key)
                .push(" OR x.rid > ")
                .int(cursor.rid)
                .push(")");
        }
        (Some(cursor), Some(key)) => {
            sql.push(" AND x.normalized >= ").text(first);
            if key < last.as_str() {
                sql.push(" AND x.normalized <= ").text(key);
            } else {
                sql.push(" AND x.normalized < ").text(&last);
            }
            sql.push(" AND (x.normalized < ")
                .text(key)
                .push(" OR x.rid < ")
                .int(cursor.rid)
                .push(")");
        }
        _ => {
            sql.push(" AND x.normalized >= ").text(first);
            sql.push(" AND x.normalized < ").text(&last);
        }
    }
    sql.push(" AND NOT EXISTS (SELECT 1 FROM search_string y WHERE y.rid = x.rid AND y.param = ")
        .text(def.code)
        .push(" AND y.normalized >= ")
        .text(first)
        .push(" AND y.normalized < x.normalized)");
    // Two rows of a resource may hold the same value (a name's family and given): one is
    // taken.
    sql.push(&format!(
        " GROUP BY x.normalized, x.rid ORDER BY x.normalized{direction}, x.rid{direction} LIMIT "
    ))
    .int(i64::from(query.count) + 1);
    sql.push(") d CROSS JOIN resources r WHERE r.rid = d.rid AND r.deleted = FALSE) p");
    sql.push(&format!(" ORDER BY p.k0{direction}, p.rid{direction}"));
    sql
}

/// Whether `value` lies in the range a starts-with search for `text` reads.
pub fn in_value_range(value: &str, text: &str) -> bool {
    value >= text && value < format!("{text}{ABOVE_ALL}").as_str()
}

/// The least value of `def` by which the resource `rid` matches a starts-with search for
/// `text` (NULL when none does), while its current version is `version` (if given).
pub fn value_key(def: &SearchParameterDef, text: &str, rid: i64, version: Option<i64>) -> Sql {
    let mut sql = Sql::default();
    sql.push("SELECT MIN(x.normalized) FROM search_string x WHERE x.rid = ")
        .int(rid);
    if let Some(version) = version {
        sql.push(" AND EXISTS (SELECT 1 FROM resources r WHERE r.rid = ")
            .int(rid)
            .push(" AND r.version_id = ")
            .int(version)
            .push(")");
    }
    sql.push(" AND x.param = ").text(def.code).push(" AND ");
    value_condition(
        &mut sql,
        def,
        Modifier::None,
        &SearchValue::String(text.to_owned()),
    );
    sql
}

/// The type and body of the version `version` of the resource `rid`, or without one of each
/// version that has a body, newest first (the newest hundred).
pub fn versions_of(rid: i64, version: Option<i64>) -> Sql {
    let mut sql = Sql::default();
    sql.push(
        "SELECT v.resource_type, v.body FROM resources r JOIN resource_versions v \
         ON v.resource_type = r.resource_type AND v.id = r.id WHERE r.rid = ",
    )
    .int(rid);
    if let Some(version) = version {
        sql.push(" AND v.version_id = ").int(version);
    }
    sql.push(" AND v.body IS NOT NULL ORDER BY v.version_id DESC LIMIT 100");
    sql
}

/// How many resources match, starting from the filter `driver`.
pub fn count(query: &SearchQuery, driver: Option<usize>) -> Sql {
    let mut sql = Sql::default();
    match driver {
        // Every other test names only the resource's rid: count the set's resources without
        // visiting them.
        Some(d)
            if query
                .filters
                .iter()
                .enumerate()
                .all(|(i, f)| i == d || rid_only(f)) =>
        {
            // `COUNT(DISTINCT …)` sorts the set where a `DISTINCT` subquery hashes it, which on
            // PostgreSQL costs twice as much for a set of thousands (measured at 100k patients,
            // 7,424 matches of one family name: 1.95 ms against 0.95 ms).
            sql.push("SELECT COUNT(DISTINCT r.rid) FROM ");
            set_of(&mut sql, &query.types, &query.filters[d]);
            sql.push(" r");
            let mut first = true;
            for (i, filter) in query.filters.iter().enumerate() {
                if i != d {
                    sql.push(if first { " WHERE " } else { " AND " });
                    first = false;
                    filter_condition(&mut sql, "r", &query.types, filter, Form::Exists);
                }
            }
        }
        _ => {
            sql.push("SELECT COUNT(*) FROM resources r WHERE ");
            matches(&mut sql, query, driver, &[]);
        }
    }
    sql
}

/// Whether `filter`'s test names only the resource's `rid`, so that it can test the rows of a
/// set, which carry nothing else.
fn rid_only(filter: &Filter) -> bool {
    match filter {
        Filter::Param { .. } | Filter::Missing { .. } | Filter::Chain { .. } => true,
        Filter::Any(groups) => groups.iter().flatten().all(rid_only),
        Filter::Id(_) | Filter::LastUpdated(_) | Filter::Has { .. } => false,
    }
}

/// `(k0, k1, …, rid) > (v0, v1, …, rid)` with each key's direction, as an OR of prefixes.
fn keyset(sql: &mut Sql, keys: &[(Kind, bool)], cursor: &Cursor, values: &[Cell]) {
    sql.push("(");
    for i in 0..=keys.len() {
        if i > 0 {
            sql.push(" OR ");
        }
        sql.push("(");
        for j in 0..i {
            sql.push(&format!("k{j} = "));
            sql.bind(values.get(j).cloned().unwrap_or(Cell::Null));
            sql.push(" AND ");
        }
        if i == keys.len() {
            sql.push(if cursor.backwards { "rid < " } else { "rid > " })
                .int(cursor.rid);
        } else {
            let (_, descending) = &keys[i];
            let greater = *descending == cursor.backwards;
            sql.push(&format!("k{i} {} ", if greater { ">" } else { "<" }));
            sql.bind(values.get(i).cloned().unwrap_or(Cell::Null));
        }
        sql.push(")");
    }
    sql.push(")");
}

/// The kind of a sort key's values.
fn sort_kind(def: Option<&SearchParameterDef>, code: &str) -> Kind {
    match def.map(|d| d.kind) {
        None if code == "_id" => Kind::Text,
        None => Kind::Int,
        Some(SearchParamType::Date) => Kind::Int,
        Some(SearchParamType::Number | SearchParamType::Quantity) => Kind::Real,
        Some(_) => Kind::Text,
    }
}

/// A sort key's expression on `r`. A resource without a value sorts last either way.
fn sort_expression(sql: &mut Sql, def: Option<&SearchParameterDef>, code: &str, descending: bool) {
    let Some(def) = def else {
        sql.push(if code == "_id" {
            "r.id"
        } else {
            "r.last_updated"
        });
        return;
    };
    let aggregate = if descending { "MAX" } else { "MIN" };
    let (table, column, kind) = match def.kind {
        SearchParamType::String => ("search_string", "normalized", Kind::Text),
        SearchParamType::Date => (
            "search_date",
            if descending { "high" } else { "low" },
            Kind::Int,
        ),
        SearchParamType::Token => ("search_token", "code", Kind::Text),
        SearchParamType::Number => ("search_number", "low", Kind::Real),
        SearchParamType::Quantity => ("search_quantity", "low", Kind::Real),
        SearchParamType::Uri => ("search_uri", "uri", Kind::Text),
        SearchParamType::Reference | SearchParamType::Special => {
            ("search_reference", "target_id", Kind::Text)
        }
    };
    sql.push(&format!(
        "COALESCE((SELECT {aggregate}(x.{column}) FROM {table} x WHERE x.rid = r.rid AND x.param = "
    ));
    sql.text(def.code).push("), ");
    match (kind, descending) {
        (Kind::Int, false) => sql.int(i64::MAX),
        (Kind::Int, true) => sql.int(i64::MIN),
        (Kind::Real, false) => sql.real(f64::MAX),
        (Kind::Real, true) => sql.real(f64::MIN),
        (_, false) => sql.text(&ABOVE_ALL.to_string()),
        (_, true) => sql.text(""),
    };
    sql.push(")");
}

/// The condition every match meets: live, of a searched type, passing every filter. The
/// filter `driver` is the set the query starts from; every other filter is a probe.
fn matches(sql: &mut Sql, query: &SearchQuery, driver: Option<usize>, linked: &[usize]) {
    // `deleted = FALSE`, not `NOT deleted`: an equality the `(type, deleted, rid)` index seeks.
    sql.push("r.deleted = FALSE");
    // A driver's set holds only live resources of the types searched; checked again, the
    // type would make SQLite find each resource through the type's index, not by its key.
    if driver.is_none() {
        sql.push(" AND ");
        type_condition(sql, "r.resource_type", &query.types);
    }
    for (i, filter) in query.filters.iter().enumerate() {
        let form = if Some(i) == driver {
            Form::In
        } else if linked.contains(&i) {
            Form::Linked
        } else {
            Form::Exists
        };
        sql.push(" AND ");
        filter_condition(sql, "r", &query.types, filter, form);
    }
}

/// `column IN (…)`, for the types searched: the first column of every value index.
pub(super) fn type_condition(sql: &mut Sql, column: &str, types: &[ResourceType]) {
    sql.push(&format!("{column} IN ("));
    for (i, rt) in types.iter().enumerate() {
        if i > 0 {
            sql.push(", ");
        }
        sql.text(rt.as_str());
    }
    sql.push(")");
}

fn table_of(kind: SearchParamType) -> &'static str {
    match kind {
        SearchParamType::Token => "search_token",
        SearchParamType::String => "search_string",
        SearchParamType::Date => "search_date",
        SearchParamType::Reference => "search_reference",
        SearchParamType::Number => "search_number",
        SearchParamType::Quantity => "search_quantity",
        SearchParamType::Uri => "search_uri",
        SearchParamType::Special => "search_position",
    }
}

/// The form a filter takes in a query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    /// `r.rid IN (SELECT …)`: the set is computed once from the value index, and the query
    /// can start from it.
    In,
    /// `(SELECT 1 … WHERE x.rid = r.rid … LIMIT 1) IS NOT NULL`: a test of each candidate, one
    /// probe of the `(rid, param)` index, so the database never computes the whole set.
    Exists,
    /// For a chain only: its reference followed from each candidate to the resource referred to,
    /// which must be in the set of resources the chained filter matches, computed once (where
    /// [`Form::Exists`] tests the chained filter on each resource referred to, link by link).
    /// For a chain whose linked resources are few, each test is then two index probes and a
    /// lookup, whatever the chain's depth.
    Linked,
}

/// Whether `filter` can be the set a query starts from: an index narrows it to its matches
/// (a negation, `:missing=true` or a substring match cannot be found from an index).
pub fn can_drive(filter: &Filter) -> bool {
    match filter {
        Filter::Id(_) | Filter::LastUpdated(_) => false,
        Filter::Param { modifier, .. } => !matches!(
            modifier,
            Modifier::Not | Modifier::Contains | Modifier::Text | Modifier::Above
        ),
        Filter::Missing { missing, .. } => !missing,
        Filter::Chain { .. } | Filter::Has { .. } => true,
        // Started from the union of the groups' sets, each found from one of its filters; a
        // group with no such filter (or none at all) holds for too much to be a set.
        Filter::Any(groups) => groups.iter().all(|group| group_driver(group).is_some()),
    }
}

/// The filter of a group of [`Filter::Any`] its set is found from: of those that [`can_drive`],
/// the likeliest to be rare.
fn group_driver(group: &[Filter]) -> Option<usize> {
    (0..group.len())
        .filter(|&i| can_drive(&group[i]))
        .min_by_key(|&i| likely_size(&group[i]))
}

/// How likely a filter is to match few resources, the likeliest first: a token, reference or
/// URI (an identifier, a patient) before a string prefix or a number, before a date range or
/// a presence, before a chain or `_has`, whose counting is dearest. An OR of groups is as
/// likely as its least likely group.
pub fn likely_size(filter: &Filter) -> u8 {
    match filter {
        Filter::Param { def, modifier, .. } => match (def.kind, modifier) {
            (SearchParamType::String, Modifier::Exact) => 0,
            (SearchParamType::Token | SearchParamType::Reference | SearchParamType::Uri, _) => 0,
            (SearchParamType::Date, _) => 2,
            _ => 1,
        },
        Filter::Missing { .. } => 2,
        Filter::Any(groups) => groups
            .iter()
            .map(|group| group.iter().map(likely_size).min().unwrap_or(3))
            .max()
            .unwrap_or(0),
        _ => 3,
    }
}

/// Whether counting or following `filter`'s matches costs as a chain's do (a join per match,
/// not an index entry): a chain, a `_has`, or an OR with such a group.
pub fn follows_references(filter: &Filter) -> bool {
    match filter {
        Filter::Chain { .. } | Filter::Has { .. } => true,
        Filter::Any(groups) => groups
            .iter()
            .any(|group| group_driver(group).is_none_or(|d| follows_references(&group[d]))),
        _ => false,
    }
}

/// How many resources each of the query's filters `counted` matches on its own, in one row:
/// for `(i, cap)`, filter `i` counted no further than `cap`, nor than the least count of the
/// filters before it, which would only show it is not rarer. Cheap, as each count stops there
/// (after an identifier's one match, a date range costs one index entry to rule out).
pub fn estimates(query: &SearchQuery, counted: &[(usize, i64)]) -> Sql {
    let mut sql = Sql::default();
    if let [(i, cap)] = counted {
        sql.push("SELECT ");
        count_limited(&mut sql, &query.types, &query.filters[*i], &|sql| {
            sql.int(*cap);
        });
        return sql;
    }
    sql.push("WITH ");
    for (j, (i, cap)) in counted.iter().enumerate() {
        if j > 0 {
            sql.push(", ");
        }
        sql.push(&format!("e{j} AS MATERIALIZED (SELECT "));
        count_limited(&mut sql, &query.types, &query.filters[*i], &|sql| {
            sql.push("(SELECT MIN(v) FROM (SELECT ")
                .int(*cap)
                .push(" AS v");
            for k in 0..j {
                sql.push(&format!(" UNION ALL SELECT n FROM e{k}"));
            }
            sql.push(") z)");
        });
        sql.push(" AS n)");
    }
    sql.push(" SELECT ");
    for j in 0..counted.len() {
        if j > 0 {
            sql.push(", ");
        }
        sql.push(&format!("e{j}.n"));
    }
    sql.push(" FROM ");
    for j in 0..counted.len() {
        if j > 0 {
            sql.push(" CROSS JOIN ");
        }
        sql.push(&format!("e{j}"));
    }
    sql
}

/// `(SELECT COUNT(*) …)`: how many of `types` match `filter`, counted up to `limit`. A filter of
/// values joined on one row ([`SearchValue::AllOf`]) is counted by each value on its own, and
/// is as rare as the rarest: a count that stops at a limit must read from one bound's index,
/// and the database, blind to how the bounds of a range go together, may choose the bound
/// whose index holds the matches last (a month of appointments read from the first
/// appointment ever, past a year of others).
fn count_limited(sql: &mut Sql, types: &[ResourceType], filter: &Filter, limit: &dyn Fn(&mut Sql)) {
    let one = |sql: &mut Sql, filter: &Filter| {
        sql.push("(SELECT COUNT(*) FROM (SELECT 1 FROM ");
        set_of(sql, types, filter);
        sql.push(" s LIMIT ");
        limit(sql);
        sql.push(") c)");
    };
    let Filter::Param {
        def,
        modifier,
        values,
    } = filter
    else {
        return one(sql, filter);
    };
    let [SearchValue::AllOf(parts)] = values.as_slice() else {
        return one(sql, filter);
    };
    sql.push("(SELECT MIN(n) FROM (");
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            sql.push(" UNION ALL ");
        }
        sql.push("SELECT ");
        let part = Filter::Param {
            def,
            modifier: *modifier,
            values: vec![part.clone()],
        };
        one(sql, &part);
        sql.push(" AS n");
    }
    sql.push(") m)");
}

/// How many of the resources a chain's link refers to (the patients of
/// `Encounter?subject:Patient.name=…`) its estimate follows to the resources that refer to them.
pub const CHAIN_SAMPLE: i64 = 32;

/// How many of the resources the inner link of a two-level chain refers to (the practitioners
/// of `Encounter?subject:Patient.general-practitioner:Practitioner.name=…`) its estimate
/// follows to the resources of the outer link that refer to them.
pub const INNER_SAMPLE: i64 = 4;

/// The counts that estimate a chain filter `i` cheaply, or `None` when `i` is not a chain: for
/// each target type of its reference, three columns — how many resources of that type match
/// the chained filter (up to `links`; see below for a chained filter that is a chain itself),
/// how many of the first [`CHAIN_SAMPLE`] of them there are, and how many resources searched
/// refer to those (up to `limit`).
///
/// Counting a chain's own matches, as [`estimate`] does, costs two lookups for each one
/// counted (the linked resource's id, then the references to it), thousands for a common
/// name. The linked resources, found from the chained filter's index, cost next to nothing to
/// count, and how many resources refer to each of a few of them says how many refer to them all.
///
/// When the chained filter is a chain itself, its matches (the patients whose practitioner is
/// named so) would cost as much to count, so the first column is estimated the same way, one
/// link further in: the inner link's matches (the practitioners, counted), times how many of
/// the outer link's resources refer to each of the first [`INNER_SAMPLE`] of them. It is exact
/// when the sample held every inner match; estimated, it only chooses the plan, as the other
/// two columns, always counted, decide whether the chain can match nothing.
pub fn chain_estimate(
    query: &SearchQuery,
    i: usize,
    limit: i64,
    links: i64,
) -> Option<(Sql, usize)> {
    let Filter::Chain { def, targets } = &query.filters[i] else {
        return None;
    };
    let mut sql = Sql::default();
    sql.push("SELECT ");
    for (t, (target, filter)) in targets.iter().enumerate() {
        if t > 0 {
            sql.push(", ");
        }
        match filter {
            Filter::Chain {
                def: inner_def,
                targets: inner,
            } => {
                sql.push("(SELECT 0");
                for (inner_target, inner_filter) in inner {
                    // The inner matches `p`, and the references `r` to the first `k` of them
                    // (`k` is INNER_SAMPLE): `r` when those were all (`p < k`), else `p · r / k`
                    // rounded up.
                    sql.push(" + (SELECT CASE WHEN e.p < ")
                        .int(INNER_SAMPLE)
                        .push(" THEN e.r ELSE (e.p * e.r + ")
                        .int(INNER_SAMPLE - 1)
                        .push(") / ")
                        .int(INNER_SAMPLE)
                        .push(" END FROM (SELECT ");
                    count_first(&mut sql, &[*inner_target], inner_filter, links);
                    sql.push(" AS p, ");
                    count_referring(
                        &mut sql,
                        (*inner_target, inner_filter),
                        INNER_SAMPLE,
                        (&[*target], inner_def.code),
                        links,
                    );
                    sql.push(" AS r) e)");
                }
                sql.push("), ");
            }
            _ => {
                count_first(&mut sql, &[*target], filter, links);
                sql.push(", ");
            }
        }
        count_first(&mut sql, &[*target], filter, CHAIN_SAMPLE);
        sql.push(", ");
        count_referring(
            &mut sql,
            (*target, filter),
            CHAIN_SAMPLE,
            (&query.types, def.code),
            limit,
        );
    }
    Some((sql, targets.len()))
}

/// `(SELECT COUNT(*) …)`: how many of `types` match `filter`, counted up to `cap`.
fn count_first(sql: &mut Sql, types: &[ResourceType], filter: &Filter, cap: i64) {
    sql.push("(SELECT COUNT(*) FROM (SELECT 1 FROM ");
    set_of(sql, types, filter);
    sql.push(" m LIMIT ").int(cap).push(") c)");
}

/// `(SELECT COUNT(*) …)`: how many references through `code` from resources of `types`
/// lead to the first `sample` resources of `target` matching `filter`, counted up to `cap`.
fn count_referring(
    sql: &mut Sql,
    (target, filter): (ResourceType, &Filter),
    sample: i64,
    (types, code): (&[ResourceType], &str),
    cap: i64,
) {
    sql.push("(SELECT COUNT(*) FROM (SELECT 1 FROM (SELECT m.rid FROM ");
    set_of(sql, &[target], filter);
    sql.push(" m LIMIT ").int(sample).push(") s");
    referring_rows(sql, "s", types, code);
    sql.push(" LIMIT ").int(cap).push(") c)");
}

/// A condition on the resource `alias` (a row of `resources`) of one of `types`, in the form
/// `form` ([`Form::In`] only for a filter that [`can_drive`]).
fn filter_condition(
    sql: &mut Sql,
    alias: &str,
    types: &[ResourceType],
    filter: &Filter,
    form: Form,
) {
    condition(sql, alias, &format!("{alias}.rid"), types, filter, form);
}

/// [`filter_condition`] on the resource whose rid is `rid`. Its row, `alias`, is read only by a
/// filter that [`reads_the_row`]; for one that does not, `alias` need not exist, and only names
/// what the condition joins.
fn condition(
    sql: &mut Sql,
    alias: &str,
    rid: &str,
    types: &[ResourceType],
    filter: &Filter,
    form: Form,
) {
    match filter {
        Filter::Id(ids) => {
            sql.push(&format!("{alias}.id IN ("));
            for (i, id) in ids.iter().enumerate() {
                if i > 0 {
                    sql.push(", ");
                }
                sql.text(id);
            }
            sql.push(")");
        }
        Filter::LastUpdated(values) => {
            sql.push("(");
            for (i, value) in values.iter().enumerate() {
                if i > 0 {
                    sql.push(" OR ");
                }
                if let SearchValue::Date(prefix, range) = value {
                    let column = format!("{alias}.last_updated");
                    date_condition(sql, &column, &column, *prefix, range.low, range.high);
                }
            }
            sql.push(")");
        }
        _ if form == Form::In => {
            sql.push(&format!("{rid} IN "));
            set_of(sql, types, filter);
        }
        Filter::Any(groups) => {
            sql.push("(");
            if groups.is_empty() {
                sql.push("1 = 0");
            }
            for (i, group) in groups.iter().enumerate() {
                if i > 0 {
                    sql.push(" OR ");
                }
                sql.push("(");
                if group.is_empty() {
                    sql.push("1 = 1");
                }
                for (j, filter) in group.iter().enumerate() {
                    if j > 0 {
                        sql.push(" AND ");
                    }
                    condition(sql, alias, rid, types, filter, Form::Exists);
                }
                sql.push(")");
            }
            sql.push(")");
        }
        Filter::Missing { def, missing } => {
            rows_probe(sql, rid, table_of(def.kind), def.code);
            sql.push(probe_end(*missing));
        }
        Filter::Param { def, modifier, .. } => {
            let (table, param) = param_rows(def, *modifier);
            rows_probe(sql, rid, table, &param);
            param_values(sql, filter);
            sql.push(probe_end(*modifier == Modifier::Not));
        }
        Filter::Chain { def, targets } if form == Form::Linked => {
            let link = references_of(sql, alias, rid, def.code, None);
            target_tests(sql, &link, "", targets, true);
            sql.push(")").push(PER_ROW_PROBE);
        }
        Filter::Chain { def, targets } => {
            // Followed from the resource: its reference, and the test of the resource referred
            // to, a few index probes per candidate and no set built (see PER_ROW_PROBE for its
            // form). That resource's row is read only when its test needs more than its rid
            // (only a live resource has index rows).
            let inner = format!("{alias}c");
            let rows_alone = targets.iter().all(|(_, filter)| on_rows_alone(filter));
            let joined = (!rows_alone).then_some(inner.as_str());
            let link = references_of(sql, alias, rid, def.code, joined);
            target_tests(sql, &link, &inner, targets, false);
            sql.push(")").push(PER_ROW_PROBE);
        }
        Filter::Has {
            source,
            param,
            filter,
        } => {
            // Followed from the resource: the resources referring to it, and their test. A
            // reference row is a live resource's (only a live resource has index rows), so a
            // referring resource's row is read only when its test needs more than its rid.
            let inner = format!("{alias}h");
            sql.push("(SELECT 1 FROM search_reference y");
            if reads_the_row(filter) {
                sql.push(&format!(" JOIN resources {inner} ON {inner}.rid = y.rid"));
            }
            sql.push(&format!(" WHERE y.target_rid = {rid} AND y.param = "));
            sql.text(param.code);
            sql.push(" AND y.resource_type = ").text(source.as_str());
            sql.push(" AND ");
            condition(sql, &inner, "y.rid", &[*source], filter, Form::Exists);
            sql.push(PER_ROW_PROBE);
        }
    }
}

/// The tests of where the reference `link` (a row of `search_reference`) leads, one for each
/// of a chain's `targets`, ORed: with `linked`, whether it leads into the set of the target's
/// matches (found once); else the target's own test, on its rid (`{link}.target_rid`) and, if
/// the test reads it, its row `inner`, joined by the caller.
fn target_tests(
    sql: &mut Sql,
    link: &str,
    inner: &str,
    targets: &[(ResourceType, Filter)],
    linked: bool,
) {
    for (i, (target, filter)) in targets.iter().enumerate() {
        if i > 0 {
            sql.push(" OR ");
        }
        sql.push(&format!("({link}.target_type = "))
            .text(target.as_str());
        if linked {
            // The linked resources are live: where a reference leads is all there is to test.
            // Inside a function the set is a subquery of its own, which both databases compute
            // once and look each candidate up in (PostgreSQL's hashed SubPlan, SQLite's list
            // subquery); a plain `IN` PostgreSQL joins again per candidate.
            sql.push(&format!(" AND COALESCE({link}.target_rid IN "));
            set_of(sql, &[*target], filter);
            sql.push(", FALSE))");
        } else {
            sql.push(" AND ");
            if !needs_its_rows(filter) {
                sql.push(&format!("{inner}.deleted = FALSE AND "));
            }
            let target_rid = format!("{link}.target_rid");
            condition(sql, inner, &target_rid, &[*target], filter, Form::Exists);
            sql.push(")");
        }
    }
}

/// Closes a probe, opened as `(SELECT 1 FROM …`: a scalar subquery rather than `EXISTS`,
/// because PostgreSQL turns an `EXISTS` into a join that it may plan inside out — hashing every
/// row of a month's dates, or following a chain from its innermost link outward, to build the
/// whole set of matches before the first page — whenever its row estimates are low, which for
/// chained references they always are. A scalar subquery with a `LIMIT` is never flattened:
/// both backends test it row by row, as a probe is meant to be tested.
const PER_ROW_PROBE: &str = " LIMIT 1) IS NOT NULL";

/// Whether `filter` tests a resource by its index rows alone and holds only for a live one:
/// its test needs the resource's rid, not its row.
fn on_rows_alone(filter: &Filter) -> bool {
    needs_its_rows(filter) && !reads_the_row(filter)
}

/// Whether `filter` tests a column of the resource's row (its id, when it was last updated).
fn reads_the_row(filter: &Filter) -> bool {
    match filter {
        Filter::Id(_) | Filter::LastUpdated(_) => true,
        Filter::Any(groups) => groups.iter().flatten().any(reads_the_row),
        Filter::Param { .. }
        | Filter::Missing { .. }
        | Filter::Chain { .. }
        | Filter::Has { .. } => false,
    }
}

/// Whether `filter` holds only for a resource with index rows of its own, which only a live
/// resource has; for such a filter a resource need not be checked for deletion.
fn needs_its_rows(filter: &Filter) -> bool {
    match filter {
        Filter::Param { modifier, .. } => *modifier != Modifier::Not,
        Filter::Missing { missing, .. } => !missing,
        Filter::Chain { .. } => true,
        Filter::Any(groups) => groups.iter().all(|group| group.iter().any(needs_its_rows)),
        Filter::Id(_) | Filter::LastUpdated(_) | Filter::Has { .. } => false,
    }
}

/// The index table and `param` of a parameter's rows under `modifier`.
fn param_rows(def: &SearchParameterDef, modifier: Modifier) -> (&'static str, String) {
    match (def.kind, modifier) {
        (SearchParamType::Token, Modifier::OfType) => {
            ("search_token", format!("{}:of-type", def.code))
        }
        (SearchParamType::Reference, Modifier::Identifier) => {
            ("search_token", format!("{}:identifier", def.code))
        }
        (kind, _) => (table_of(kind), def.code.to_owned()),
    }
}

/// ` AND (value OR value …)` on the index row `x`, for a [`Filter::Param`].
fn param_values(sql: &mut Sql, filter: &Filter) {
    if let Filter::Param {
        def,
        modifier,
        values,
    } = filter
    {
        sql.push(" AND (");
        for (i, value) in values.iter().enumerate() {
            if i > 0 {
                sql.push(" OR ");
            }
            value_condition(sql, def, *modifier, value);
        }
        sql.push(")");
    }
}

/// `(SELECT rid …)`: the live resources of `types` that `filter` matches. Sets are written
/// as joins from the innermost value outwards, which the database streams: an estimate that
/// stops counting at its cap stops the whole chain there too.
fn set_of(sql: &mut Sql, types: &[ResourceType], filter: &Filter) {
    match filter {
        Filter::Param { def, modifier, .. } if can_drive(filter) => {
            let (table, param) = param_rows(def, *modifier);
            rows_set(sql, types, table, &param);
            param_values(sql, filter);
            sql.push(")");
        }
        Filter::Missing {
            def,
            missing: false,
        } => {
            rows_set(sql, types, table_of(def.kind), def.code);
            sql.push(")");
        }
        Filter::Chain { def, targets } => {
            sql.push("(");
            for (i, (target, filter)) in targets.iter().enumerate() {
                if i > 0 {
                    sql.push(" UNION ALL ");
                }
                sql.push("SELECT x.rid FROM ");
                set_of(sql, &[*target], filter);
                sql.push(" s");
                referring_rows(sql, "s", types, def.code);
            }
            sql.push(")");
        }
        Filter::Has {
            source,
            param,
            filter,
        } => {
            sql.push("(SELECT t.rid FROM ");
            set_of(sql, &[*source], filter);
            sql.push(
                " s CROSS JOIN search_reference y CROSS JOIN resources t \
                 WHERE y.rid = s.rid AND y.param = ",
            )
            .text(param.code);
            sql.push(" AND ");
            type_condition(sql, "y.target_type", types);
            sql.push(" AND t.rid = y.target_rid AND t.deleted = FALSE)");
        }
        Filter::Any(groups) if can_drive(filter) => {
            // The union of the groups' sets (a resource may be in several: every use of a set
            // takes each rid once). A group is found from one of its filters, and its other
            // filters test each resource found.
            sql.push("(");
            if groups.is_empty() {
                sql.push("SELECT e.rid FROM resources e WHERE 1 = 0");
            }
            let driven = groups
                .iter()
                .filter_map(|group| group_driver(group).map(|d| (group, d)));
            for (i, (group, d)) in driven.enumerate() {
                if i > 0 {
                    sql.push(" UNION ALL ");
                }
                sql.push("SELECT g.rid FROM ");
                set_of(sql, types, &group[d]);
                sql.push(" g");
                if group.len() > 1 {
                    sql.push(" CROSS JOIN resources e WHERE e.rid = g.rid");
                    for (j, filter) in group.iter().enumerate() {
                        if j != d {
                            sql.push(" AND ");
                            filter_condition(sql, "e", types, filter, Form::Exists);
                        }
                    }
                }
            }
            sql.push(")");
        }
        // No index finds these: the type is walked, each resource tested.
        _ => {
            sql.push("(SELECT e.rid FROM resources e WHERE ");
            type_condition(sql, "e.resource_type", types);
            sql.push(" AND e.deleted = FALSE AND ");
            filter_condition(sql, "e", types, filter, Form::Exists);
            sql.push(")");
        }
    }
}

/// `(SELECT x.rid FROM table x WHERE x.param = … AND x.resource_type IN (…)`: the rows of
/// parameter `param` of `types`, which the value indexes (type, parameter, value…) find; the
/// caller adds conditions on the value and closes the parenthesis.
fn rows_set(sql: &mut Sql, types: &[ResourceType], table: &str, param: &str) {
    sql.push(&format!("(SELECT x.rid FROM {table} x WHERE x.param = "));
    sql.text(param);
    sql.push(" AND ");
    type_condition(sql, "x.resource_type", types);
}

/// `(SELECT 1 FROM table x WHERE x.rid = rid AND x.param = …`: the rows of parameter `param`
/// of the resource whose rid is `rid`. It names no type, so only the `(rid, param, …)` index
/// can serve it: one probe. The caller adds conditions and closes it with [`probe_end`].
fn rows_probe(sql: &mut Sql, rid: &str, table: &str, param: &str) {
    sql.push(&format!(
        "(SELECT 1 FROM {table} x WHERE x.rid = {rid} AND x.param = "
    ));
    sql.text(param);
}

/// Closes a probe: it holds when a row exists, or with `negate` when none does.
fn probe_end(negate: bool) -> &'static str {
    if negate {
        " LIMIT 1) IS NULL"
    } else {
        PER_ROW_PROBE
    }
}

/// A condition on the index row `x` for one value.
fn value_condition(
    sql: &mut Sql,
    def: &SearchParameterDef,
    modifier: Modifier,
    value: &SearchValue,
) {
    match value {
        SearchValue::Token { system, code } => {
            sql.push("(");
            match (system.as_deref(), code) {
                (Some(""), Some(code)) => {
                    sql.push("x.system IS NULL AND x.code = ").text(code);
                }
                (Some(system), Some(code)) => {
                    sql.push("x.code = ").text(code);
                    sql.push(" AND x.system = ").text(system);
                }
                (Some(system), None) => {
                    sql.push("x.system = ").text(system);
                }
                (None, Some(code)) => {
                    sql.push("x.code = ").text(code);
                }
                (None, None) => {
                    sql.push("1 = 0");
                }
            }
            sql.push(")");
        }
        SearchValue::String(text) => match modifier {
            Modifier::Exact => {
                // The normalised form follows from the exact one, and is what is indexed.
                sql.push("(x.normalized = ")
                    .text(&super::normalize(text))
                    .push(" AND x.exact = ")
                    .text(super::indexed(text))
                    .push(")");
            }
            Modifier::Contains => {
                let pattern = format!(
                    "%{}%",
                    text.replace('\\', "\\\\")
                        .replace('%', "\\%")
                        .replace('_', "\\_")
                );
                sql.push("x.normalized LIKE ")
                    .text(&pattern)
                    .push(" ESCAPE '\\'");
            }
            Modifier::Text => {
                sql.push("(x.text >= ").text(text);
                sql.push(" AND x.text < ")
                    .text(&format!("{text}{ABOVE_ALL}"));
                sql.push(")");
            }
            _ => {
                sql.push("(x.normalized >= ").text(text);
                sql.push(" AND x.normalized < ")
                    .text(&format!("{text}{ABOVE_ALL}"));
                sql.push(")");
            }
        },
        SearchValue::Date(prefix, range) => {
            date_condition(sql, "x.low", "x.high", *prefix, range.low, range.high);
        }
        SearchValue::Number(prefix, number) => number_condition(sql, *prefix, number),
        SearchValue::AllOf(values) => {
            sql.push("(");
            for (i, value) in values.iter().enumerate() {
                if i > 0 {
                    sql.push(" AND ");
                }
                value_condition(sql, def, modifier, value);
            }
            sql.push(")");
        }
        SearchValue::Quantity {
            prefix,
            number,
            system,
            code,
        } => {
            sql.push("(");
            number_condition(sql, *prefix, number);
            if let Some(system) = system {
                sql.push(" AND x.system = ").text(system);
            }
            if let Some(code) = code {
                sql.push(" AND x.code = ").text(code);
            }
            sql.push(")");
        }
        SearchValue::Reference {
            target_type,
            id,
            url,
        } => {
            sql.push("(");
            match (target_type, id, url) {
                (_, _, Some(url)) => {
                    sql.push("x.url = ").text(url);
                }
                (Some(ty), Some(id), None) => {
                    sql.push("x.target_id = ").text(id);
                    sql.push(" AND x.target_type = ").text(ty.as_str());
                }
                (None, Some(id), None) => {
                    // Index rows always name the type; naming the types the parameter can
                    // refer to lets the index be searched by them.
                    if !def.targets.is_empty() {
                        type_condition(sql, "x.target_type", def.targets);
                        sql.push(" AND ");
                    }
                    sql.push("x.target_id = ").text(id);
                }
                _ => {
                    sql.push("1 = 0");
                }
            }
            sql.push(")");
        }
        SearchValue::Uri(uri) => match modifier {
            Modifier::Below => {
                sql.push("(x.uri >= ").text(uri);
                sql.push(" AND x.uri < ").text(&format!("{uri}{ABOVE_ALL}"));
                sql.push(")");
            }
            Modifier::Above => {
                sql.push("substr(CAST(").text(uri);
                sql.push(" AS TEXT), 1, length(x.uri)) = x.uri");
            }
            _ => {
                sql.push("x.uri = ").text(uri);
            }
        },
        SearchValue::Near {
            latitude,
            longitude,
            km,
        } => {
            // An equirectangular distance: exact enough at the distances a clinic finder
            // asks for, and plain arithmetic on both databases.
            const KM_PER_DEGREE: f64 = 111.195;
            let radius = km / KM_PER_DEGREE;
            let scale = latitude.to_radians().cos();
            sql.push("(x.latitude BETWEEN ").real(latitude - radius);
            sql.push(" AND ").real(latitude + radius);
            sql.push(" AND (x.latitude - ").real(*latitude);
            sql.push(") * (x.latitude - ").real(*latitude);
            sql.push(") + ((x.longitude - ").real(*longitude);
            sql.push(") * ").real(scale);
            sql.push(") * ((x.longitude - ").real(*longitude);
            sql.push(") * ").real(scale);
            sql.push(") <= ").real(radius * radius);
            sql.push(")");
        }
    }
}

/// A date prefix (http://hl7.org/fhir/R4/search.html#prefix) on a target range
/// `[low, high]` against the search range `[search_low, search_high]`.
fn date_condition(
    sql: &mut Sql,
    low: &str,
    high: &str,
    prefix: Prefix,
    search_low: i64,
    search_high: i64,
) {
    // Each condition but `ne` also bounds one column by a range an index can seek
    // (`low ≤ high` always), redundant with the rest but what lets the database start there.
    let within = |sql: &mut Sql| {
        sql.push(&format!("({low} >= ")).int(search_low);
        sql.push(&format!(" AND {low} <= ")).int(search_high);
        sql.push(&format!(" AND {high} <= ")).int(search_high);
        sql.push(")");
    };
    match prefix {
        Prefix::Eq => within(sql),
        Prefix::Ne => {
            sql.push("NOT ");
            within(sql);
        }
        Prefix::Gt => {
            sql.push(&format!("{high} > ")).int(search_high);
        }
        Prefix::Lt => {
            sql.push(&format!("{low} < ")).int(search_low);
        }
        Prefix::Ge => {
            sql.push(&format!("({high} >= ")).int(search_low);
            sql.push(&format!(" AND ({high} > ")).int(search_high);
            sql.push(" OR ");
            within(sql);
            sql.push("))");
        }
        Prefix::Le => {
            sql.push(&format!("({low} <= ")).int(search_high);
            sql.push(&format!(" AND ({low} < ")).int(search_low);
            sql.push(" OR ");
            within(sql);
            sql.push("))");
        }
        Prefix::Sa => {
            sql.push(&format!("{low} > ")).int(search_high);
        }
        Prefix::Eb => {
            sql.push(&format!("{high} < ")).int(search_low);
        }
        Prefix::Ap => {
            // Approximately: the ranges overlap once the search range is widened by a tenth
            // of its distance from now (at least a day).
            let now = crate::store::Micros::now().0;
            let gap = (now - search_low).abs().max((now - search_high).abs()) / 10;
            let slack = gap.max(86_400_000_000);
            sql.push(&format!("({low} <= "))
                .int(search_high.saturating_add(slack));
            sql.push(&format!(" AND {high} >= "))
                .int(search_low.saturating_sub(slack));
            sql.push(")");
        }
    }
}

/// A number prefix on the target range `[x.low, x.high]`; `eq` uses the search value's
/// precision (`5.4` matches 5.35 ≤ v < 5.45), the others its value.
fn number_condition(sql: &mut Sql, prefix: Prefix, number: &SearchNumber) {
    let within = |sql: &mut Sql| {
        sql.push("(x.low >= ").real(number.low);
        sql.push(" AND x.low < ").real(number.high);
        sql.push(" AND x.high < ").real(number.high);
        sql.push(")");
    };
    match prefix {
        Prefix::Eq => within(sql),
        Prefix::Ne => {
            sql.push("NOT ");
            within(sql);
        }
        Prefix::Gt => {
            sql.push("x.high > ").real(number.value);
        }
        Prefix::Lt => {
            sql.push("x.low < ").real(number.value);
        }
        Prefix::Ge => {
            sql.push("x.high >= ").real(number.value);
        }
        Prefix::Le => {
            sql.push("x.low <= ").real(number.value);
        }
        Prefix::Sa => {
            sql.push("x.low > ").real(number.value);
        }
        Prefix::Eb => {
            sql.push("x.high < ").real(number.value);
        }
        Prefix::Ap => {
            let slack = number.value.abs() / 10.0;
            sql.push("(x.low <= ").real(number.value + slack);
            sql.push(" AND x.high >= ").real(number.value - slack);
            sql.push(")");
        }
    }
}

/// The live resources that the resources `rids` refer to (`_include`, and the includes of a
/// compartment's page), through `param` (any when `None`), of the types `targets` (any when
/// empty): one seek per rid in `search_reference_rid`, which carries the rid each reference
/// leads to.
pub fn referenced(rids: &[i64], param: Option<&str>, targets: &[ResourceType]) -> Sql {
    let mut sql = Sql::default();
    sql.push(&format!(
        "SELECT r.rid, {} FROM resources r WHERE r.deleted = FALSE \
         AND r.rid IN (SELECT x.target_rid FROM search_reference x WHERE ",
        current_columns("r")
    ));
    rid_list(&mut sql, "x.rid", rids);
    if let Some(param) = param {
        sql.push(" AND x.param = ").text(param);
    }
    if !targets.is_empty() {
        sql.push(" AND ");
        type_condition(&mut sql, "x.target_type", targets);
    }
    sql.push(") ORDER BY r.rid");
    sql
}

/// The live resources that refer to any of the resources `rids` (`_revinclude`), from `source`
/// through `param` (any of each when `None`): one seek per rid in
/// `search_reference_target_rid`.
pub fn referring(rids: &[i64], source: Option<ResourceType>, param: Option<&str>) -> Sql {
    let mut sql = Sql::default();
    sql.push(&format!(
        "SELECT r.rid, {} FROM resources r WHERE r.deleted = FALSE \
         AND r.rid IN (SELECT x.rid FROM search_reference x WHERE ",
        current_columns("r")
    ));
    rid_list(&mut sql, "x.target_rid", rids);
    if let Some(param) = param {
        sql.push(" AND x.param = ").text(param);
    }
    if let Some(source) = source {
        sql.push(" AND x.resource_type = ").text(source.as_str());
    }
    sql.push(") ORDER BY r.rid");
    sql
}

/// `column IN (rids…)`.
fn rid_list(sql: &mut Sql, column: &str, rids: &[i64]) {
    sql.push(column).push(" IN (");
    for (i, rid) in rids.iter().enumerate() {
        if i > 0 {
            sql.push(", ");
        }
        sql.int(*rid);
    }
    sql.push(")");
}

/// How many live resources of type `rt` there are (one range of the `(type, deleted, rid)`
/// index).
pub fn type_size(rt: ResourceType) -> Sql {
    let mut sql = Sql::default();
    sql.push("SELECT COUNT(*) FROM resources r WHERE r.resource_type = ")
        .text(rt.as_str());
    sql.push(" AND r.deleted = FALSE");
    sql
}

/// `(SELECT 1 FROM search_reference … WHERE … AND (`: the references through `code` of the
/// resource whose rid is `rid`, aliased as the returned name (its own, for the tests of where
/// they lead may nest probes of their own), joined to the resource each leads to as `joined`
/// if given, up to the tests of where they lead, which the caller closes.
fn references_of(
    sql: &mut Sql,
    alias: &str,
    rid: &str,
    code: &str,
    joined: Option<&str>,
) -> String {
    let link = format!("{alias}x");
    sql.push(&format!("(SELECT 1 FROM search_reference {link} "));
    if let Some(joined) = joined {
        sql.push(&format!(
            "JOIN resources {joined} ON {joined}.rid = {link}.target_rid "
        ));
    }
    sql.push(&format!("WHERE {link}.rid = {rid} AND {link}.param = "));
    sql.text(code);
    sql.push(" AND (");
    link
}

/// ` CROSS JOIN search_reference x WHERE …`: the reference rows of resources of `types` that
/// refer through `code` to the resources `set.rid`, found by where they lead.
fn referring_rows(sql: &mut Sql, set: &str, types: &[ResourceType], code: &str) {
    sql.push(&format!(
        " CROSS JOIN search_reference x WHERE x.target_rid = {set}.rid AND x.param = "
    ));
    sql.text(code);
    sql.push(" AND ");
    type_condition(sql, "x.resource_type", types);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::search::query::{self, Limits};

    const BASE: &str = "http://example.org/fhir";

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn search_of(rt: ResourceType, list: &[(&str, &str)]) -> SearchQuery {
        let limits = Limits {
            default_count: 10,
            max_count: 100,
        };
        query::parse(vec![rt], &pairs(list), true, BASE, &limits).expect("the query parses")
    }

    fn observations(list: &[(&str, &str)]) -> SearchQuery {
        search_of(ResourceType::Observation, list)
    }

    fn patients(list: &[(&str, &str)]) -> SearchQuery {
        search_of(ResourceType::Patient, list)
    }

    fn group(list: &[(&str, &str)]) -> Vec<Filter> {
        query::parse_filters(&[ResourceType::Observation], &pairs(list), BASE)
            .expect("the filters parse")
    }

    /// "Patient 1's Observations": by subject, or by performer.
    fn compartment_of_patient_1() -> Vec<Vec<Filter>> {
        vec![
            group(&[("subject", "Patient/1")]),
            group(&[("performer", "Patient/1")]),
        ]
    }

    /// `(param, patient id)` pairs of one Observation's references.
    type References<'a> = &'a [(&'a str, &'a str)];

    /// An in-memory database with the SQLite schema and six Observations (rids 1–6):
    /// 1 subject Patient/1, final; 2 performer Patient/1, preliminary; 3 subject Patient/2,
    /// final; 4 subject and performer Patient/1, final; 5 subject Patient/1, deleted; 6 no
    /// references, final. Patients 1 (Alice, rid 11) and 2 (Bob, rid 12).
    fn database() -> rusqlite::Connection {
        let connection = rusqlite::Connection::open_in_memory().expect("an in-memory database");
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/sqlite");
        let mut migrations: Vec<_> = std::fs::read_dir(dir)
            .expect("the SQLite migrations")
            .map(|entry| entry.expect("a migration").path())
            .collect();
        migrations.sort();
        for path in migrations {
            let text = std::fs::read_to_string(&path).expect("a migration");
            connection.execute_batch(&text).expect("the migration runs");
        }
        let rows: [(References<'_>, &str, bool); 6] = [
            (&[("subject", "1")], "final", false),
            (&[("performer", "1")], "preliminary", false),
            (&[("subject", "2")], "final", false),
            (&[("subject", "1"), ("performer", "1")], "final", false),
            (&[("subject", "1")], "final", true),
            (&[], "final", false),
        ];
        for (n, (references, status, deleted)) in rows.into_iter().enumerate() {
            let rid = i64::try_from(n).expect("a small number") + 1;
            let id = format!("o{rid}");
            connection
                .execute(
                    "INSERT INTO resource_versions \
                     (seq, resource_type, id, version_id, last_updated, method, body) \
                     VALUES (?1, 'Observation', ?2, 1, 0, 'POST', '{}')",
                    (rid, &id),
                )
                .expect("a version");
            connection
                .execute(
                    "INSERT INTO resources \
                     (rid, resource_type, id, version_id, last_updated, deleted, seq, method, body) \
                     VALUES (?1, 'Observation', ?2, 1, 0, ?3, ?1, 'POST', '{}')",
                    (rid, &id, deleted),
                )
                .expect("a resource");
            if deleted {
                continue;
            }
            for (param, patient) in references {
                connection
                    .execute(
                        "INSERT INTO search_reference \
                         (rid, resource_type, param, target_type, target_id) \
                         VALUES (?1, 'Observation', ?2, 'Patient', ?3)",
                        (rid, param, patient),
                    )
                    .expect("a reference row");
            }
            connection
                .execute(
                    "INSERT INTO search_token (rid, resource_type, param, code) \
                     VALUES (?1, 'Observation', 'status', ?2)",
                    (rid, status),
                )
                .expect("a token row");
        }
        for (rid, id, name) in [(11, "1", "alice"), (12, "2", "bob")] {
            connection
                .execute(
                    "INSERT INTO resource_versions \
                     (seq, resource_type, id, version_id, last_updated, method, body) \
                     VALUES (?1, 'Patient', ?2, 1, 0, 'POST', '{}')",
                    (rid, id),
                )
                .expect("a version");
            connection
                .execute(
                    "INSERT INTO resources \
                     (rid, resource_type, id, version_id, last_updated, deleted, seq, method, body) \
                     VALUES (?1, 'Patient', ?2, 1, 0, FALSE, ?1, 'POST', '{}')",
                    (rid, id),
                )
                .expect("a patient");
            connection
                .execute(
                    "INSERT INTO search_string (rid, resource_type, param, normalized, exact) \
                     VALUES (?1, 'Patient', 'name', ?2, ?2)",
                    (rid, name),
                )
                .expect("a name row");
        }
        // Where each reference leads, as the writes of the patients would have filled it in.
        connection
            .execute(
                "UPDATE search_reference SET target_rid = (SELECT r.rid FROM resources r \
                 WHERE r.resource_type = search_reference.target_type \
                 AND r.id = search_reference.target_id)",
                (),
            )
            .expect("the references resolved");
        connection
    }

    fn run(connection: &rusqlite::Connection, sql: &Sql) -> Vec<i64> {
        let mut statement = connection.prepare(&sql.text).expect("the query prepares");
        statement
            .query_map(rusqlite::params_from_iter(&sql.binds), |row| row.get(0))
            .expect("the query runs")
            .collect::<Result<_, _>>()
            .expect("its rows")
    }

    /// The rids of the first page of `query`, found by walking the type (`None`) and from each
    /// filter that can drive; every way must agree.
    fn page_rids(connection: &rusqlite::Connection, query: &SearchQuery) -> Vec<i64> {
        let walked = run(connection, &page(query, None, &[], None, &[]).0);
        for i in 0..query.filters.len() {
            if can_drive(&query.filters[i]) {
                let driven = run(connection, &page(query, Some(i), &[], None, &[]).0);
                assert_eq!(driven, walked, "driven by filter {i}");
            }
        }
        for i in 0..query.filters.len() {
            if matches!(query.filters[i], Filter::Chain { .. }) {
                let linked = run(connection, &page(query, None, &[i], None, &[]).0);
                assert_eq!(linked, walked, "filter {i} tested as linked");
            }
        }
        if let Some(c) = reference_walk(query, None) {
            let by_references = run(connection, &page(query, None, &[], Some(c), &[]).0);
            assert_eq!(by_references, walked, "filter {c}'s references walked");
            let linked = run(connection, &page(query, None, &[c], Some(c), &[]).0);
            assert_eq!(linked, walked, "filter {c}'s references walked, linked");
        }
        walked
    }

    fn counted(connection: &rusqlite::Connection, query: &SearchQuery) -> Vec<i64> {
        let mut counts = vec![run(connection, &count(query, None))[0]];
        for i in 0..query.filters.len() {
            if can_drive(&query.filters[i]) {
                counts.push(run(connection, &count(query, Some(i)))[0]);
            }
        }
        counts
    }

    #[test]
    fn any_matches_a_resource_that_meets_one_group() {
        let connection = database();
        let mut query = observations(&[]);
        query.narrow(compartment_of_patient_1());
        assert!(can_drive(&query.filters[0]));
        assert_eq!(page_rids(&connection, &query), [1, 2, 4]);
        assert_eq!(counted(&connection, &query), [3, 3]);
    }

    #[test]
    fn any_holds_beside_the_clients_filters() {
        let connection = database();
        let mut query = observations(&[("status", "final")]);
        query.narrow(compartment_of_patient_1());
        assert_eq!(page_rids(&connection, &query), [1, 4]);
        assert_eq!(counted(&connection, &query), [2, 2, 2]);
    }

    #[test]
    fn a_group_needs_all_its_filters() {
        let connection = database();
        let mut query = observations(&[]);
        query.narrow(vec![
            group(&[("subject", "Patient/1"), ("status", "final")]),
            group(&[("performer", "Patient/1"), ("status", "preliminary")]),
        ]);
        assert_eq!(page_rids(&connection, &query), [1, 2, 4]);
        query.narrow(vec![group(&[
            ("performer", "Patient/1"),
            ("status", "final"),
        ])]);
        assert_eq!(page_rids(&connection, &query), [4]);
    }

    #[test]
    fn no_groups_match_nothing_and_an_empty_group_everything() {
        let connection = database();
        let mut nothing = observations(&[]);
        nothing.narrow(Vec::new());
        assert_eq!(page_rids(&connection, &nothing), Vec::<i64>::new());
        assert_eq!(run(&connection, &estimates(&nothing, &[(0, 100)])), [0]);
        let mut everything = observations(&[]);
        everything.narrow(vec![Vec::new(), group(&[("subject", "Patient/2")])]);
        assert!(!can_drive(&everything.filters[0]));
        assert_eq!(page_rids(&connection, &everything), [1, 2, 3, 4, 6]);
    }

    #[test]
    fn a_group_that_no_index_finds_is_tested_but_never_drives() {
        let connection = database();
        let mut query = observations(&[]);
        query.narrow(vec![
            group(&[("subject", "Patient/1")]),
            group(&[("status:not", "final")]),
        ]);
        assert!(!can_drive(&query.filters[0]));
        assert_eq!(page_rids(&connection, &query), [1, 2, 4]);
    }

    #[test]
    fn any_is_estimated_from_the_union_of_its_groups() {
        let connection = database();
        let mut query = observations(&[]);
        query.narrow(compartment_of_patient_1());
        // Observation 4 is in both groups: an estimate may count it twice, never less.
        assert_eq!(run(&connection, &estimates(&query, &[(0, 100)])), [4]);
        assert_eq!(run(&connection, &estimates(&query, &[(0, 2)])), [2]);
    }

    fn counts(connection: &rusqlite::Connection, sql: &Sql, n: usize) -> Vec<i64> {
        let mut statement = connection.prepare(&sql.text).expect("the query prepares");
        statement
            .query_row(rusqlite::params_from_iter(&sql.binds), |row| {
                (0..n).map(|i| row.get(i)).collect()
            })
            .expect("one row")
    }

    #[test]
    fn filters_are_estimated_in_one_statement_each_no_further_than_the_least_before_it() {
        let connection = database();
        let query = observations(&[("subject", "Patient/1"), ("status", "final")]);
        // Subject: Observations 1 and 4; final: 1, 3, 4 and 6, counted only as far as 2.
        let sql = estimates(&query, &[(0, 100), (1, 100)]);
        assert_eq!(counts(&connection, &sql, 2), [2, 2]);
        let sql = estimates(&query, &[(1, 100), (0, 100)]);
        assert_eq!(counts(&connection, &sql, 2), [4, 2]);
        let sql = estimates(&query, &[(1, 3), (0, 100)]);
        assert_eq!(counts(&connection, &sql, 2), [3, 2]);
        let none = observations(&[("subject", "Patient/9"), ("status", "final")]);
        let sql = estimates(&none, &[(0, 100), (1, 100)]);
        assert_eq!(counts(&connection, &sql, 2), [0, 0]);
    }

    #[test]
    fn a_compartment_of_references_is_as_likely_rare_as_one_reference() {
        let mut query = observations(&[("subject", "Patient/1")]);
        query.narrow(compartment_of_patient_1());
        assert_eq!(
            likely_size(&query.filters[1]),
            likely_size(&query.filters[0])
        );
        assert!(!follows_references(&query.filters[1]));
    }

    #[test]
    fn a_chain_is_estimated_from_its_links_and_the_references_to_a_sample_of_them() {
        let connection = database();
        let query = observations(&[("subject:Patient.name", "ali")]);
        let (sql, targets) = chain_estimate(&query, 0, 1000, 4000).expect("a chain");
        assert_eq!(targets, 1);
        let mut statement = connection.prepare(&sql.text).expect("the query prepares");
        let counts: Vec<i64> = statement
            .query_row(rusqlite::params_from_iter(&sql.binds), |row| {
                (0..3).map(|i| row.get(i)).collect()
            })
            .expect("one row");
        // Alice, the only Alice, and Observations 1 and 4 (5 is deleted).
        assert_eq!(counts, [1, 1, 2]);
        assert!(
            chain_estimate(&observations(&[("subject", "Patient/1")]), 0, 1000, 4000).is_none()
        );
    }

    #[test]
    fn a_two_level_chain_estimates_its_links_from_a_sample_of_the_inner_ones() {
        let connection = database();
        // Practitioners named Lee, and the patients whose general practitioner each is:
        // patient 11 (Alice) and others, known only by their references.
        let lees: [(i64, &[i64]); 5] = [
            (21, &[11, 101, 102]),
            (22, &[103, 104, 105]),
            (23, &[106, 107, 108]),
            (24, &[109, 110, 111]),
            (25, &[112]),
        ];
        let estimate = |connection: &rusqlite::Connection| {
            let query = observations(&[(
                "subject:Patient.general-practitioner:Practitioner.name",
                "lee",
            )]);
            let (sql, targets) = chain_estimate(&query, 0, 1000, 4000).expect("a chain");
            assert_eq!(targets, 1);
            let mut statement = connection.prepare(&sql.text).expect("the query prepares");
            statement
                .query_row(rusqlite::params_from_iter(&sql.binds), |row| {
                    (0..3).map(|i| row.get(i)).collect::<Result<Vec<i64>, _>>()
                })
                .expect("one row")
        };
        for (n, &(practitioner, patients)) in lees.iter().enumerate() {
            connection
                .execute(
                    "INSERT INTO search_string (rid, resource_type, param, normalized, exact) \
                     VALUES (?1, 'Practitioner', 'name', 'lee', 'Lee')",
                    [practitioner],
                )
                .expect("a name row");
            for patient in patients {
                connection
                    .execute(
                        "INSERT INTO search_reference \
                         (rid, resource_type, param, target_type, target_id, target_rid) \
                         VALUES (?1, 'Patient', 'general-practitioner', 'Practitioner', ?2, ?3)",
                        (patient, practitioner.to_string(), practitioner),
                    )
                    .expect("a reference row");
            }
            if n == 2 {
                // Three practitioners, fewer than the sample of four: their 9 patients are
                // counted.
                assert_eq!(estimate(&connection), [9, 9, 2]);
            }
        }
        // Five: 5 · 12 / 4 from the first four, 15 where there are 13; the first 32 patients
        // and the Observations of those (Alice's 1 and 4) are still counted.
        assert_eq!(estimate(&connection), [15, 13, 2]);
    }

    #[test]
    fn a_chain_finds_the_same_tested_link_by_link_from_its_set_or_against_its_links() {
        let connection = database();
        let query = observations(&[("subject:Patient.name", "ali")]);
        assert_eq!(page_rids(&connection, &query), [1, 4]);
        let query = observations(&[("subject:Patient.name", "bob"), ("status", "final")]);
        assert_eq!(page_rids(&connection, &query), [3]);
    }

    /// The steps of SQLite's plan for `sql`.
    fn plan(connection: &rusqlite::Connection, sql: &Sql) -> Vec<String> {
        let mut statement = connection
            .prepare(&format!("EXPLAIN QUERY PLAN {}", sql.text))
            .expect("the query prepares");
        statement
            .query_map(rusqlite::params_from_iter(&sql.binds), |row| row.get(3))
            .expect("the plan")
            .collect::<Result<_, _>>()
            .expect("the plan's rows")
    }

    #[test]
    fn sqlite_drives_a_compartment_from_one_reference_seek_a_group() {
        let connection = database();
        let mut query = observations(&[]);
        query.narrow(compartment_of_patient_1());
        let steps = plan(&connection, &page(&query, Some(0), &[], None, &[]).0);
        let seeks = steps
            .iter()
            .filter(|s| s.starts_with("SEARCH x USING COVERING INDEX search_reference_target"))
            .count();
        assert_eq!(seeks, 2, "{steps:#?}");
        assert!(
            !steps
                .iter()
                .any(|s| s.starts_with("SCAN r") || s.contains("resources_type_live")),
            "{steps:#?}"
        );
    }

    #[test]
    fn sqlite_follows_chains_and_has_by_where_references_lead() {
        let connection = database();
        let chain = observations(&[("subject:Patient.name", "ali")]);
        let has = patients(&[("_has:Observation:subject:status", "final")]);
        for (sql, steps_by_target) in [
            // From the patients named to the references that lead to them.
            (page(&chain, Some(0), &[], None, &[]).0, 1),
            (chain_estimate(&chain, 0, 100, 100).expect("a chain").0, 1),
            // From each patient to the observations that refer to it.
            (page(&has, None, &[], None, &[]).0, 1),
        ] {
            let steps = plan(&connection, &sql);
            let by_target = steps
                .iter()
                .filter(|s| s.contains("USING COVERING INDEX search_reference_target_rid"))
                .count();
            assert_eq!(by_target, steps_by_target, "{steps:#?}");
            // No resource is looked up by type and id on the way.
            assert!(
                !steps
                    .iter()
                    .any(|s| s.contains("sqlite_autoindex_resources")
                        || s.contains("resources_type_id")),
                "{steps:#?}"
            );
        }
        assert_eq!(
            run(&connection, &page(&chain, Some(0), &[], None, &[]).0),
            [1, 4]
        );
        // Walked, each candidate's chain is followed by its reference rows alone: no resource
        // on the way is read.
        let two_levels = observations(&[(
            "subject:Patient.general-practitioner:Practitioner.name",
            "house",
        )]);
        let steps = plan(&connection, &page(&two_levels, None, &[], None, &[]).0);
        let links = steps
            .iter()
            .filter(|s| s.contains("USING COVERING INDEX search_reference_rid"))
            .count();
        assert_eq!(links, 2, "{steps:#?}");
        assert!(
            !steps
                .iter()
                .any(|s| s.starts_with("SEARCH rc ") || s.starts_with("SEARCH rcc ")),
            "{steps:#?}"
        );
    }

    /// Walked, `_has` finds the resources referring to each candidate by their reference rows,
    /// which only live resources have; a referring resource's row is read only when the test
    /// is of the row itself (its id, when it was last updated).
    #[test]
    fn has_reads_a_referring_resource_only_to_test_its_row() {
        let connection = database();
        let walked = |query: &SearchQuery| page(query, None, &[], None, &[]).0;
        let reads_a_referrer = |query: &SearchQuery| {
            plan(&connection, &walked(query))
                .iter()
                .any(|step| step.starts_with("SEARCH rh "))
        };
        let by_rows = patients(&[("_has:Observation:subject:status", "final")]);
        assert!(!reads_a_referrer(&by_rows));
        assert_eq!(run(&connection, &walked(&by_rows)), [11, 12]);
        let by_id = patients(&[("_has:Observation:subject:_id", "o3")]);
        assert!(reads_a_referrer(&by_id));
        assert_eq!(run(&connection, &walked(&by_id)), [12]);
        // The deleted observation `o5` refers to patient 1 no longer.
        let by_deleted = patients(&[("_has:Observation:subject:_id", "o5")]);
        assert_eq!(run(&connection, &walked(&by_deleted)), Vec::<i64>::new());
    }

    #[test]
    fn sqlite_includes_go_by_the_rid_each_reference_leads_to() {
        let connection = database();
        // `_include`: from observations 1-4 to the patients they name, through one parameter
        // or any; observation 5 is deleted and has no rows.
        let subjects = referenced(&[1, 2, 3, 4, 5], Some("subject"), &[ResourceType::Patient]);
        assert_eq!(run(&connection, &subjects), [11, 12]);
        assert_eq!(run(&connection, &referenced(&[2], None, &[])), [11]);
        assert_eq!(
            run(
                &connection,
                &referenced(&[1, 2], None, &[ResourceType::Practitioner])
            ),
            Vec::<i64>::new()
        );
        // `_revinclude`: from the patients to the live observations that name them.
        let referrers = referring(&[11], Some(ResourceType::Observation), Some("subject"));
        assert_eq!(run(&connection, &referrers), [1, 4]);
        assert_eq!(
            run(&connection, &referring(&[11, 12], None, None)),
            [1, 2, 3, 4]
        );
        assert_eq!(
            run(
                &connection,
                &referring(&[11], Some(ResourceType::Encounter), None)
            ),
            Vec::<i64>::new()
        );
        for (sql, index) in [
            (&subjects, "search_reference_rid"),
            (&referrers, "search_reference_target_rid"),
        ] {
            let steps = plan(&connection, sql);
            assert!(
                steps
                    .iter()
                    .any(|s| s.starts_with(&format!("SEARCH x USING COVERING INDEX {index}"))),
                "{steps:#?}"
            );
            assert!(!steps.iter().any(|s| s.starts_with("SCAN")), "{steps:#?}");
        }
    }

    #[test]
    fn only_a_search_by_one_starts_with_string_pages_in_its_values_order() {
        for (list, ordered) in [
            (&[("name", "smi")][..], true),
            (&[("family", "Smi")][..], true),
            (&[("name:exact", "Smith")][..], false),
            (&[("name", "smi,jo")][..], false),
            (&[("name", "smi"), ("gender", "female")][..], false),
            (&[("name", "smi"), ("_sort", "birthdate")][..], false),
            (&[("gender", "female")][..], false),
        ] {
            assert_eq!(value_order(&patients(list)).is_some(), ordered, "{list:?}");
        }
    }

    #[test]
    fn only_a_search_by_one_exact_token_reference_or_uri_is_read_in_rid_order() {
        for (list, ordered) in [
            (&[("code", "http://loinc.org|8310-5")][..], true),
            (&[("subject", "Patient/1")][..], true),
            (&[("subject:Patient", "1")][..], true),
            // Any system, or none: the index holds the code's rows by system, then rid.
            (&[("code", "8310-5")][..], false),
            (&[("code", "|8310-5")][..], false),
            (&[("code", "http://loinc.org|")][..], false),
            (
                &[("code", "http://loinc.org|1,http://loinc.org|2")][..],
                false,
            ),
            (&[("code:not", "http://loinc.org|1")][..], false),
            // Any of the types the parameter may refer to.
            (&[("subject", "1")][..], false),
            (
                &[("subject", "http://elsewhere.org/fhir/Patient/1")][..],
                false,
            ),
            (
                &[("subject:identifier", "http://example.org/mrn|1")][..],
                false,
            ),
            (
                &[("code", "http://loinc.org|1"), ("status", "final")][..],
                false,
            ),
            (
                &[("code", "http://loinc.org|1"), ("_sort", "date")][..],
                false,
            ),
            (&[("value-quantity", "5")][..], false),
        ] {
            assert_eq!(in_rid_order(&observations(list)), ordered, "{list:?}");
        }
        let questionnaires = search_of(
            ResourceType::Questionnaire,
            &[("url", "http://example.org/questionnaire")],
        );
        assert!(in_rid_order(&questionnaires));
        let limits = Limits {
            default_count: 10,
            max_count: 100,
        };
        let types = vec![ResourceType::Observation, ResourceType::Condition];
        let across_types = query::parse(
            types,
            &pairs(&[("_tag", "http://example.org/tags|a")]),
            true,
            BASE,
            &limits,
        )
        .expect("the query parses");
        assert!(!in_rid_order(&across_types));
    }

    #[test]
    fn only_a_walk_of_the_resources_testing_each_filter_is_planned_alike_for_all_values() {
        for (list, alike) in [
            (
                &[("_has:Observation:subject:code", "http://loinc.org|8302-2")][..],
                true,
            ),
            (&[("name", "smith"), ("gender:not", "male")][..], true),
            (
                &[("general-practitioner:Practitioner.family", "smith")][..],
                true,
            ),
            // The row's own columns, which an index of the row may find quicker.
            (
                &[("name", "smith"), ("_lastUpdated", "gt2026-01-01")][..],
                false,
            ),
            (&[("_id", "1")][..], false),
            (&[("name", "smith"), ("_sort", "birthdate")][..], false),
            // Nothing to test: the whole type, which a plan for a page of unknown size might
            // read and sort.
            (&[][..], false),
        ] {
            assert_eq!(
                walks_resources(&patients(list), None, &[]),
                alike,
                "{list:?}"
            );
        }
        let named = patients(&[("name", "smith")]);
        assert!(walks_resources(&named, None, &[]));
        assert!(!walks_resources(&named, Some(0), &[]), "started from a set");
        let chained = patients(&[("general-practitioner:Practitioner.family", "smith")]);
        assert!(
            !walks_resources(&chained, None, &[0]),
            "a chain's links found once"
        );
    }

    #[test]
    fn sqlite_reads_a_page_in_rid_order_from_the_index_of_its_one_value() {
        let connection = database();
        for (rt, list, index) in [
            (
                ResourceType::Observation,
                &[("code", "http://loinc.org|8310-5")][..],
                "search_token_code",
            ),
            (
                ResourceType::Observation,
                &[("subject", "Patient/1")][..],
                "search_reference_target",
            ),
            (
                ResourceType::Questionnaire,
                &[("url", "http://example.org/questionnaire")][..],
                "search_uri_value",
            ),
        ] {
            let mut query = search_of(rt, list);
            assert!(in_rid_order(&query), "{list:?}");
            for cursor in [
                None,
                Some(Cursor {
                    backwards: false,
                    rid: 2,
                    version: None,
                }),
                Some(Cursor {
                    backwards: true,
                    rid: 5,
                    version: None,
                }),
            ] {
                query.cursor = cursor;
                let steps = plan(&connection, &page(&query, Some(0), &[], None, &[]).0);
                let read = format!("SEARCH x USING COVERING INDEX {index} ");
                assert!(
                    steps.iter().any(|s| s.starts_with(&read)),
                    "{list:?}: {steps:#?}"
                );
                // Only the page's own rows are sorted, once read: after the scan of `d`.
                let page = steps.iter().position(|s| s == "SCAN d");
                assert!(
                    (0..steps.len())
                        .filter(|&i| steps[i].contains("TEMP B-TREE"))
                        .all(|i| page.is_some_and(|p| i > p)),
                    "{list:?}: {steps:#?}"
                );
            }
        }
        // And finds what a walk of the type finds.
        let query = observations(&[("subject", "Patient/1")]);
        assert_eq!(page_rids(&connection, &query), [1, 4]);
    }

    #[test]
    fn sqlite_reads_a_page_in_values_order_from_the_value_index_without_sorting() {
        let connection = database();
        let mut query = patients(&[("name", "smi")]);
        let (def, text) = value_order(&query)
            .map(|(def, text)| (def, text.to_owned()))
            .expect("a search in values order");
        for cursor in [
            None,
            Some(Cursor {
                backwards: false,
                rid: 11,
                version: Some(1),
            }),
            Some(Cursor {
                backwards: true,
                rid: 11,
                version: None,
            }),
        ] {
            query.cursor = cursor;
            let key = cursor.map(|_| "smith");
            let steps = plan(&connection, &value_page(&query, def, &text, key));
            assert!(
                steps
                    .iter()
                    .any(|s| s.starts_with("SEARCH x USING COVERING INDEX search_string_value")),
                "{steps:#?}"
            );
            assert!(
                steps
                    .iter()
                    .any(|s| s.starts_with("SEARCH y USING COVERING INDEX search_string_rid")),
                "{steps:#?}"
            );
            // Only the page's own rows are sorted, once read: after the scan of `d`.
            let sorts: Vec<usize> = (0..steps.len())
                .filter(|&i| steps[i].contains("TEMP B-TREE"))
                .collect();
            let page = steps.iter().position(|s| s == "SCAN d");
            assert!(
                sorts.len() <= 1 && sorts.iter().all(|&i| page.is_some_and(|p| i > p)),
                "{steps:#?}"
            );
        }
    }
}
