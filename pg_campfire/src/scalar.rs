//! Rows as JSON objects of their scalar columns only: uuid, text, numbers, booleans, date/time.
//! JSONB, arrays, inet, enums, composites and every other type are left out, so realtime
//! payloads never carry the complex columns that broke the seeds' realtime bindings.

use pgrx::datum::{Date, Time, TimeWithTimeZone, Timestamp, TimestampWithTimeZone};
use pgrx::prelude::*;
use serde_json::{Map, Value};
use std::ffi::CStr;

/// What to do with enum columns: the generic function leaves them out; the mirror keeps their
/// text label, which is a scalar.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Enums {
    Omit,
    AsText,
}

/// A heap tuple and its descriptor, borrowed from PostgreSQL for the duration of a call.
pub struct Row {
    tuple: *mut pg_sys::HeapTupleData,
    tupdesc: pg_sys::TupleDesc,
}

impl Row {
    /// # Safety
    /// Both pointers must be valid for as long as the `Row` is used.
    pub unsafe fn new(tuple: *mut pg_sys::HeapTupleData, tupdesc: pg_sys::TupleDesc) -> Self {
        Row { tuple, tupdesc }
    }

    fn natts(&self) -> usize {
        // SAFETY: the descriptor is valid while the Row is (Row::new's contract).
        unsafe { (*self.tupdesc).natts as usize }
    }

    fn attribute(&self, index: usize) -> &pg_sys::FormData_pg_attribute {
        // SAFETY: callers pass index < natts, and the descriptor outlives the borrow of self.
        unsafe { &*(*self.tupdesc).attrs.as_ptr().add(index) }
    }

    /// The raw value of the column at `index`, `None` when NULL; valid as long as the row.
    pub fn datum(&self, index: usize) -> Option<pg_sys::Datum> {
        let mut is_null = false;
        // SAFETY: tuple and descriptor are valid (Row::new); heap_getattr checks the attribute
        // number against the tuple's own count and reports NULL for one past it.
        let datum = unsafe { pg_sys::heap_getattr(self.tuple, index as i32 + 1, self.tupdesc, &mut is_null) };
        (!is_null).then_some(datum)
    }

    fn index_of(&self, column: &str) -> Option<usize> {
        (0..self.natts()).find(|&i| {
            let att = self.attribute(i);
            !att.attisdropped && att.name() == column
        })
    }

    /// The index and type of a column that `to_scalar_json` includes, `None` when it is
    /// missing or not scalar.
    pub fn scalar_column(&self, column: &str, enums: Enums) -> Option<(usize, pg_sys::Oid)> {
        let index = self.index_of(column)?;
        let typid = self.attribute(index).atttypid;
        is_scalar_type(typid, enums).then_some((index, typid))
    }

    /// The type of the column at `index`, `None` when it has been dropped (or never existed).
    pub fn column_type(&self, index: usize) -> Option<pg_sys::Oid> {
        (index < self.natts()).then(|| self.attribute(index)).filter(|att| !att.attisdropped).map(|att| att.atttypid)
    }

    /// The scalar value of one column, or `None` when it is NULL, missing or not scalar.
    pub fn scalar(&self, column: &str) -> Option<Value> {
        let index = self.index_of(column)?;
        let datum = self.datum(index)?;
        // SAFETY: a non-null datum of this column, whose type is the attribute's.
        unsafe { scalar_value(datum, self.attribute(index).atttypid, Enums::AsText) }
    }

    /// A uuid column's value, `None` when it is NULL, missing or of another type.
    pub fn uuid(&self, column: &str) -> Option<uuid::Uuid> {
        let index = self.index_of(column)?;
        if self.attribute(index).atttypid != pg_sys::UUIDOID {
            return None;
        }
        // SAFETY: the column is of type uuid, so its non-null datum is a uuid.
        let id = unsafe { pgrx::Uuid::from_polymorphic_datum(self.datum(index)?, false, pg_sys::UUIDOID) }?;
        Some(uuid::Uuid::from_bytes(*id.as_bytes()))
    }

