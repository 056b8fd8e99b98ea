//! The two wire drivers behind one small interface: statements with
//! already-converted placeholders, bound values, rows of plain cells.
//!
//! Driver errors are reduced to a message without the server's DETAIL
//! (PostgreSQL puts whole failing rows, hashes included, there) and a
//! transient/permanent verdict.

use std::time::Duration;

use mysql::prelude::Queryable;
use postgres::types::{ToSql, Type};

use super::{Driver, SqlUrl};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A server that stops answering mid-statement becomes a transient error
/// instead of a hung migration (the PostgreSQL driver has no read timeout;
/// there the kernel's TCP keepalive ends a dead peer).
const MYSQL_IO_TIMEOUT: Duration = Duration::from_secs(120);

/// A value to bind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Value {
    Text(String),
    Int(i64),
    Bool(bool),
}

/// A value read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Cell {
    Null,
    Text(String),
    Int(i64),
    Bool(bool),
}

#[derive(Debug, Default)]
pub(super) struct Rows {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Cell>>,
}

/// A failed statement or connection attempt.
#[derive(Debug)]
pub(super) struct Failure {
    pub message: String,
    /// SQLSTATE (PostgreSQL) or error number (MySQL).
    pub code: Option<String>,
    pub transient: bool,
}

impl Failure {
    fn permanent(message: String) -> Failure {
        Failure {
            message,
            code: None,
            transient: false,
        }
    }

    /// A duplicate key: some other writer inserted the same row first.
    pub fn is_unique_violation(&self) -> bool {
        matches!(self.code.as_deref(), Some("23505" | "1062"))
    }
}

pub(super) enum Conn {
    Pg(Box<postgres::Client>),
    My(Box<mysql::Conn>),
}

impl Conn {
    pub fn open(url: &SqlUrl) -> Result<Conn, Failure> {
        match url.driver {
            Driver::Postgres => {
                let c = url.postgres_config(CONNECT_TIMEOUT);
                // TLS is not built in: see the module documentation.
                let client = c.connect(postgres::NoTls).map_err(pg_failure)?;
                Ok(Conn::Pg(Box::new(client)))
            }
            Driver::Mysql => {
                let opts = mysql::OptsBuilder::new()
                    .ip_or_hostname(Some(url.host.as_str()))
                    .tcp_port(url.port)
                    .user(Some(url.user.as_str()))
                    .pass(url.password.as_ref().map(|p| p.0.as_str()))
                    .db_name(Some(url.dbname.as_str()))
                    .prefer_socket(false)
                    .tcp_connect_timeout(Some(CONNECT_TIMEOUT))
                    .read_timeout(Some(MYSQL_IO_TIMEOUT))
                    .write_timeout(Some(MYSQL_IO_TIMEOUT))
                    // Affected rows must count matched rows, as PostgreSQL
                    // does: a guarded UPDATE that matches but changes nothing
                    // is not a lost race.
                    .additional_capabilities(mysql::consts::CapabilityFlags::CLIENT_FOUND_ROWS);
                let conn = mysql::Conn::new(opts).map_err(my_failure)?;
                Ok(Conn::My(Box::new(conn)))
            }
        }
    }

    /// Runs a statement without parameters (`BEGIN`, `COMMIT`, `ROLLBACK`).
    pub fn simple(&mut self, sql: &str) -> Result<(), Failure> {
        match self {
            Conn::Pg(c) => c.batch_execute(sql).map_err(pg_failure),
            Conn::My(c) => c.query_drop(sql).map_err(my_failure),
        }
    }

