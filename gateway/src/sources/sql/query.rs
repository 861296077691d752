//! Identifier checks and the two polling queries of an SQL source.
//!
//! Values never enter the SQL text: the cursor (and its tie-breaker) and the
//! batch size are bound parameters. Table and column names come from the
//! config; they are checked against a strict pattern
//! (`[A-Za-z_][A-Za-z0-9_]*`, at most 63 bytes, optional `schema.` prefix for
//! the table) and then double-quoted, which both PostgreSQL and SQLite accept.
//! Quoting makes names case-sensitive (`"Temp"` is not `temp`) and lets a
//! column be called `value`, `time` or `timestamp`.

use std::fmt::Write as _;

/// Longest identifier: PostgreSQL truncates names at 63 bytes.
pub const MAX_IDENT_LEN: usize = 63;

/// Which placeholder syntax the query uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    /// `$1, $2, …`
    Postgres,
    /// `?1, ?2, …`
    Sqlite,
}

impl Dialect {
    fn param(self, n: usize) -> String {
        match self {
            Dialect::Postgres => format!("${n}"),
            Dialect::Sqlite => format!("?{n}"),
        }
    }
}

/// Checks a column name; the error says what is wrong.
pub fn check_ident(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("is empty".into());
    }
    if name.len() > MAX_IDENT_LEN {
        return Err(format!("is longer than {MAX_IDENT_LEN} bytes"));
    }
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    if !first_ok || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(format!(
            "{name:?} is not a plain identifier (letters, digits and `_`, not starting with a digit)"
        ));
    }
    Ok(())
}

/// Checks a table name: `table` or `schema.table`.
pub fn check_table(name: &str) -> Result<(), String> {
    let parts: Vec<&str> = name.split('.').collect();
    if parts.len() > 2 {
        return Err(format!(
            "{name:?} has more than one `.`; use `table` or `schema.table`"
        ));
    }
    for p in parts {
        check_ident(p)?;
    }
    Ok(())
}

/// `"name"`. Only call with a name that passed [`check_ident`]/[`check_table`]
/// (a checked name holds no `"`; each `.`-separated part is quoted).
pub fn quote(name: &str) -> String {
    name.split('.')
        .map(|p| format!("\"{p}\""))
        .collect::<Vec<_>>()
        .join(".")
}

/// Where each mapped column sits in a result row.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Layout {
    /// Selected column names, in order (for quarantine payloads and errors).
    pub columns: Vec<String>,
    pub cursor: usize,
    pub tie: Option<usize>,
    pub device: Option<usize>,
    pub channel: Option<usize>,
    pub time: usize,
    pub unit: Option<usize>,
    /// `(channel, index)` for every value column: one entry in the long form
    /// (channel `""`: it comes from the channel column or the fixed channel),
    /// several in the wide form.
    pub values: Vec<(String, usize)>,
}

/// What a query selects, by role.
#[derive(Clone, Debug)]
pub struct Columns<'a> {
    pub cursor: &'a str,
    pub tie: Option<&'a str>,
    pub device: Option<&'a str>,
    pub channel: Option<&'a str>,
    pub time: &'a str,
    pub unit: Option<&'a str>,
    /// `(channel, column)`; see [`Layout::values`].
    pub values: Vec<(String, &'a str)>,
    /// Value columns (by name) to read through `CAST(… AS double precision)`
    /// (PostgreSQL `numeric`, which has no lossless binary form in Rust).
    pub cast_to_double: Vec<&'a str>,
}

/// The polling queries of one source.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Queries {
    /// Without a cursor (first poll ever): parameter 1 is the batch size.
    pub first: String,
    /// After a cursor: parameters are the cursor, the tie value (when
    /// configured), then the batch size.
    pub next: String,
    pub layout: Layout,
}

