//! A rider's account as money sees it: its states, the moves between them,
//! when the card is denied, and when a refund may close it. Pure: the
//! shell (`money::accounts`) reads the account, asks here, and writes the
//! answer in the same transaction.
//!
//! The states: `registered` (no agreement yet), `active` (may ride, owes
//! nothing), `in_arrears` (a debit was declined: denied until paid),
//! `refund_pending` (the deposit is on its way back: denied, no new keys),
//! `closed` (nothing held; may sign up again). Two invariants hold
//! after every move ([`assert_consistent`]): an active card owes nothing
//! and an in-arrears card owes something; a card owes only if it is
//! denied.

use crate::clock::UnixMillis;
use crate::money::Cents;

/// Where an account stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccountState {
    /// Signed up; no debit agreement or deposit yet.
    Registered,
    /// May ride: agreement signed, deposit paid, nothing owed.
    Active,
    /// A declined debit is owed: denied at the gates until paid.
    InArrears,
    /// The rider asked for the deposit back: denied, no new keys.
    RefundPending,
    /// Nothing owed or held; the card may sign up again.
    Closed,
}

impl AccountState {
    /// Every state, in declaration order.
    pub const ALL: [AccountState; 5] = [
        AccountState::Registered,
        AccountState::Active,
        AccountState::InArrears,
        AccountState::RefundPending,
        AccountState::Closed,
    ];

    /// Its name in the money store and the account API.
    pub fn as_str(self) -> &'static str {
        match self {
            AccountState::Registered => "registered",
            AccountState::Active => "active",
            AccountState::InArrears => "in_arrears",
            AccountState::RefundPending => "refund_pending",
            AccountState::Closed => "closed",
        }
    }

    /// The state named `name`; `None` for an unknown name.
    pub fn parse(name: &str) -> Option<AccountState> {
        AccountState::ALL.into_iter().find(|s| s.as_str() == name)
    }
}

/// A move the account's state does not allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WrongState {
    /// What was asked.
    pub action: &'static str,
    /// The states it needs.
    pub needs: &'static str,
}

/// Whether the gates must refuse the card: it owes, or its deposit is on
/// its way back (a closed card has no valid credential left, so it leaves
/// the list and the list stays bounded).
pub fn is_denied(state: AccountState, arrears_cents: Cents) -> bool {
    arrears_cents.is_positive() || state == AccountState::RefundPending
}

/// A closed card's rider signs up again.
pub fn reopen(state: AccountState) -> Result<AccountState, WrongState> {
    match state {
        AccountState::Closed => Ok(AccountState::Registered),
        _ => Err(WrongState { action: "signing up again", needs: "closed" }),
    }
}

/// The agreement is signed and the deposit paid: active, or in arrears if
/// a decline of an earlier agreement's day is still owed.
pub fn activate(state: AccountState, arrears_cents: Cents) -> Result<AccountState, WrongState> {
    match state {
        AccountState::Registered if arrears_cents.is_positive() => Ok(AccountState::InArrears),
        AccountState::Registered => Ok(AccountState::Active),
        _ => Err(WrongState { action: "activation", needs: "registered" }),
    }
}

/// Whether the card may be issued keys: only an active one.
pub fn may_issue_keys(state: AccountState) -> Result<(), WrongState> {
    match state {
        AccountState::Active => Ok(()),
        _ => Err(WrongState { action: "keys", needs: "active" }),
    }
}

/// The rider asks for the deposit back.
pub fn request_refund(state: AccountState) -> Result<AccountState, WrongState> {
    match state {
        AccountState::Active | AccountState::InArrears => Ok(AccountState::RefundPending),
        _ => Err(WrongState { action: "a refund", needs: "active or in_arrears" }),
    }
}

/// A debit was declined: an active card is now in arrears; any other
/// state stays (a refund-pending card stays pending, owing).
pub fn after_decline(state: AccountState) -> AccountState {
    match state {
        AccountState::Active => AccountState::InArrears,
        other => other,
    }
}

