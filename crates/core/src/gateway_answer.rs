//! What a payment gateway's answer does to a charge: its outcome, when it
//! is tried again, whether it has failed, and what a decline does to the
//! rider's money. Pure: the dispatcher passes the answer, the charge's
//! attempts so far, the wall clock's `now` and a random draw, and writes
//! what comes back (docs/payment-gateway.md).
//!
//! Two clocks meet here, on purpose: retries and the retry budget run on
//! the wall clock (`wall_now`: how the gateway behaves in real time, even
//! when the demo compresses a day into a minute), while the shell dates a
//! decided outcome by the server's clock.

use crate::charges::ChargeOutcome;
use crate::clock::UnixMillis;
use crate::money::Cents;
use crate::retry::RetryPolicy;

/// The gateway's answer to one charge request, as the decision needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GatewayAnswer {
    /// It took the debit or paid the credit.
    Succeeded,
    /// Final for this key: the payer could not pay.
    Declined,
    /// Worth the same request again (a timeout, a lost answer, a 5xx, a
    /// 429), with the gateway's `Retry-After` in ms if it gave one.
    Retry {
        /// The gateway's hint, in ms.
        retry_after_ms: Option<i64>,
    },
    /// A request under the same key is still being processed (a 409).
    InFlight {
        /// The gateway's hint, in ms.
        retry_after_ms: Option<i64>,
    },
    /// The gateway refused the request itself (a 4xx other than 409 and
    /// 429): a bug or a misconfiguration a person must see.
    Refused,
}

/// How often a charge has been sent, and since when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attempts {
    /// Requests that went out.
    pub count: u32,
    /// When the first went out (wall clock, Unix ms); `None` before it.
    pub first_at: Option<UnixMillis>,
}

/// What a declined charge does to the rider's money.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeclineEffect {
    /// A declined debit: the card owes this much more (and is denied).
    Arrears(Cents),
    /// A declined credit: the rider is still owed this much, for a person
    /// to pay out.
    CreditOwed(Cents),
    /// A declined zero: nothing.
    Nothing,
}

/// What the answer does to the charge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterAnswer {
    /// Decided: it succeeded.
    Succeeded,
    /// Decided: it was declined, with this effect.
    Declined(DeclineEffect),
    /// Sent again at `at` (wall clock); `failed` once its retry budget is
    /// spent or the gateway refused it (a person looks at it).
    TryAgain {
        /// When it is due again.
        at: UnixMillis,
        /// Whether it is now `failed` rather than `pending`.
        failed: bool,
    },
}

impl AfterAnswer {
    /// The charge's outcome after the answer.
    pub fn outcome(self) -> ChargeOutcome {
        match self {
            AfterAnswer::Succeeded => ChargeOutcome::Succeeded,
            AfterAnswer::Declined(_) => ChargeOutcome::Declined,
            AfterAnswer::TryAgain { failed: true, .. } => ChargeOutcome::Failed,
            AfterAnswer::TryAgain { failed: false, .. } => ChargeOutcome::Pending,
        }
    }
}

/// The answer's whole effect: the charge's next state and its attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AnswerDecision {
    /// What becomes of the charge.
    pub after: AfterAnswer,
    /// Its attempts, counting this one if a request went out.
    pub attempts: Attempts,
}

