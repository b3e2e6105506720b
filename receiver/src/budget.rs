//! The receiver-wide budget of request bytes in flight
//! (`receivers.otlp.max_in_flight_bytes`).
//!
//! Every export request, over gRPC or HTTP, is charged its body size: over HTTP chunk
//! by chunk as the bytes arrive, over gRPC the length in the message prefix as soon as
//! it is in (tonic reserves that buffer) and every byte beyond, topped up to its decompressed size once decompressed, and,
//! before decoding, to that plus the estimated size of its decoded form
//! ([`crate::estimate`]: decoded OTLP can take up to ~60 times its wire size). A request
//! whose estimate alone exceeds the whole budget is refused for good (HTTP 413, gRPC
//! `RESOURCE_EXHAUSTED` without a retry delay).
//! The charge is held until the answer is built — through decoding, processing and the
//! wait for the commit — so it also covers the request's records in the write queue. A
//! request that finds the budget spent is refused at once, without waiting (HTTP 429,
//! gRPC `RESOURCE_EXHAUSTED`, both with a retry delay): the request bytes in memory
//! never exceed the budget, whatever the number of clients.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Budget unit: charges are rounded up to whole KiB, so that `u32` permit counts
/// cover any size.
const UNIT: usize = 1024;

/// The delay suggested to a client refused for lack of budget.
pub(crate) const BUSY_RETRY_AFTER: Duration = Duration::from_secs(1);

/// The shared budget; cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct InFlightBudget {
    semaphore: Arc<Semaphore>,
    units: usize,
}

/// The budget is spent: the request must be refused (retryable).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Exhausted {
    /// What the request needed in total, in bytes.
    pub(crate) wanted: usize,
    /// The whole budget, in bytes.
    pub(crate) budget: usize,
}

impl Exhausted {
    /// The message sent to the client.
    pub(crate) fn message(&self) -> String {
        format!(
            "collector busy: request bytes in flight are at the limit of {} bytes \
             (receivers.otlp.max_in_flight_bytes; this request needs {}), retry later",
            self.budget, self.wanted
        )
    }
}

/// Why a request was refused before decoding (see [`Charge::ensure_decoded`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum DecodeRefusal {
    /// The request alone, decoded, would take more than the whole budget: it can
    /// never be taken (HTTP 413, gRPC `RESOURCE_EXHAUSTED` without a retry delay).
    TooLarge {
        /// Wire bytes plus the estimate of the decoded request.
        wanted: usize,
        /// The whole budget, in bytes.
        budget: usize,
    },
    /// The budget is spent for now (retryable).
    Busy(Exhausted),
}

impl DecodeRefusal {
    /// The message sent to the client for [`DecodeRefusal::TooLarge`].
    pub(crate) fn too_large_message(wanted: usize, budget: usize) -> String {
        format!(
            "request too large once decoded: its {wanted} bytes (body plus the estimated \
             size of its decoded records) exceed the receiver's whole in-flight budget of \
             {budget} bytes (receivers.otlp.max_in_flight_bytes); send fewer records or \
             attributes per request"
        )
    }
}

impl InFlightBudget {
    /// A budget of `bytes` (rounded down to whole KiB, at least one KiB).
    pub(crate) fn new(bytes: usize) -> InFlightBudget {
        let units = (bytes / UNIT).clamp(1, Semaphore::MAX_PERMITS);
        InFlightBudget {
            semaphore: Arc::new(Semaphore::new(units)),
            units,
        }
    }

    /// The whole budget in bytes.
    pub(crate) fn bytes(&self) -> usize {
        self.units.saturating_mul(UNIT)
    }

    /// Bytes currently charged to requests in flight.
    #[cfg(test)]
    pub(crate) fn in_use(&self) -> usize {
        self.units
            .saturating_sub(self.semaphore.available_permits())
            .saturating_mul(UNIT)
    }

    /// An empty charge, to be grown as the request's size becomes known.
    pub(crate) fn charge(&self) -> Charge {
        Charge {
            budget: self.clone(),
            permit: None,
            units: 0,
        }
    }
}

/// Bytes charged to one request; given back when dropped.
#[derive(Debug)]
pub(crate) struct Charge {
    budget: InFlightBudget,
    permit: Option<OwnedSemaphorePermit>,
    units: usize,
}