    pub fn text(&self, column: &str) -> Option<String> {
        match self.scalar(column)? {
            Value::String(s) => Some(s),
            other => Some(other.to_string()),
        }
    }

    /// Every scalar column as a JSON object (NULLs included as `null`).
    pub fn to_scalar_json(&self, enums: Enums) -> Map<String, Value> {
        let mut object = Map::with_capacity(self.natts());
        for index in 0..self.natts() {
            let att = self.attribute(index);
            let Some(base) = (!att.attisdropped).then(|| scalar_base_type(att.atttypid, enums)).flatten() else {
                continue;
            };
            let value = match self.datum(index) {
                None => Value::Null,
                // SAFETY: a non-null datum of this column, scalar with base type `base`.
                Some(datum) => unsafe { base_value(datum, att.atttypid, base) }.unwrap_or(Value::Null),
            };
            object.insert(att.name().to_owned(), value);
        }
        object
    }
}

fn is_scalar_type(typid: pg_sys::Oid, enums: Enums) -> bool {
    scalar_base_type(typid, enums).is_some()
}

/// The base type (domains resolved) of a scalar type, `None` for any other type.
fn scalar_base_type(typid: pg_sys::Oid, enums: Enums) -> Option<pg_sys::Oid> {
    // SAFETY: a syscache lookup by type oid; an unknown oid raises an ERROR, not UB.
    let base = unsafe { pg_sys::getBaseType(typid) };
    let scalar = match base {
        pg_sys::BOOLOID
        | pg_sys::INT2OID
        | pg_sys::INT4OID
        | pg_sys::INT8OID
        | pg_sys::FLOAT4OID
        | pg_sys::FLOAT8OID
        | pg_sys::NUMERICOID
        | pg_sys::TEXTOID
        | pg_sys::VARCHAROID
        | pg_sys::BPCHAROID
        | pg_sys::NAMEOID
        | pg_sys::CHAROID
        | pg_sys::UUIDOID
        | pg_sys::TIMESTAMPTZOID
        | pg_sys::TIMESTAMPOID
        | pg_sys::DATEOID
        | pg_sys::TIMEOID
        | pg_sys::TIMETZOID => true,
        // SAFETY: a syscache lookup by type oid.
        other => enums == Enums::AsText && unsafe { pg_sys::get_typtype(other) } as u8 == b'e',
    };
    scalar.then_some(base)
}

/// The type's own text output, for text-like types and enum labels.
///
/// # Safety
/// `datum` must be a non-null value of type `typid`.
unsafe fn output_text(datum: pg_sys::Datum, typid: pg_sys::Oid) -> String {
    // SAFETY: the output function of the datum's own type, whose palloc'd C string is copied and
    // freed here.
    unsafe {
        let mut output_fn = pg_sys::Oid::INVALID;
        let mut is_varlena = false;
        pg_sys::getTypeOutputInfo(typid, &mut output_fn, &mut is_varlena);
        let text = pg_sys::OidOutputFunctionCall(output_fn, datum);
        let owned = CStr::from_ptr(text).to_string_lossy().into_owned();
        pg_sys::pfree(text.cast());
        owned
    }
}

fn number(value: f64) -> Value {
    serde_json::Number::from_f64(value).map_or_else(|| Value::String(value.to_string()), Value::Number)
}

/// # Safety
/// `datum` must be a non-null value of type `typid`.
unsafe fn scalar_value(datum: pg_sys::Datum, typid: pg_sys::Oid, enums: Enums) -> Option<Value> {
    let base = scalar_base_type(typid, enums)?;
    // SAFETY: the caller's contract, and `base` is the base type of `typid`.
    unsafe { base_value(datum, typid, base) }
}