/// Builds the queries. `table` and every column must have passed the checks above.
pub fn build(dialect: Dialect, table: &str, c: &Columns<'_>) -> Queries {
    let mut layout = Layout::default();
    let mut select = Vec::new();
    let mut add = |name: &str, cast: bool| -> usize {
        layout.columns.push(name.to_owned());
        if cast {
            select.push(format!("CAST({} AS double precision)", quote(name)));
        } else {
            select.push(quote(name));
        }
        select.len() - 1
    };
    layout.cursor = add(c.cursor, false);
    layout.tie = c.tie.map(|t| add(t, false));
    layout.device = c.device.map(|d| add(d, false));
    layout.channel = c.channel.map(|ch| add(ch, false));
    layout.time = add(c.time, false);
    layout.unit = c.unit.map(|u| add(u, false));
    for (channel, col) in &c.values {
        let i = add(col, c.cast_to_double.contains(col));
        layout.values.push((channel.clone(), i));
    }
    let cols = select.join(", ");
    let table = quote(table);
    let cursor = quote(c.cursor);
    let order = match c.tie {
        Some(t) => format!("{cursor}, {}", quote(t)),
        None => cursor.clone(),
    };
    let mut not_null = format!("{cursor} IS NOT NULL");
    if let Some(t) = c.tie {
        let _ = write!(not_null, " AND {} IS NOT NULL", quote(t));
    }
    let first = format!(
        "SELECT {cols} FROM {table} WHERE {not_null} ORDER BY {order} LIMIT {}",
        dialect.param(1)
    );
    let next = match c.tie {
        // Row-value comparison (PostgreSQL; SQLite ≥ 3.15): strictly after
        // (cursor, tie), so rows sharing a timestamp are neither skipped nor
        // repeated at a batch boundary.
        Some(t) => format!(
            "SELECT {cols} FROM {table} WHERE ({cursor}, {}) > ({}, {}) ORDER BY {order} LIMIT {}",
            quote(t),
            dialect.param(1),
            dialect.param(2),
            dialect.param(3)
        ),
        None => format!(
            "SELECT {cols} FROM {table} WHERE {cursor} > {} ORDER BY {order} LIMIT {}",
            dialect.param(1),
            dialect.param(2)
        ),
    };
    Queries {
        first,
        next,
        layout,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn long_form<'a>() -> Columns<'a> {
        Columns {
            cursor: "id",
            tie: None,
            device: Some("device"),
            channel: Some("channel"),
            time: "ts",
            unit: Some("unit"),
            values: vec![(String::new(), "value")],
            cast_to_double: vec![],
        }
    }

    #[test]
    fn identifiers_are_plain_names_only() {
        for ok in ["id", "_x", "Temp_C2", &"a".repeat(63)] {
            assert!(check_ident(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "1abc",
            "a b",
            "a\"b",
            "id; DROP TABLE x",
            "a-b",
            "é",
            "a.b",
            &"a".repeat(64),
        ] {
            assert!(check_ident(bad).is_err(), "{bad:?} accepted");
        }
        assert!(check_table("public.readings").is_ok());
        assert!(check_table("readings").is_ok());
        assert!(check_table("a.b.c").is_err());
        assert!(check_table("public.").is_err());
        assert!(check_table("x\".y").is_err());
    }

    #[test]
    fn postgres_queries_bind_every_value_and_quote_every_name() {
        let q = build(Dialect::Postgres, "public.readings", &long_form());
        assert_eq!(
            q.first,
            r#"SELECT "id", "device", "channel", "ts", "unit", "value" FROM "public"."readings" WHERE "id" IS NOT NULL ORDER BY "id" LIMIT $1"#
        );
        assert_eq!(
            q.next,
            r#"SELECT "id", "device", "channel", "ts", "unit", "value" FROM "public"."readings" WHERE "id" > $1 ORDER BY "id" LIMIT $2"#
        );
        assert_eq!(q.layout.cursor, 0);
        assert_eq!(q.layout.device, Some(1));
        assert_eq!(q.layout.channel, Some(2));
        assert_eq!(q.layout.time, 3);
        assert_eq!(q.layout.unit, Some(4));
        assert_eq!(q.layout.values, vec![(String::new(), 5)]);
    }

    #[test]
    fn a_tie_column_makes_a_row_value_comparison_and_orders_by_both() {
        let cols = Columns {
            cursor: "ts",
            tie: Some("id"),
            device: None,
            channel: None,
            time: "ts",
            unit: None,
            values: vec![("temperature".into(), "t"), ("pressure".into(), "p")],
            cast_to_double: vec!["p"],
        };
        let q = build(Dialect::Sqlite, "m", &cols);
        assert_eq!(
            q.first,
            r#"SELECT "ts", "id", "ts", "t", CAST("p" AS double precision) FROM "m" WHERE "ts" IS NOT NULL AND "id" IS NOT NULL ORDER BY "ts", "id" LIMIT ?1"#
        );
        assert_eq!(
            q.next,
            r#"SELECT "ts", "id", "ts", "t", CAST("p" AS double precision) FROM "m" WHERE ("ts", "id") > (?1, ?2) ORDER BY "ts", "id" LIMIT ?3"#
        );
        assert_eq!(q.layout.tie, Some(1));
        assert_eq!(q.layout.time, 2);
        assert_eq!(
            q.layout.values,
            vec![("temperature".into(), 3), ("pressure".into(), 4)]
        );
    }
}