    pub fn query(&mut self, sql: &str, args: &[Value]) -> Result<Rows, Failure> {
        match self {
            Conn::Pg(c) => {
                let stmt = c.prepare(sql).map_err(pg_failure)?;
                let bound = pg_bind(args, stmt.params())?;
                let refs: Vec<&(dyn ToSql + Sync)> = bound.iter().map(|b| b.as_ref()).collect();
                let rows = c.query(&stmt, &refs).map_err(pg_failure)?;
                let mut out = Rows {
                    columns: stmt
                        .columns()
                        .iter()
                        .map(|c| c.name().to_string())
                        .collect(),
                    rows: Vec::with_capacity(rows.len()),
                };
                for row in &rows {
                    out.rows.push(
                        (0..row.len())
                            .map(|i| pg_cell(row, i))
                            .collect::<Result<_, _>>()?,
                    );
                }
                Ok(out)
            }
            Conn::My(c) => {
                let rows: Vec<mysql::Row> = c.exec(sql, my_params(args)).map_err(my_failure)?;
                let mut out = Rows::default();
                if let Some(first) = rows.first() {
                    out.columns = first
                        .columns_ref()
                        .iter()
                        .map(|c| c.name_str().into_owned())
                        .collect();
                }
                for row in rows {
                    out.rows.push(
                        row.unwrap()
                            .into_iter()
                            .map(my_cell)
                            .collect::<Result<_, _>>()?,
                    );
                }
                Ok(out)
            }
        }
    }

    /// Prepares a statement without running it (the server checks its
    /// tables and columns) and returns the names of the columns it would
    /// return.
    pub fn columns(&mut self, sql: &str) -> Result<Vec<String>, Failure> {
        match self {
            Conn::Pg(c) => {
                let stmt = c.prepare(sql).map_err(pg_failure)?;
                Ok(stmt
                    .columns()
                    .iter()
                    .map(|c| c.name().to_string())
                    .collect())
            }
            Conn::My(c) => {
                let stmt = c.prep(sql).map_err(my_failure)?;
                let names = stmt
                    .columns()
                    .iter()
                    .map(|c| c.name_str().into_owned())
                    .collect();
                c.close(stmt).map_err(my_failure)?;
                Ok(names)
            }
        }
    }

    /// Runs a data-modifying statement; returns the number of matched rows.
    pub fn execute(&mut self, sql: &str, args: &[Value]) -> Result<u64, Failure> {
        match self {
            Conn::Pg(c) => {
                let stmt = c.prepare(sql).map_err(pg_failure)?;
                let bound = pg_bind(args, stmt.params())?;
                let refs: Vec<&(dyn ToSql + Sync)> = bound.iter().map(|b| b.as_ref()).collect();
                c.execute(&stmt, &refs).map_err(pg_failure)
            }
            Conn::My(c) => {
                c.exec_drop(sql, my_params(args)).map_err(my_failure)?;
                Ok(c.affected_rows())
            }
        }
    }

    /// The server's id for this session (to kill it in tests).
    #[cfg(test)]
    pub fn session_id(&mut self) -> i64 {
        match self {
            Conn::Pg(c) => {
                let row = c.query_one("SELECT pg_backend_pid()", &[]).unwrap();
                i64::from(row.get::<_, i32>(0))
            }
            Conn::My(c) => i64::from(c.connection_id()),
        }
    }
}

/// Converts values to the types PostgreSQL inferred for the parameters, so
/// a custom schema may keep quota in `integer` or `active` in `smallint`.
fn pg_bind(args: &[Value], types: &[Type]) -> Result<Vec<Box<dyn ToSql + Sync>>, Failure> {
    let out_of_range = |ty: &Type| Failure::permanent(format!("value out of range for {ty}"));
    args.iter()
        .zip(types)
        .map(|(v, ty)| {
            let int = match v {
                Value::Text(s) => return Ok(Box::new(s.clone()) as Box<dyn ToSql + Sync>),
                Value::Int(i) => *i,
                Value::Bool(b) if *ty == Type::BOOL => return Ok(Box::new(*b) as _),
                Value::Bool(b) => i64::from(*b),
            };
            Ok(match *ty {
                Type::INT2 => Box::new(i16::try_from(int).map_err(|_| out_of_range(ty))?) as _,
                Type::INT4 => Box::new(i32::try_from(int).map_err(|_| out_of_range(ty))?) as _,
                Type::BOOL => Box::new(int != 0) as _,
                Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME => {
                    Box::new(int.to_string()) as _
                }
                _ => Box::new(int) as _,
            })
        })
        .collect()
}