/// # Safety
/// `datum` must be a non-null value of type `typid`, a scalar type whose base type is `base`.
unsafe fn base_value(datum: pg_sys::Datum, typid: pg_sys::Oid, base: pg_sys::Oid) -> Option<Value> {
    // SAFETY: each arm reads the datum as its base type, which the caller guarantees it is.
    let value = unsafe {
        match base {
            pg_sys::BOOLOID => Value::Bool(datum.value() != 0),
            pg_sys::INT2OID => Value::from(datum.value() as i16),
            pg_sys::INT4OID => Value::from(datum.value() as i32),
            pg_sys::INT8OID => Value::from(i64::from_polymorphic_datum(datum, false, base)?),
            pg_sys::FLOAT4OID => number(f32::from_polymorphic_datum(datum, false, base)? as f64),
            pg_sys::FLOAT8OID => number(f64::from_polymorphic_datum(datum, false, base)?),
            pg_sys::NUMERICOID => {
                let text = output_text(datum, base);
                serde_json::from_str::<serde_json::Number>(&text).map_or(Value::String(text), Value::Number)
            }
            pg_sys::TEXTOID | pg_sys::VARCHAROID | pg_sys::BPCHAROID => {
                Value::String(String::from_polymorphic_datum(datum, false, pg_sys::TEXTOID)?)
            }
            // Formatted by the uuid crate, several times faster than pgrx::Uuid's Display.
            pg_sys::UUIDOID => {
                let id = pgrx::Uuid::from_polymorphic_datum(datum, false, base)?;
                Value::String(uuid::Uuid::from_bytes(*id.as_bytes()).to_string())
            }
            pg_sys::TIMESTAMPTZOID => {
                serde_json::to_value(TimestampWithTimeZone::from_polymorphic_datum(datum, false, base)?).ok()?
            }
            pg_sys::TIMESTAMPOID => {
                serde_json::to_value(Timestamp::from_polymorphic_datum(datum, false, base)?).ok()?
            }
            pg_sys::DATEOID => serde_json::to_value(Date::from_polymorphic_datum(datum, false, base)?).ok()?,
            pg_sys::TIMEOID => serde_json::to_value(Time::from_polymorphic_datum(datum, false, base)?).ok()?,
            pg_sys::TIMETZOID => {
                serde_json::to_value(TimeWithTimeZone::from_polymorphic_datum(datum, false, base)?).ok()?
            }
            // name, "char" and enum labels.
            _ => Value::String(output_text(datum, typid)),
        }
    };
    Some(value)
}

/// `campfire.scalar_json(row)`: any row as a JSON object of its scalar columns only.
/// Usable by a DBA on their own tables, e.g. `SELECT campfire.scalar_json(t) FROM my_table t`.
#[pg_extern(stable, strict, parallel_safe)]
fn scalar_json(row: pgrx::AnyElement) -> pgrx::JsonB {
    let typid = row.oid();
    // SAFETY: a syscache lookup by type oid.
    let is_composite = unsafe { pg_sys::type_is_rowtype(typid) };
    if !is_composite {
        ereport!(
            ERROR,
            PgSqlErrorCode::ERRCODE_DATATYPE_MISMATCH,
            "scalar_json expects a row (a composite value such as a table row)"
        );
    }
    // SAFETY: the argument is a non-null composite datum (strict, checked above): detoasted, it
    // is a tuple header whose type and typmod give its descriptor, released after use.
    unsafe {
        let header = pg_sys::pg_detoast_datum(row.datum().cast_mut_ptr()) as pg_sys::HeapTupleHeader;
        let tupdesc = pg_sys::lookup_rowtype_tupdesc(
            pgrx::heap_tuple_header_get_type_id(header),
            pgrx::heap_tuple_header_get_typmod(header),
        );
        let mut tuple = pg_sys::HeapTupleData {
            t_len: pgrx::varsize(header.cast()) as u32,
            t_self: Default::default(),
            t_tableOid: pg_sys::Oid::INVALID,
            t_data: header,
        };
        let object = Row::new(&mut tuple, tupdesc).to_scalar_json(Enums::Omit);
        pg_sys::DecrTupleDescRefCount(tupdesc);
        pgrx::JsonB(Value::Object(object))
    }
}
