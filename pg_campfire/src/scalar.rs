//! Rows as JSON objects of their scalar columns only: uuid, text, numbers, booleans, date/time.
//! JSONB, arrays, inet, enums, composites and every other type are left out, so realtime
//! payloads never carry the complex columns that broke the seeds' realtime bindings.

use pgrx::datum::{Date, DatumWithOid, Time, TimeWithTimeZone, Timestamp, TimestampWithTimeZone};
use pgrx::prelude::*;
use serde::{Serialize, Serializer, ser::SerializeMap};
use serde_json::Value;
use std::cell::RefCell;
use std::ffi::CStr;

/// What to do with enum columns: the generic function leaves them out; the mirror keeps their
/// text label, which is a scalar.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Enums {
    Omit,
    AsText,
}

/// Whether a catalog name is `name`: its bytes, then the NUL that ends it. Rows look columns up
/// by name several times a message, and reading the name as a checked `&str` first cost ~200
/// instructions a column.
fn name_is(catalog_name: &pg_sys::NameData, name: &str) -> bool {
    // SAFETY: NameData is NAMEDATALEN c_chars; reading them as bytes changes nothing.
    let bytes: &[u8] =
        unsafe { std::slice::from_raw_parts(catalog_name.data.as_ptr().cast(), catalog_name.data.len()) };
    bytes.get(name.len()) == Some(&0) && &bytes[..name.len()] == name.as_bytes()
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

    /// Every column's value (`None` when NULL), read in one pass over the tuple: `datum` walks
    /// the tuple from its start for each column after the first variable-width one.
    fn datums(&self) -> Vec<Option<pg_sys::Datum>> {
        let natts = self.natts();
        let (mut values, mut nulls) = (vec![pg_sys::Datum::from(0); natts], vec![false; natts]);
        // SAFETY: tuple and descriptor are valid (Row::new), and both arrays hold natts entries;
        // columns the tuple predates are filled in as PostgreSQL's heap_getattr does.
        unsafe { pg_sys::heap_deform_tuple(self.tuple, self.tupdesc, values.as_mut_ptr(), nulls.as_mut_ptr()) };
        values.into_iter().zip(nulls).map(|(value, null)| (!null).then_some(value)).collect()
    }

    /// The column at `index` as a statement parameter of the column's own type (NULL when NULL),
    /// valid as long as the row.
    pub fn param(&self, index: usize) -> DatumWithOid<'_> {
        let typid = self.attribute(index).atttypid;
        match self.datum(index) {
            // SAFETY: the column's own datum and type; the datum lives as long as the row.
            Some(datum) => unsafe { DatumWithOid::new(datum, typid) },
            None => DatumWithOid::null_oid(typid),
        }
    }

    /// The named column as a statement parameter, `None` when the row has no such column.
    pub fn param_of(&self, column: &str) -> Option<DatumWithOid<'_>> {
        self.index_of(column).map(|index| self.param(index))
    }

    /// The named columns as statement parameters, in the order given; an error names a column
    /// the row lacks.
    pub fn params_of(&self, columns: &[&str]) -> Vec<DatumWithOid<'_>> {
        let param =
            |column: &&str| self.param_of(column).unwrap_or_else(|| pgrx::error!("the row has no column {column}"));
        columns.iter().map(param).collect()
    }

    fn index_of(&self, column: &str) -> Option<usize> {
        (0..self.natts()).find(|&i| {
            let att = self.attribute(i);
            !att.attisdropped && name_is(&att.attname, column)
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
        let typid = self.attribute(index).atttypid;
        let base = scalar_base_type(typid, Enums::AsText)?;
        serde_json::to_value(Scalar { datum, typid, base }).ok().filter(|value| !value.is_null())
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

    /// A timestamptz column's value, `None` when it is NULL, missing or of another type.
    pub fn timestamptz(&self, column: &str) -> Option<pg_sys::TimestampTz> {
        let index = self.index_of(column)?;
        if self.attribute(index).atttypid != pg_sys::TIMESTAMPTZOID {
            return None;
        }
        // A timestamptz is an int64 passed by value.
        self.datum(index).map(|datum| datum.value() as pg_sys::TimestampTz)
    }

    pub fn text(&self, column: &str) -> Option<String> {
        match self.scalar(column)? {
            Value::String(s) => Some(s),
            other => Some(other.to_string()),
        }
    }

    /// Every scalar column as a JSON object (NULLs included as `null`), in column order. It
    /// serializes straight from the datums: a payload's JSON text is written in one pass, with no
    /// `serde_json::Value` tree built, cloned and taken apart again in between.
    pub fn scalar_object(&self, enums: Enums) -> ScalarObject<'_> {
        ScalarObject { row: self, enums }
    }
}

/// A row's scalar columns as a JSON object (`Row::scalar_object`).
pub struct ScalarObject<'a> {
    row: &'a Row,
    enums: Enums,
}

impl Serialize for ScalarObject<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let row = self.row;
        let mut object = serializer.serialize_map(None)?;
        for (index, datum) in row.datums().into_iter().enumerate() {
            let att = row.attribute(index);
            let Some(base) = (!att.attisdropped).then(|| scalar_base_type(att.atttypid, self.enums)).flatten() else {
                continue;
            };
            let value = datum.map(|datum| Scalar { datum, typid: att.atttypid, base });
            object.serialize_entry(att.name(), &value)?;
        }
        object.end()
    }
}

