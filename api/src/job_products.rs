//! Which product each job belongs to, remembered. A job's product never changes, so
//! a report or a renewal need not ask the database for it before its transaction
//! (one round trip fewer per factory write). Bounded: the oldest entries are
//! forgotten first, and a miss asks the database (`job_view`) and remembers.

use gigafactory_projections::jobs;
use sqlx::PgPool;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use uuid::Uuid;

/// The remembered products of jobs (shared by every request of a process).
#[derive(Debug)]
pub struct JobProducts {
    capacity: usize,
    inner: Mutex<Remembered>,
}

#[derive(Debug, Default)]
struct Remembered {
    products: HashMap<Uuid, Arc<str>>,
    /// Insertion order, for forgetting the oldest.
    order: VecDeque<Uuid>,
}

impl JobProducts {
    /// Remembers at most `capacity` jobs.
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            inner: Mutex::new(Remembered::default()),
        }
    }

    /// Remembers that `job` belongs to `product`.
    pub fn remember(&self, job: Uuid, product: &str) {
        let mut inner = self.inner.lock().expect("job products lock");
        if inner.products.contains_key(&job) {
            return;
        }
        while inner.order.len() >= self.capacity {
            if let Some(oldest) = inner.order.pop_front() {
                inner.products.remove(&oldest);
            }
        }
        inner.products.insert(job, Arc::from(product));
        inner.order.push_back(job);
    }

    /// The products of `job_ids` that exist: remembered ones, the rest read from
    /// `job_view` in one query (and remembered).
    pub async fn of(
        &self,
        pool: &PgPool,
        job_ids: &[Uuid],
    ) -> Result<HashMap<Uuid, String>, sqlx::Error> {
        let mut found = HashMap::with_capacity(job_ids.len());
        let mut missing = Vec::new();
        {
            let inner = self.inner.lock().expect("job products lock");
            for id in job_ids {
                match inner.products.get(id) {
                    Some(product) => {
                        found.insert(*id, product.to_string());
                    }
                    None => missing.push(*id),
                }
            }
        }
        if !missing.is_empty() {
            let read = jobs::products_of(&mut *pool.acquire().await?, &missing).await?;
            for (id, product) in read {
                self.remember(id, &product);
                found.insert(id, product);
            }
        }
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_jobs_are_forgotten_first() {
        let products = JobProducts::new(2);
        let (a, b, c) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        products.remember(a, "p1");
        products.remember(b, "p2");
        products.remember(a, "p1");
        products.remember(c, "p3");
        let inner = products.inner.lock().unwrap();
        assert_eq!(inner.products.len(), 2);
        assert!(!inner.products.contains_key(&a));
        assert_eq!(inner.products.get(&b).map(|p| &**p), Some("p2"));
        assert_eq!(inner.products.get(&c).map(|p| &**p), Some("p3"));
    }
}