/// What `answer` does to a charge of `amount_cents` sent `before` times;
/// `sent`: a request went out this time (an answer can also be made up
/// without one, such as a refusal before sending), so it counts.
pub fn decide_answer(
    answer: GatewayAnswer,
    before: Attempts,
    sent: bool,
    amount_cents: Cents,
    policy: &RetryPolicy,
    wall_now: UnixMillis,
    random: u64,
) -> AnswerDecision {
    let attempts = Attempts {
        count: before.count.saturating_add(u32::from(sent)),
        first_at: before.first_at.or(sent.then_some(wall_now)),
    };
    let after = match answer {
        GatewayAnswer::Succeeded => AfterAnswer::Succeeded,
        GatewayAnswer::Declined => AfterAnswer::Declined(match amount_cents {
            debit if debit.is_positive() => DeclineEffect::Arrears(debit),
            credit if credit.is_negative() => DeclineEffect::CreditOwed(credit),
            _ => DeclineEffect::Nothing,
        }),
        GatewayAnswer::Retry { retry_after_ms } | GatewayAnswer::InFlight { retry_after_ms } => {
            let first = attempts.first_at.unwrap_or(wall_now);
            let next = policy.next_attempt(attempts.count, first, wall_now, retry_after_ms, random);
            AfterAnswer::TryAgain { at: next.at, failed: next.failed }
        }
        GatewayAnswer::Refused => {
            AfterAnswer::TryAgain { at: wall_now.saturating_add(policy.failed_retry_after_ms), failed: true }
        }
    };
    AnswerDecision { after, attempts }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const POLICY: RetryPolicy = RetryPolicy {
        backoff_initial_ms: 1_000,
        backoff_max_ms: 60_000,
        budget_ms: 3_600_000,
        failed_retry_after_ms: 600_000,
    };

    fn any_answer() -> impl Strategy<Value = GatewayAnswer> {
        let hint = proptest::option::of(any::<i64>());
        prop_oneof![
            Just(GatewayAnswer::Succeeded),
            Just(GatewayAnswer::Declined),
            hint.clone().prop_map(|retry_after_ms| GatewayAnswer::Retry { retry_after_ms }),
            hint.prop_map(|retry_after_ms| GatewayAnswer::InFlight { retry_after_ms }),
            Just(GatewayAnswer::Refused),
        ]
    }

    proptest! {
        /// Only a success or a decline decides a charge; a decline's effect
        /// follows the amount's sign; a charge tried again is due no
        /// earlier than now and is `failed` exactly when refused or past
        /// its budget; a request that went out counts once.
        #[test]
        fn an_answer_decides_a_charge_only_when_it_is_final(
            answer in any_answer(),
            count in any::<u32>(),
            first_at in proptest::option::of(0..4_102_444_800_000i64),
            sent in any::<bool>(),
            amount_cents in any::<i64>(),
            wall_now in 0..4_102_444_800_000i64,
            random in any::<u64>(),
        ) {
            let before = Attempts { count, first_at };
            let amount_cents = Cents::new(amount_cents);
            let decision = decide_answer(answer, before, sent, amount_cents, &POLICY, wall_now, random);
            let final_answer = matches!(answer, GatewayAnswer::Succeeded | GatewayAnswer::Declined);
            prop_assert_eq!(decision.after.outcome().is_final(), final_answer);
            prop_assert_eq!(decision.attempts.count, count.saturating_add(u32::from(sent)));
            prop_assert_eq!(decision.attempts.first_at, first_at.or(sent.then_some(wall_now)));
            match decision.after {
                AfterAnswer::Succeeded => prop_assert_eq!(answer, GatewayAnswer::Succeeded),
                AfterAnswer::Declined(effect) => prop_assert_eq!(effect, match amount_cents.get().signum() {
                    1 => DeclineEffect::Arrears(amount_cents),
                    -1 => DeclineEffect::CreditOwed(amount_cents),
                    _ => DeclineEffect::Nothing,
                }),
                AfterAnswer::TryAgain { at, failed } => {
                    prop_assert!(at >= wall_now);
                    let spent = wall_now.saturating_sub(decision.attempts.first_at.unwrap_or(wall_now)) >= POLICY.budget_ms;
                    prop_assert_eq!(failed, answer == GatewayAnswer::Refused || spent);
                }
            }
        }
    }

    #[test]
    fn a_refusal_fails_the_charge_and_waits_the_failed_interval() {
        let before = Attempts { count: u32::MAX, first_at: None };
        let decision = decide_answer(GatewayAnswer::Refused, before, true, Cents::new(1), &POLICY, i64::MAX, 0);
        assert_eq!(decision.after, AfterAnswer::TryAgain { at: i64::MAX, failed: true }, "saturates");
        assert_eq!(decision.attempts, Attempts { count: u32::MAX, first_at: Some(i64::MAX) });
        assert_eq!(decision.after.outcome(), ChargeOutcome::Failed);
    }
}