/// What is owed went down to `left` (a payment, a netted credit, the
/// deposit set against it): an in-arrears card rides again once nothing
/// is; any other state stays.
pub fn after_paying_down(state: AccountState, left_cents: Cents) -> AccountState {
    match state {
        AccountState::InArrears if !left_cents.is_positive() => AccountState::Active,
        other => other,
    }
}

/// When a refund asked for at `requested_at` is due: once no ride of the
/// card can still arrive, the end of its newest credential (or the
/// request, if later) plus `rides_arrive_within_ms` (the accepted
/// lateness of uploads and the validators' clock skew).
pub fn refund_due_at(
    keys_valid_until: Option<UnixMillis>,
    requested_at: UnixMillis,
    rides_arrive_within_ms: i64,
) -> UnixMillis {
    keys_valid_until.unwrap_or(requested_at).max(requested_at).saturating_add(rides_arrive_within_ms)
}

/// The longest credential the config allows
/// (`ride_code.credential_validity_secs`): how long a refund asked for
/// before due times were recorded waits for rides, besides the lateness.
const UNRECORDED_CREDENTIAL_MS: i64 = 604_800_000;

/// When a pending refund is due: the time recorded when it was asked for
/// ([`refund_due_at`]), or, for a refund asked for before due times were
/// recorded (a store from an older build), `requested_at` plus the longest
/// credential the config allows and `rides_arrive_within_ms`.
pub fn recorded_refund_due_at(
    recorded: Option<UnixMillis>,
    requested_at: UnixMillis,
    rides_arrive_within_ms: i64,
) -> UnixMillis {
    recorded.unwrap_or_else(|| requested_at.saturating_add(unrecorded_refund_wait_ms(rides_arrive_within_ms)))
}

/// How long after its request a refund with no recorded due time waits:
/// the same rule as [`recorded_refund_due_at`], for the store's query of
/// the refunds due.
pub fn unrecorded_refund_wait_ms(rides_arrive_within_ms: i64) -> i64 {
    UNRECORDED_CREDENTIAL_MS.saturating_add(rides_arrive_within_ms)
}

/// Why a pending refund cannot close yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotYet {
    /// Rides may still arrive until then.
    RidesMayArrive {
        /// When the last ride can have arrived.
        until: UnixMillis,
    },
    /// A charge is undecided or an entry waits for its exit.
    MoneyInFlight,
    /// Arrears the deposit did not cover.
    Owes {
        /// What is still owed.
        arrears_cents: Cents,
    },
    /// The deposit has not gone back yet.
    DepositHeld {
        /// What is still held.
        deposit_cents: Cents,
    },
}

/// What a refund-pending card's closing depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Closing {
    /// When its refund is due ([`refund_due_at`]).
    pub due_at: UnixMillis,
    /// A charge of it is undecided, or an entry of it waits for its exit.
    pub money_in_flight: bool,
    /// What it owes.
    pub arrears_cents: Cents,
    /// What is left of its deposit.
    pub deposit_cents: Cents,
}

/// Whether a refund-pending card may close at `now`, in this order: no
/// ride may still arrive, no money is in flight, nothing is owed, the
/// deposit has gone back.
pub fn may_close(closing: Closing, now: UnixMillis) -> Result<(), NotYet> {
    if now < closing.due_at {
        Err(NotYet::RidesMayArrive { until: closing.due_at })
    } else if closing.money_in_flight {
        Err(NotYet::MoneyInFlight)
    } else if closing.arrears_cents.is_positive() {
        Err(NotYet::Owes { arrears_cents: closing.arrears_cents })
    } else if closing.deposit_cents.is_positive() {
        Err(NotYet::DepositHeld { deposit_cents: closing.deposit_cents })
    } else {
        Ok(())
    }
}

