//! The stores of one configuration: the primary, then each mirror (`store.mirrors`), and
//! whether a write needs every copy (`store.require = all`) or the primary's (`primary`).
//! What the commands share about them lives here once: the primary's result is the job's and
//! a mirror's failure is reported beside it ([`StoreSet::each`]); a read starts where the
//! manifest was found and falls back through the others ([`StoreSet::starting_at`]).

use std::future::Future;

use super::Store;
use crate::error::Error;

pub struct StoreSet {
    /// The primary first; never empty.
    stores: Vec<Store>,
    require_all: bool,
}

/// What a job did in one mirror (numbered from 1, in `store.mirrors` order).
pub struct InMirror<T> {
    pub mirror: usize,
    pub result: Result<T, Error>,
}

impl StoreSet {
    pub fn new(primary: Store, mirrors: Vec<Store>, require_all: bool) -> StoreSet {
        let mut stores = vec![primary];
        stores.extend(mirrors);
        StoreSet {
            stores,
            require_all,
        }
    }

    pub fn primary(&self) -> &Store {
        &self.stores[0]
    }

    /// Every store, the primary first.
    pub fn all(&self) -> &[Store] {
        &self.stores
    }

    /// The mirrors with their numbers (1, 2, ...).
    pub fn mirrors(&self) -> impl Iterator<Item = (usize, &Store)> {
        self.stores.iter().enumerate().skip(1)
    }

    /// `store.require = all`: a write counts only once every copy holds it.
    pub fn require_all(&self) -> bool {
        self.require_all
    }

    /// `first`, then every other store in order: where a read fetches from once `first` had
    /// what it looked for.
    pub fn starting_at<'a>(&'a self, first: &'a Store) -> Vec<&'a Store> {
        std::iter::once(first)
            .chain(self.stores.iter().filter(|s| !std::ptr::eq(*s, first)))
            .collect()
    }

    /// Runs `job` on the primary, then on each mirror, one after the other. The primary's
    /// result is the job's (its failure ends it before any mirror); each mirror's comes back
    /// beside it for the caller to report or to fail on (`require_all`).
    pub async fn each<'a, T, F, Fut>(&'a self, job: F) -> Result<(T, Vec<InMirror<T>>), Error>
    where
        F: Fn(&'a Store) -> Fut,
        Fut: Future<Output = Result<T, Error>>,
    {
        let primary = job(self.primary()).await?;
        let mut mirrors = Vec::new();
        for (mirror, store) in self.mirrors() {
            mirrors.push(InMirror {
                mirror,
                result: job(store).await,
            });
        }
        Ok((primary, mirrors))
    }
}