fn is_scalar_type(typid: pg_sys::Oid, enums: Enums) -> bool {
    scalar_base_type(typid, enums).is_some()
}

/// A type and enum rule, and `scalar_base_type`'s answer for them.
type KnownBaseType = ((pg_sys::Oid, Enums), Option<pg_sys::Oid>);

thread_local! {
    /// `scalar_base_type`'s answers, by type and enum rule: every payload asks for each of its
    /// columns, two catalog cache lookups each. Emptied whenever a type changes (`init`).
    static BASE_TYPES: RefCell<Vec<KnownBaseType>> = const { RefCell::new(Vec::new()) };
}

pub fn init() {
    // SAFETY: registered once per backend, from _PG_init; the callback is pg_guard'ed.
    unsafe {
        pg_sys::CacheRegisterSyscacheCallback(pg_sys::SysCacheIdentifier::TYPEOID as i32, Some(types_changed), 0.into())
    };
}

#[pg_guard]
unsafe extern "C-unwind" fn types_changed(_arg: pg_sys::Datum, _cache: i32, _hash: u32) {
    BASE_TYPES.with(|types| types.borrow_mut().clear());
}

/// The base type (domains resolved) of a scalar type, `None` for any other type.
fn scalar_base_type(typid: pg_sys::Oid, enums: Enums) -> Option<pg_sys::Oid> {
    let known =
        BASE_TYPES.with(|types| types.borrow().iter().find(|(key, _)| *key == (typid, enums)).map(|&(_, base)| base));
    known.unwrap_or_else(|| {
        let base = look_up_scalar_base_type(typid, enums);
        BASE_TYPES.with(|types| types.borrow_mut().push(((typid, enums), base)));
        base
    })
}

fn look_up_scalar_base_type(typid: pg_sys::Oid, enums: Enums) -> Option<pg_sys::Oid> {
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

/// A non-null datum of a scalar column, of type `typid` whose base type is `base`, as the JSON
/// value it stands for. Only built from a row's own columns, whose types these are.
struct Scalar {
    datum: pg_sys::Datum,
    typid: pg_sys::Oid,
    base: pg_sys::Oid,
}

impl Serialize for Scalar {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let (datum, base) = (self.datum, self.base);
        // SAFETY: each arm reads the datum as its base type, which it is (the struct's contract).
        unsafe {
            match base {
                pg_sys::BOOLOID => serializer.serialize_bool(datum.value() != 0),
                pg_sys::INT2OID => serializer.serialize_i16(datum.value() as i16),
                pg_sys::INT4OID => serializer.serialize_i32(datum.value() as i32),
                pg_sys::INT8OID => i64::from_polymorphic_datum(datum, false, base).serialize(serializer),
                pg_sys::FLOAT4OID => {
                    float(serializer, f32::from_polymorphic_datum(datum, false, base).unwrap_or_default() as f64)
                }
                pg_sys::FLOAT8OID => {
                    float(serializer, f64::from_polymorphic_datum(datum, false, base).unwrap_or_default())
                }
                pg_sys::NUMERICOID => {
                    let text = output_text(datum, base);
                    match serde_json::from_str::<serde_json::Number>(&text) {
                        Ok(number) => number.serialize(serializer),
                        Err(_) => serializer.serialize_str(&text),
                    }
                }
                pg_sys::TEXTOID | pg_sys::VARCHAROID | pg_sys::BPCHAROID => {
                    <&str>::from_polymorphic_datum(datum, false, pg_sys::TEXTOID).serialize(serializer)
                }
                // Formatted by the uuid crate, several times faster than pgrx::Uuid's Display.
                pg_sys::UUIDOID => pgrx::Uuid::from_polymorphic_datum(datum, false, base)
                    .map(|id| uuid::Uuid::from_bytes(*id.as_bytes()))
                    .serialize(serializer),
                pg_sys::TIMESTAMPTZOID => {
                    TimestampWithTimeZone::from_polymorphic_datum(datum, false, base).serialize(serializer)
                }
                pg_sys::TIMESTAMPOID => Timestamp::from_polymorphic_datum(datum, false, base).serialize(serializer),
                pg_sys::DATEOID => Date::from_polymorphic_datum(datum, false, base).serialize(serializer),
                pg_sys::TIMEOID => Time::from_polymorphic_datum(datum, false, base).serialize(serializer),
                pg_sys::TIMETZOID => TimeWithTimeZone::from_polymorphic_datum(datum, false, base).serialize(serializer),
                // name, "char" and enum labels.
                _ => serializer.serialize_str(&output_text(datum, self.typid)),
            }
        }
    }
}

/// A float JSON cannot hold (NaN, ±Infinity) goes as its text.
fn float<S: Serializer>(serializer: S, value: f64) -> Result<S::Ok, S::Error> {
    match value.is_finite() {
        true => serializer.serialize_f64(value),
        false => serializer.serialize_str(&value.to_string()),
    }
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
        let object = serde_json::to_value(Row::new(&mut tuple, tupdesc).scalar_object(Enums::Omit));
        pg_sys::DecrTupleDescRefCount(tupdesc);
        pgrx::JsonB(object.unwrap_or_else(|err| pgrx::error!("scalar_json: {err}")))
    }
}