/// The account invariants, asserted where a state and arrears are written:
/// arrears are never negative, an active card owes nothing and an
/// in-arrears card owes something.
pub fn assert_consistent(card_id: u64, state: AccountState, arrears_cents: Cents) {
    assert!(!arrears_cents.is_negative(), "card {card_id}: arrears {arrears_cents}");
    match state {
        AccountState::Active => assert!(arrears_cents.is_zero(), "card {card_id} is active and owes"),
        AccountState::InArrears => {
            assert!(arrears_cents.is_positive(), "card {card_id} is in arrears and owes nothing")
        }
        // A decline that lands after the card closed (or before a reopened
        // card is activated) is owed all the same: denied, and activation
        // then puts the card in arrears.
        AccountState::Registered | AccountState::RefundPending | AccountState::Closed => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// What happens to an account, as the shell does it.
    #[derive(Debug, Clone)]
    enum Event {
        Reopen,
        Activate,
        Decline(Cents),
        Pay(Cents),
        RequestRefund,
        SetOffDeposit(Cents),
        Close,
    }

    fn any_event() -> impl Strategy<Value = Event> {
        prop_oneof![
            Just(Event::Reopen),
            Just(Event::Activate),
            (1..1_000_000i64).prop_map(|c| Event::Decline(Cents::new(c))),
            (1..2_000_000i64).prop_map(|c| Event::Pay(Cents::new(c))),
            Just(Event::RequestRefund),
            (0..1_000_000i64).prop_map(|c| Event::SetOffDeposit(Cents::new(c))),
            Just(Event::Close),
        ]
    }

    proptest! {
        /// Whatever happens, in any order, the invariants hold after every
        /// move, and a card that owes is denied.
        #[test]
        fn every_move_keeps_the_account_consistent(events in proptest::collection::vec(any_event(), 0..40)) {
            let (mut state, mut arrears) = (AccountState::Registered, Cents::ZERO);
            for event in events {
                match event {
                    Event::Reopen => state = reopen(state).unwrap_or(state),
                    Event::Activate => state = activate(state, arrears).unwrap_or(state),
                    Event::Decline(amount) => {
                        arrears += amount;
                        state = after_decline(state);
                    }
                    Event::Pay(paid) => {
                        let left = arrears - paid;
                        state = after_paying_down(state, left);
                        arrears = left.max(Cents::ZERO);
                    }
                    Event::RequestRefund => state = request_refund(state).unwrap_or(state),
                    Event::SetOffDeposit(deposit) => {
                        arrears -= arrears.min(deposit);
                        state = after_paying_down(state, arrears);
                    }
                    Event::Close => {
                        let closing = Closing { due_at: 0, money_in_flight: false, arrears_cents: arrears, deposit_cents: Cents::ZERO };
                        if state == AccountState::RefundPending && may_close(closing, 0).is_ok() {
                            state = AccountState::Closed;
                        }
                    }
                }
                assert_consistent(7, state, arrears);
                prop_assert!(!arrears.is_positive() || is_denied(state, arrears));
            }
        }
    }

    #[test]
    fn names_read_back_and_moves_are_refused_from_the_wrong_state() {
        for state in AccountState::ALL {
            assert_eq!(AccountState::parse(state.as_str()), Some(state));
        }
        assert_eq!(AccountState::parse(""), None);
        assert!(activate(AccountState::Active, Cents::ZERO).is_err());
        assert!(request_refund(AccountState::Registered).is_err());
        assert!(may_issue_keys(AccountState::InArrears).is_err());
        assert_eq!(refund_due_at(None, i64::MAX, i64::MAX), i64::MAX, "saturates");
        assert_eq!(refund_due_at(Some(5_000), 1_000, 10), 5_010, "after the newest credential");
        assert_eq!(refund_due_at(Some(500), 1_000, 10), 1_010, "or the request, if later");
        assert_eq!(recorded_refund_due_at(Some(7), 1_000, 10), 7, "the recorded time wins");
        assert_eq!(recorded_refund_due_at(None, 1_000, 10), 1_000 + 604_800_000 + 10, "a week's credential");
        assert_eq!(recorded_refund_due_at(None, i64::MAX, i64::MAX), i64::MAX, "saturates");
    }
}
