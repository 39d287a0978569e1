//! In-backend tests (`cargo pgrx test`).
