//! Answers of the row-level security helpers' reads, given again without running the read while
//! nothing it could see has changed.
//!
//! A message asks the same questions several times (an agent's memberships six times, a
//! visitor's session twice and its conversations three times), each a statement of ~35-70k
//! instructions, and the reads of an API call or a dashboard page ask them again. An answer is
//! given again only within the transaction that read it, while that transaction has written
//! nothing, and while no transaction anywhere has ended since. A transaction that has written
//! nothing sees only rows that committed transactions wrote, and while `xactCompletionCount`
//! stands still every new snapshot shows the same ones: that is PostgreSQL's own test for
//! reusing a snapshot (GetSnapshotDataReuse). So a kept answer is the one the read would give
//! now. A revocation committed elsewhere makes the next read run again; once the transaction
//! writes anything (a revocation of its own, a message's first row), nothing is kept, so a
//! message's questions after that are read afresh.

use crate::kept_plans::run_kept;
use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;
use std::any::Any;
use std::cell::RefCell;
use std::rc::Rc;

/// What a read in this backend would see, as long as its transaction has written nothing.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Visibility {
    transaction: pg_sys::LocalTransactionId,
    completions: u64,
    user: pg_sys::Oid,
}

/// The visibility a read would have now, or None if it cannot be told apart from another's: the
/// transaction has written (it has a transaction id), or its snapshot has no completion count
/// (one restored in a parallel worker, or imported).
fn visibility_now() -> Option<Visibility> {
    // SAFETY: called inside a transaction, by a function or trigger. GetTransactionSnapshot is
    // the snapshot a statement run now would read with (run_kept's SPI takes it the same way).
    unsafe {
        if pg_sys::GetTopTransactionIdIfAny() != pg_sys::InvalidTransactionId {
            return None;
        }
        let completions = (*pg_sys::GetTransactionSnapshot()).snapXactCompletionCount;
        (completions != 0).then(|| Visibility {
            transaction: (*pg_sys::MyProc).lxid,
            completions,
            user: pg_sys::GetUserId(),
        })
    }
}

/// The answers read at one visibility: a handful per statement, so a short list.
struct Answers {
    seen_at: Option<Visibility>,
    kept: Vec<(&'static str, Vec<pgrx::Uuid>, Rc<dyn Any>)>,
}

/// A statement asking for many different keys at one visibility cannot grow the backend.
const MOST_ANSWERS: usize = 32;

thread_local! {
    static ANSWERS: RefCell<Answers> = const { RefCell::new(Answers { seen_at: None, kept: Vec::new() }) };
}

/// Runs the kept read `sql` with uuid parameters `args`, as `run_kept` does, unless it already
/// answered the same read with the same arguments at the visibility a read has now.
pub fn read_kept<T: Clone + 'static>(
    what: &str,
    sql: &'static str,
    args: &[pgrx::Uuid],
    row: impl FnMut(&pgrx::spi::SpiHeapTupleData) -> Result<T, pgrx::spi::Error>,
) -> Vec<T> {
    let now = visibility_now();
    let known = now.and_then(|now| {
        ANSWERS.with(|answers| {
            let answers = answers.borrow();
            if answers.seen_at != Some(now) {
                return None;
            }
            let (_, _, answer) = answers.kept.iter().find(|(text, keys, _)| *text == sql && keys.as_slice() == args)?;
            answer.downcast_ref::<Vec<T>>().cloned()
        })
    });
    if let Some(answer) = known {
        return answer;
    }
    const UUIDS: [pg_sys::Oid; 2] = [pg_sys::UUIDOID; 2];
    let datums: Vec<DatumWithOid> = args.iter().map(|&id| id.into()).collect();
    let answer = run_kept(what, sql, &UUIDS[..args.len()], &datums, row);
    if let Some(now) = now {
        ANSWERS.with(|answers| {
            let mut answers = answers.borrow_mut();
            if answers.seen_at != Some(now) || answers.kept.len() >= MOST_ANSWERS {
                answers.kept.clear();
                answers.seen_at = Some(now);
            }
            answers.kept.push((sql, args.to_vec(), Rc::new(answer.clone())));
        });
    }
    answer
}