fn pg_cell(row: &postgres::Row, i: usize) -> Result<Cell, Failure> {
    let ty = row.columns()[i].type_().clone();
    let bad = |e: postgres::Error| Failure::permanent(format!("column {i}: {e}"));
    Ok(match ty {
        Type::BOOL => row
            .try_get::<_, Option<bool>>(i)
            .map_err(bad)?
            .map_or(Cell::Null, Cell::Bool),
        Type::INT2 => row
            .try_get::<_, Option<i16>>(i)
            .map_err(bad)?
            .map_or(Cell::Null, |v| Cell::Int(v.into())),
        Type::INT4 => row
            .try_get::<_, Option<i32>>(i)
            .map_err(bad)?
            .map_or(Cell::Null, |v| Cell::Int(v.into())),
        Type::INT8 => row
            .try_get::<_, Option<i64>>(i)
            .map_err(bad)?
            .map_or(Cell::Null, Cell::Int),
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN => row
            .try_get::<_, Option<String>>(i)
            .map_err(bad)?
            .map_or(Cell::Null, Cell::Text),
        _ => {
            return Err(Failure::permanent(format!(
                "column {} has type {ty}; cast it to text, bigint or boolean",
                row.columns()[i].name()
            )));
        }
    })
}

fn pg_failure(e: postgres::Error) -> Failure {
    let d = crate::db_url::PgFailure::of(&e);
    Failure {
        message: d.message,
        code: d.code,
        transient: d.transient,
    }
}

fn my_params(args: &[Value]) -> mysql::Params {
    if args.is_empty() {
        return mysql::Params::Empty;
    }
    mysql::Params::Positional(
        args.iter()
            .map(|v| match v {
                Value::Text(s) => mysql::Value::Bytes(s.clone().into_bytes()),
                Value::Int(i) => mysql::Value::Int(*i),
                Value::Bool(b) => mysql::Value::Int(i64::from(*b)),
            })
            .collect(),
    )
}

fn my_cell(v: mysql::Value) -> Result<Cell, Failure> {
    Ok(match v {
        mysql::Value::NULL => Cell::Null,
        mysql::Value::Int(i) => Cell::Int(i),
        mysql::Value::UInt(u) => Cell::Int(
            i64::try_from(u).map_err(|_| Failure::permanent(format!("{u} out of range")))?,
        ),
        mysql::Value::Bytes(b) => Cell::Text(
            String::from_utf8(b).map_err(|_| Failure::permanent("a value is not UTF-8".into()))?,
        ),
        _ => {
            return Err(Failure::permanent(
                "a column is a number or date type; cast it to a string or integer".into(),
            ));
        }
    })
}

/// Server error numbers worth a retry: too many connections, shutdown,
/// lock wait timeout, deadlock, interrupted or killed query/connection.
fn my_transient_code(code: u16) -> bool {
    matches!(code, 1040 | 1053 | 1205 | 1213 | 1317 | 1927 | 2006 | 2013)
}

fn my_failure(e: mysql::Error) -> Failure {
    match &e {
        mysql::Error::MySqlError(m) => Failure {
            message: format!("ERROR {} ({}): {}", m.code, m.state, m.message),
            code: Some(m.code.to_string()),
            transient: my_transient_code(m.code) || m.state.starts_with("08"),
        },
        mysql::Error::IoError(_) | mysql::Error::CodecError(_) => Failure {
            message: e.to_string(),
            code: None,
            transient: true,
        },
        mysql::Error::DriverError(d) => Failure {
            message: e.to_string(),
            code: None,
            transient: matches!(
                d,
                mysql::DriverError::ConnectTimeout
                    | mysql::DriverError::CouldNotConnect(_)
                    | mysql::DriverError::Timeout
                    | mysql::DriverError::PacketOutOfSync
                    | mysql::DriverError::UnexpectedPacket
            ),
        },
        _ => Failure::permanent(e.to_string()),
    }
}
