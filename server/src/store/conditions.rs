//! Locks that make a conditional write's search and write one step.
//!
//! A conditional create (`If-None-Exist`, a transaction entry's `ifNoneExist`) or a
//! conditional update searches first and writes second. Clients retry such requests when an
//! answer is slow, so the same condition often arrives several times at once; without a lock
//! each copy searches before any has written, and each creates. So the request holds the lock
//! of its condition from before its search until its write has committed:
//!
//! - within a server, an async mutex per condition;
//! - across the servers of one PostgreSQL database, also a transaction-level advisory lock
//!   (`pg_advisory_xact_lock`) on a connection of its own, released by the transaction's end,
//!   so also when a request is cancelled.
//!
//! A condition is its resource type and its search parameters, in sorted order: `a=1&b=2` and
//! `b=2&a=1` are one condition. Two conditions that differ in text but match the same resources
//! are not serialized; the copies of one retried request are.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use fhir_models::ResourceType;
use sha2::{Digest as _, Sha256};
use sqlx::{PgPool, Postgres, Transaction};
use tokio::sync::{OwnedMutexGuard, OwnedSemaphorePermit, Semaphore};

use crate::error::FhirError;

/// The key of a condition: the first eight bytes of a SHA-256 over its type and its sorted
/// parameters. It is the same in every server, as PostgreSQL's advisory lock needs.
pub fn condition_key(rt: ResourceType, pairs: &[(String, String)]) -> i64 {
    let mut sorted: Vec<&(String, String)> = pairs.iter().collect();
    sorted.sort();
    let mut hash = Sha256::new();
    hash.update(rt.as_str().as_bytes());
    for (name, value) in sorted {
        for part in [name, value] {
            hash.update((part.len() as u64).to_be_bytes());
            hash.update(part.as_bytes());
        }
    }
    let digest = hash.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    i64::from_be_bytes(first)
}

/// The locks of the conditions being written now.
pub(super) struct ConditionLocks {
    /// A mutex per condition while anyone holds or waits for it.
    held: Mutex<HashMap<i64, Arc<tokio::sync::Mutex<()>>>>,
    /// On PostgreSQL: the pool the advisory locks are taken on, and a bound on how many of its
    /// connections they hold at once (half), so that the requests holding them always find
    /// others for their own searches and writes.
    postgres: Option<(PgPool, Arc<Semaphore>)>,
}

/// Held conditions; dropping it releases them.
pub struct ConditionGuard {
    locks: Arc<ConditionLocks>,
    /// Each condition with its mutex, held.
    local: Vec<(i64, OwnedMutexGuard<()>)>,
    /// The transaction that holds the advisory locks, and its share of the pool.
    postgres: Option<(Transaction<'static, Postgres>, OwnedSemaphorePermit)>,
}

impl ConditionLocks {
    pub(super) fn new(postgres: Option<(PgPool, u32)>) -> Self {
        Self {
            held: Mutex::new(HashMap::new()),
            postgres: postgres.map(|(pool, connections)| {
                let holders = usize::try_from(connections / 2).unwrap_or(1).max(1);
                (pool, Arc::new(Semaphore::new(holders)))
            }),
        }
    }

    /// Takes the locks of `keys`, in ascending order so that two requests that need some of
    /// the same never wait for each other in a circle.
    pub(super) async fn lock(
        self: &Arc<Self>,
        mut keys: Vec<i64>,
    ) -> Result<ConditionGuard, FhirError> {
        keys.sort_unstable();
        keys.dedup();
        let mut guard = ConditionGuard {
            locks: Arc::clone(self),
            local: Vec::with_capacity(keys.len()),
            postgres: None,
        };
        if keys.is_empty() {
            return Ok(guard);
        }
        for &key in &keys {
            let mutex = {
                let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
                Arc::clone(held.entry(key).or_default())
            };
            guard.local.push((key, mutex.lock_owned().await));
        }
        if let Some((pool, holders)) = &self.postgres {
            let permit = Arc::clone(holders)
                .acquire_owned()
                .await
                .map_err(|e| FhirError::Internal(e.into()))?;
            let mut tx = pool.begin().await?;
            // One round trip, the keys taken in ascending order.
            sqlx::query(
                "SELECT pg_advisory_xact_lock(k) FROM (SELECT unnest($1::bigint[]) AS k ORDER BY k) AS keys",
            )
            .bind(&keys)
            .execute(&mut *tx)
            .await?;
            guard.postgres = Some((tx, permit));
        }
        Ok(guard)
    }
}

impl Drop for ConditionGuard {
    fn drop(&mut self) {
        // An abandoned transaction is rolled back when its connection goes back to the pool.
        self.postgres = None;
        let mut held = self.locks.held.lock().unwrap_or_else(|p| p.into_inner());
        for (key, local) in self.local.drain(..) {
            drop(local);
            // The map's own reference is the last one: nobody waits for this condition.
            if held
                .get(&key)
                .is_some_and(|mutex| Arc::strong_count(mutex) == 1)
            {
                held.remove(&key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn a_condition_is_its_type_and_its_parameters_in_any_order() {
        let one = condition_key(
            ResourceType::Patient,
            &pairs(&[("identifier", "x|1"), ("active", "true")]),
        );
        let reordered = condition_key(
            ResourceType::Patient,
            &pairs(&[("active", "true"), ("identifier", "x|1")]),
        );
        assert_eq!(one, reordered);
        let other_type = condition_key(
            ResourceType::Practitioner,
            &pairs(&[("identifier", "x|1"), ("active", "true")]),
        );
        assert_ne!(one, other_type);
        // Lengths are hashed: moving a character between name and value is another condition.
        let shifted = condition_key(ResourceType::Patient, &pairs(&[("identifie", "rx|1")]));
        let unshifted = condition_key(ResourceType::Patient, &pairs(&[("identifier", "x|1")]));
        assert_ne!(shifted, unshifted);
    }

    #[tokio::test]
    async fn one_condition_is_held_by_one_request_at_a_time_and_forgotten_when_free() {
        let locks = Arc::new(ConditionLocks::new(None));
        let first = locks.lock(vec![7, 3]).await.expect("locked");
        // Another condition is free.
        let other = locks.lock(vec![11]).await.expect("locked");
        let waiting = tokio::spawn({
            let locks = Arc::clone(&locks);
            async move { locks.lock(vec![3]).await.map(|_| ()) }
        });
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(!waiting.is_finished(), "a held condition was taken twice");
        drop(first);
        waiting.await.expect("task").expect("locked");
        drop(other);
        assert!(locks.held.lock().expect("map").is_empty());
    }
}
