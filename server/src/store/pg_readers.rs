//! The PostgreSQL connections that reads and searches run on.
//!
//! sqlx's pool checks a connection with a round trip when it hands it out and again when it
//! takes it back, so each statement through it costs three round trips, not one. A search of
//! three statements paid nine, each waking a PostgreSQL backend. Here a connection goes back to
//! the idle list as it is, once its statement has run to the end, and is checked only when it
//! has sat idle for longer than [`FRESH_FOR`] (the rule HikariCP follows): under load a
//! connection is never idle that long, and after a quiet spell, when the database may have
//! restarted, the check costs nothing anyone waits for.
//!
//! A connection whose user did not give it back — its statement failed, or the request was
//! cancelled halfway through reading its answer — is closed, not reused: what it has left
//! unread is unknown.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{ConnectOptions as _, Connection as _};
use tokio::sync::{Semaphore, SemaphorePermit};

/// How long an idle connection is trusted without a check.
const FRESH_FOR: Duration = Duration::from_millis(500);

/// Up to `size` connections for reads (at least one), opened as needed and kept.
pub(super) struct PgReaders {
    options: PgConnectOptions,
    /// Each idle connection with the time it was given back.
    idle: Mutex<Vec<(PgConnection, Instant)>>,
    /// One permit per connection open or being opened.
    permits: Semaphore,
}

/// A connection taken from [`PgReaders`]: given back by [`Reader::release`], closed if
/// dropped.
pub(super) struct Reader<'a> {
    readers: &'a PgReaders,
    connection: PgConnection,
    _permit: SemaphorePermit<'a>,
}

impl PgReaders {
    pub(super) fn new(options: PgConnectOptions, size: u32) -> Self {
        Self {
            options,
            idle: Mutex::new(Vec::new()),
            permits: Semaphore::new(usize::try_from(size).unwrap_or(1).max(1)),
        }
    }

    /// A connection, once one of the `size` is free: the one given back last if it is still
    /// good, else a new one.
    pub(super) async fn get(&self) -> Result<Reader<'_>, sqlx::Error> {
        let permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| sqlx::Error::PoolClosed)?;
        self.take(permit).await
    }

    /// A connection of `self`, or of `other` when all of `self`'s are in use and one of
    /// `other`'s is free; when none is free, the first to be.
    pub(super) async fn get_or<'a>(
        &'a self,
        other: &'a PgReaders,
    ) -> Result<Reader<'a>, sqlx::Error> {
        if let Ok(permit) = self.permits.try_acquire() {
            return self.take(permit).await;
        }
        if let Ok(permit) = other.permits.try_acquire() {
            return other.take(permit).await;
        }
        // Waiting for a permit is cancelled cleanly: the wait that loses holds nothing.
        let (readers, permit) = tokio::select! {
            permit = self.permits.acquire() => (self, permit),
            permit = other.permits.acquire() => (other, permit),
        };
        readers
            .take(permit.map_err(|_| sqlx::Error::PoolClosed)?)
            .await
    }

    /// The connection `permit` stands for.
    async fn take<'a>(&'a self, permit: SemaphorePermit<'a>) -> Result<Reader<'a>, sqlx::Error> {
        loop {
            // Popped in its own statement, so that the lock is not held across an await.
            let idle = self.lock().pop();
            let Some((mut connection, since)) = idle else {
                break;
            };
            if since.elapsed() <= FRESH_FOR || connection.ping().await.is_ok() {
                return Ok(self.reader(connection, permit));
            }
            // It was lost (the database restarted, or a proxy hung up); the others, idle as
            // long or longer, are checked in turn.
        }
        let connection = self.options.connect().await?;
        Ok(self.reader(connection, permit))
    }

    fn reader<'a>(&'a self, connection: PgConnection, permit: SemaphorePermit<'a>) -> Reader<'a> {
        Reader {
            readers: self,
            connection,
            _permit: permit,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(PgConnection, Instant)>> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Closes the idle connections and refuses new ones; those in use close when dropped.
    pub(super) async fn close(&self) {
        self.permits.close();
        let idle = std::mem::take(&mut *self.lock());
        for (connection, _) in idle {
            let _ = connection.close().await;
        }
    }
}

impl Reader<'_> {
    pub(super) fn connection(&mut self) -> &mut PgConnection {
        &mut self.connection
    }

    /// Gives the connection back for the next reader, after a statement that ran to its end.
    /// A reader dropped instead closes its connection with it.
    pub(super) fn release(self) {
        let Reader {
            readers,
            connection,
            _permit,
        } = self;
        if !readers.permits.is_closed() {
            readers.lock().push((connection, Instant::now()));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::str::FromStr as _;
    use std::time::Duration;

    use sqlx::postgres::PgConnectOptions;

    use super::PgReaders;

    /// On the run's PostgreSQL database, when it has one (CI runs the suite on each backend).
    #[tokio::test]
    async fn the_other_connections_serve_while_its_own_are_all_in_use() {
        let Ok(url) = std::env::var("TELEMED_TEST_DATABASE_URL") else {
            return;
        };
        let options = PgConnectOptions::from_str(&url).expect("a PostgreSQL URL");
        let own = PgReaders::new(options.clone(), 1);
        let other = PgReaders::new(options, 1);
        let first = own.get_or(&other).await.expect("a connection");
        assert!(
            std::ptr::eq(first.readers, &own),
            "its own while one is free"
        );
        let second = own.get_or(&other).await.expect("a connection");
        assert!(
            std::ptr::eq(second.readers, &other),
            "the other's while its own is in use"
        );
        // All in use: the first given back serves.
        let waiting = own.get_or(&other);
        tokio::pin!(waiting);
        assert!(
            tokio::time::timeout(Duration::from_millis(50), &mut waiting)
                .await
                .is_err(),
            "none is free"
        );
        second.release();
        let third = waiting.await.expect("a connection");
        assert!(std::ptr::eq(third.readers, &other), "the one given back");
        first.release();
        third.release();
        own.close().await;
        other.close().await;
    }
}