impl Charge {
    /// Grows the charge to at least `bytes` (no-op if it is already that large).
    /// Never waits: fails when the budget does not have the difference left.
    pub(crate) fn ensure(&mut self, bytes: usize) -> Result<(), Exhausted> {
        let wanted = bytes.div_ceil(UNIT);
        if wanted <= self.units {
            return Ok(());
        }
        let exhausted = || Exhausted {
            wanted: bytes,
            budget: self.budget.bytes(),
        };
        let more = u32::try_from(wanted - self.units).map_err(|_| exhausted())?;
        let permit = self
            .budget
            .semaphore
            .clone()
            .try_acquire_many_owned(more)
            .map_err(|_| exhausted())?;
        match &mut self.permit {
            Some(held) => held.merge(permit),
            None => self.permit = Some(permit),
        }
        self.units = wanted;
        Ok(())
    }

    /// Grows the charge to cover a request about to be decoded: its `wire` bytes (still
    /// held while decoding) plus `decoded`, the estimate of its decoded form
    /// ([`crate::estimate`]). Refuses for good when that exceeds the whole budget.
    pub(crate) fn ensure_decoded(
        &mut self,
        wire: usize,
        decoded: usize,
    ) -> Result<(), DecodeRefusal> {
        let wanted = wire.saturating_add(decoded);
        let budget = self.budget.bytes();
        if wanted > budget {
            return Err(DecodeRefusal::TooLarge { wanted, budget });
        }
        self.ensure(wanted).map_err(DecodeRefusal::Busy)
    }

    /// An empty charge on the same budget; the bytes of this one are given back.
    pub(crate) fn release(&self) -> Charge {
        self.budget.charge()
    }

    /// Bytes charged so far.
    #[cfg(test)]
    pub(crate) fn bytes(&self) -> usize {
        self.units.saturating_mul(UNIT)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charges_are_given_back_on_drop() {
        let budget = InFlightBudget::new(10 * 1024);
        let mut a = budget.charge();
        a.ensure(6 * 1024).unwrap();
        assert_eq!(budget.in_use(), 6 * 1024);
        let mut b = budget.charge();
        let refused = b.ensure(5 * 1024).unwrap_err();
        assert_eq!(refused.wanted, 5 * 1024);
        assert_eq!(refused.budget, 10 * 1024);
        assert!(refused.message().contains("max_in_flight_bytes"));
        b.ensure(4 * 1024).unwrap();
        assert_eq!(budget.in_use(), 10 * 1024);
        drop(a);
        assert_eq!(budget.in_use(), 4 * 1024);
        drop(b);
        assert_eq!(budget.in_use(), 0);
    }

    #[test]
    fn growing_charges_only_the_difference_and_rounds_up() {
        let budget = InFlightBudget::new(8 * 1024);
        let mut charge = budget.charge();
        charge.ensure(1).unwrap();
        assert_eq!(charge.bytes(), 1024);
        charge.ensure(1000).unwrap();
        assert_eq!(charge.bytes(), 1024, "already covered");
        charge.ensure(3 * 1024 + 1).unwrap();
        assert_eq!(charge.bytes(), 4 * 1024);
        assert_eq!(budget.in_use(), 4 * 1024);
        assert!(charge.ensure(9 * 1024).is_err());
        assert_eq!(
            charge.bytes(),
            4 * 1024,
            "a refused growth keeps the charge"
        );
        assert_eq!(budget.in_use(), 4 * 1024);
    }

    #[test]
    fn decoded_estimates_refuse_for_good_or_for_now() {
        let budget = InFlightBudget::new(64 * 1024);
        let mut a = budget.charge();
        a.ensure(10 * 1024).unwrap();
        a.ensure_decoded(10 * 1024, 30 * 1024).unwrap();
        assert_eq!(budget.in_use(), 40 * 1024);
        let mut b = budget.charge();
        assert_eq!(
            b.ensure_decoded(1024, 64 * 1024),
            Err(DecodeRefusal::TooLarge {
                wanted: 65 * 1024,
                budget: 64 * 1024
            })
        );
        assert!(matches!(
            b.ensure_decoded(1024, 30 * 1024),
            Err(DecodeRefusal::Busy(_))
        ));
        assert_eq!(budget.in_use(), 40 * 1024);
        drop(a);
        b.ensure_decoded(1024, 30 * 1024).unwrap();
        assert_eq!(budget.in_use(), 31 * 1024);
        assert!(DecodeRefusal::too_large_message(1, 2).contains("max_in_flight_bytes"));
    }

    #[test]
    fn a_request_larger_than_the_budget_is_refused() {
        let budget = InFlightBudget::new(4096);
        assert!(budget.charge().ensure(usize::MAX).is_err());
        assert_eq!(budget.in_use(), 0);
    }
}
