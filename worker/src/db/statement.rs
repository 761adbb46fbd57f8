//! How every statement of the worker is sent: as the *unnamed* statement, with its parameter
//! types given by the caller (`query_typed`, `query_typed_opt`, `execute_typed`: Parse, Bind,
//! Execute and Sync in one round trip), or with no parameters at all over the simple protocol
//! (`batch_execute`, `simple_query`). Never as a named prepared statement.
//!
//! Why: a transaction pooler (PgBouncer in `transaction` mode, before 1.21) hands each
//! transaction — and each statement outside one — to whichever server connection is free. A
//! named statement (`prepare`, `prepare_cached`, and the plain `query`/`execute(&str, …)`,
//! which prepare `s<N>` first in a separate round trip and close it later) exists on one server
//! connection only: the next use can land on another connection that never saw it, or on one
//! where another client's `s<N>` already exists. The unnamed statement lives exactly as long as
//! its own Sync, so it is safe behind any pooler. It is also what the batched statements of the
//! hot path need anyway (a custom plan per call; `jobs::attempt`), and one round trip instead
//! of two for the others. `architecture::db_sends_no_named_statement` keeps it that way.
//!
//! [`Param`] gives each Rust value its Postgres type, so call sites write
//! `params![a, b]` instead of repeating `(&a, Type::TEXT)` pairs. The type sent is the one the
//! value encodes as; a statement that needs another (an `int` function argument from an `i64`)
//! casts in its SQL text.

use serde_json::Value;
use time::OffsetDateTime;
use tokio_postgres::types::{ToSql, Type};

/// A value that can be bound to a typed parameter: it knows its own Postgres type.
pub trait Param: ToSql + Sync {
    fn pg_type(&self) -> Type;
}

/// A value that can also be an array element: its type, and the type of an array of it.
pub trait Element: Param {
    const SCALAR: Type;
    const ARRAY: Type;
}

macro_rules! element {
    ($($t:ty => $scalar:ident, $array:ident;)*) => {
        $(
            impl Element for $t {
                const SCALAR: Type = Type::$scalar;
                const ARRAY: Type = Type::$array;
            }
            impl Param for $t {
                fn pg_type(&self) -> Type {
                    Type::$scalar
                }
            }
        )*
    };
}

element! {
    bool => BOOL, BOOL_ARRAY;
    i16 => INT2, INT2_ARRAY;
    i32 => INT4, INT4_ARRAY;
    i64 => INT8, INT8_ARRAY;
    f64 => FLOAT8, FLOAT8_ARRAY;
    String => TEXT, TEXT_ARRAY;
    &str => TEXT, TEXT_ARRAY;
    Value => JSONB, JSONB_ARRAY;
    OffsetDateTime => TIMESTAMPTZ, TIMESTAMPTZ_ARRAY;
    uuid::Uuid => UUID, UUID_ARRAY;
    time::Date => DATE, DATE_ARRAY;
}

impl<T: Element> Element for Option<T> {
    const SCALAR: Type = T::SCALAR;
    const ARRAY: Type = T::ARRAY;
}

impl<T: Element> Param for Option<T> {
    fn pg_type(&self) -> Type {
        T::SCALAR
    }
}

impl<T: Element> Param for Vec<T> {
    fn pg_type(&self) -> Type {
        T::ARRAY
    }
}

impl<T: Element> Param for &[T] {
    fn pg_type(&self) -> Type {
        T::ARRAY
    }
}

impl<T: Param> Param for &T {
    fn pg_type(&self) -> Type {
        (**self).pg_type()
    }
}

/// The typed parameter list of one statement: `params![a, b]` is
/// `&[(&a, <a's type>), (&b, <b's type>)]`, what `query_typed` and friends take.
macro_rules! params {
    ($($p:expr),* $(,)?) => {
        &[$((
            &$p as &(dyn tokio_postgres::types::ToSql + Sync),
            $crate::db::statement::Param::pg_type(&$p),
        )),*]
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_carry_their_postgres_types() {
        let kinds = vec!["a".to_string()];
        let none: Option<&str> = None;
        let list: &[(&(dyn ToSql + Sync), Type)] =
            params![1i64, "q", kinds, none, Some(2i32), vec![Some("x")]];
        let types: Vec<Type> = list.iter().map(|(_, t)| t.clone()).collect();
        assert_eq!(
            types,
            [
                Type::INT8,
                Type::TEXT,
                Type::TEXT_ARRAY,
                Type::TEXT,
                Type::INT4,
                Type::TEXT_ARRAY
            ]
        );
    }
}
