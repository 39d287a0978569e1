//! Statements planned once per backend and kept: the extension's per-row SQL (the log's inserts,
//! a message's numbering) pays for parsing and planning once, not once per call.
//!
//! They run through PostgreSQL's SPI directly rather than pgrx's `SpiClient::update`, which
//! assigns the transaction an id before every statement it runs: a read (a visitor's history,
//! the relay's check of a channel, a row-level security helper) would then burn a transaction id
//! and write a commit record, and bring the next anti-wraparound vacuum closer. A transaction
//! here gets an id only when it writes.

use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;
use pgrx::spi::SpiHeapTupleData;
use std::cell::RefCell;
use std::ffi::CString;

thread_local! {
    /// SQL text → kept plan (SPI_keepplan: it lives as long as the backend).
    static PLANS: RefCell<Vec<(&'static str, pg_sys::SPIPlanPtr)>> = const { RefCell::new(Vec::new()) };
}

/// This backend's kept plan for `sql`, prepared on first use. Inside an SPI connection.
fn kept_plan(sql: &'static str, types: &[pg_sys::Oid]) -> Result<pg_sys::SPIPlanPtr, String> {
    if let Some(plan) = PLANS.with(|plans| plans.borrow().iter().find(|(text, _)| *text == sql).map(|&(_, plan)| plan))
    {
        return Ok(plan);
    }
    let text = CString::new(sql).map_err(|err| err.to_string())?;
    let mut types = types.to_vec();
    // SAFETY: within an SPI connection; the text and the types outlive the call. A kept plan is
    // moved out of the connection's memory, so that it survives SPI_finish.
    let plan = unsafe {
        let plan = pg_sys::SPI_prepare(text.as_ptr(), types.len() as i32, types.as_mut_ptr());
        if plan.is_null() || pg_sys::SPI_keepplan(plan) != 0 {
            let status = pg_sys::SPI_result;
            return Err(format!("could not prepare the statement (SPI status {status})"));
        }
        plan
    };
    PLANS.with(|plans| plans.borrow_mut().push((sql, plan)));
    Ok(plan)
}

/// Runs `sql` through this backend's kept plan for it, preparing it on first use, and maps each
/// row it returns. `what` names the work in the error a failing call raises. Every statement
/// takes its own snapshot (under READ COMMITTED) and sees what the calling statement wrote, as
/// a PL/pgSQL statement does. Re-entrant: a statement's triggers may run kept statements of
/// their own.
pub fn run_kept<T>(
    what: &str,
    sql: &'static str,
    types: &[pg_sys::Oid],
    args: &[DatumWithOid],
    mut row: impl FnMut(&SpiHeapTupleData) -> Result<T, pgrx::spi::Error>,
) -> Vec<T> {
    let rows = Spi::connect(|_| -> Result<Vec<T>, String> {
        let plan = kept_plan(sql, types)?;
        let (mut datums, mut nulls): (Vec<pg_sys::Datum>, Vec<std::ffi::c_char>) = args
            .iter()
            .map(|arg| match arg.datum() {
                Some(datum) => (datum.sans_lifetime(), b' ' as std::ffi::c_char),
                None => (pg_sys::Datum::from(0usize), b'n' as std::ffi::c_char),
            })
            .unzip();
        // SAFETY: within the SPI connection; the plan takes as many arguments as it was prepared
        // with (checked first: SPI_execute_plan reads that many). Not read-only: a fresh snapshot per statement, as
        // PL/pgSQL's statements have; the returned tuples stay valid until SPI_finish.
        unsafe {
            if pg_sys::SPI_getargcount(plan) as usize != args.len() {
                return Err(format!(
                    "{} arguments for a statement that takes {}",
                    args.len(),
                    pg_sys::SPI_getargcount(plan)
                ));
            }
            pg_sys::SPI_tuptable = std::ptr::null_mut();
            let status = pg_sys::SPI_execute_plan(plan, datums.as_mut_ptr(), nulls.as_mut_ptr(), false, 0);
            if status < 0 {
                return Err(format!("SPI status {status}"));
            }
            let table = pg_sys::SPI_tuptable;
            if table.is_null() {
                return Ok(Vec::new());
            }
            let tuples = std::slice::from_raw_parts((*table).vals, pg_sys::SPI_processed as usize);
            tuples
                .iter()
                .map(|&tuple| {
                    let data = SpiHeapTupleData::new((*table).tupdesc, tuple).map_err(|err| err.to_string())?;
                    let data = data.ok_or_else(|| "a row without a tuple descriptor".to_owned())?;
                    row(&data).map_err(|err| err.to_string())
                })
                .collect()
        }
    });
    rows.unwrap_or_else(|err| pgrx::error!("{what} failed: {err}"))
}

/// The first column of the first row `sql` returns through its kept plan, `None` when it returns
/// no row or NULL: a lookup's one value.
pub fn kept_value<T: FromDatum + IntoDatum>(
    what: &str,
    sql: &'static str,
    types: &[pg_sys::Oid],
    args: &[DatumWithOid],
) -> Option<T> {
    run_kept(what, sql, types, args, |row| row.get::<T>(1)).into_iter().next().flatten()
}
