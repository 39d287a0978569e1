//! Statements planned once per backend and kept: the extension's per-row SQL (the log's inserts,
//! a message's numbering) pays for parsing and planning once, not once per call.

use pgrx::PgOid;
use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;
use pgrx::spi::OwnedPreparedStatement;
use std::cell::RefCell;
use std::rc::Rc;

thread_local! {
    /// SQL text → kept plan.
    static PLANS: RefCell<Vec<(&'static str, Rc<OwnedPreparedStatement>)>> = const { RefCell::new(Vec::new()) };
}

/// Runs `sql` through this backend's kept plan for it, preparing it on first use, and maps each
/// row it returns. `what` names the work in the error a failing SPI call raises. Every statement
/// takes its own snapshot (under READ COMMITTED), as a PL/pgSQL statement does. Re-entrant: a
/// statement's triggers may run kept statements of their own.
pub fn run_kept<T>(
    what: &str,
    sql: &'static str,
    types: &[pg_sys::Oid],
    args: &[DatumWithOid],
    mut row: impl FnMut(&pgrx::spi::SpiHeapTupleData) -> Result<T, pgrx::spi::Error>,
) -> Vec<T> {
    Spi::connect_mut(|client| -> Result<Vec<T>, pgrx::spi::Error> {
        let kept =
            PLANS.with(|plans| plans.borrow().iter().find(|(text, _)| *text == sql).map(|(_, plan)| plan.clone()));
        let plan = match kept {
            Some(plan) => plan,
            None => {
                let types: Vec<PgOid> = types.iter().copied().map(PgOid::from).collect();
                let plan = Rc::new(client.prepare_mut(sql, &types)?.keep());
                PLANS.with(|plans| plans.borrow_mut().push((sql, plan.clone())));
                plan
            }
        };
        let rows = client.update(&*plan, None, args)?;
        rows.map(|tuple| row(&tuple)).collect()
    })
    .unwrap_or_else(|err| pgrx::error!("{what} failed: {err}"))
}
