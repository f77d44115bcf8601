//! Charges: what a rider's day, as priced so far, still asks of the payment
//! gateway. Pure: the shell keeps the charges already written for a
//! rider-day and calls [`plan_charges`] each time the day's taps change or
//! an entry's exit window closes; what comes back is written, durably and
//! once, before anything is sent.
//!
//! - Each new ride is one charge, its id derived from the rider, the day and
//!   the ride's first tap, so pricing the same taps again (a replay of the
//!   log after a crash) derives the same id and the store refuses the copy.
//! - A ride is charged what its fare leaves room for under the day's total:
//!   a ride uploaded late into a capped day costs nothing more. An
//!   incomplete trip is charged its whole maximum fare on its own tap.
//! - When later taps change what earlier charges were worth (an exit
//!   arrives for an entry already charged the maximum fare; a late tap
//!   moves the cap), one *adjustment* charge, possibly negative (a credit),
//!   brings the day's charges to exactly the day's price. It carries the
//!   taps no other charge covers, so every tap is in exactly one charge.
//!
//! Whatever order the taps arrive in, once the day is complete its charges
//! add up to [`FareTable::price_day`](crate::fares::FareTable::price_day).

use std::collections::HashSet;

use chrono::NaiveDate;
use ring::digest;

use crate::clock::UnixMillis;
use crate::fares::{PricedDay, PricedRide};
use crate::money::Cents;
use crate::service_day::days_since_epoch;

/// A charge's id: also the payment gateway's idempotency key.
pub type ChargeId = [u8; 16];

/// What a charge is for. The names are the charges archive's `kind` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChargeKind {
    /// A ride at its fare, after the daily cap.
    Ride,
    /// An incomplete trip at the maximum fare, outside the cap.
    MaxFare,
    /// The difference between what a day's charges add up to and what the
    /// day now costs.
    Adjustment,
}

impl ChargeKind {
    /// Every kind, in declaration order.
    pub const ALL: [ChargeKind; 3] = [ChargeKind::Ride, ChargeKind::MaxFare, ChargeKind::Adjustment];

    /// Its name in the charges archive's `kind` column.
    pub fn as_str(self) -> &'static str {
        match self {
            ChargeKind::Ride => "ride",
            ChargeKind::MaxFare => "max_fare",
            ChargeKind::Adjustment => "adjustment",
        }
    }

    /// The kind whose [`as_str`](Self::as_str) is `name`; `None` for an unknown name.
    pub fn parse(name: &str) -> Option<ChargeKind> {
        ChargeKind::ALL.into_iter().find(|k| k.as_str() == name)
    }
}

/// What came of a charge. The names are the money store's and the charges
/// archive's `outcome` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ChargeOutcome {
    /// Not decided yet: waiting for its first or next attempt.
    Pending,
    /// The gateway took the debit or paid the credit.
    Succeeded,
    /// Final no from the gateway: a debit becomes arrears; a declined
    /// credit stays owed to the rider (the account's history says so).
    Declined,
    /// Its retry budget is spent; still retried, and reported.
    Failed,
    /// Zero: a ride under a reached daily cap. Never sent.
    NothingDue,
    /// The card has no account (a card the account API never issued, such
    /// as the simulator's): nobody to charge. Never sent; a person looks
    /// at these (docs/payment-gateway.md).
    NoAccount,
    /// A credit set against the card's arrears instead of paid out.
    Netted,
}

impl ChargeOutcome {
    /// Every outcome, in declaration order.
    pub const ALL: [ChargeOutcome; 7] = [
        ChargeOutcome::Pending,
        ChargeOutcome::Succeeded,
        ChargeOutcome::Declined,
        ChargeOutcome::Failed,
        ChargeOutcome::NothingDue,
        ChargeOutcome::NoAccount,
        ChargeOutcome::Netted,
    ];

    /// Its name in the money store's and the charges archive's `outcome` column.
    pub const fn as_str(self) -> &'static str {
        match self {
            ChargeOutcome::Pending => "pending",
            ChargeOutcome::Succeeded => "succeeded",
            ChargeOutcome::Declined => "declined",
            ChargeOutcome::Failed => "failed",
            ChargeOutcome::NothingDue => "nothing_due",
            ChargeOutcome::NoAccount => "no_account",
            ChargeOutcome::Netted => "netted",
        }
    }

    /// The outcome whose [`as_str`](Self::as_str) is `name`; `None` for an unknown name.
    pub fn parse(name: &str) -> Option<ChargeOutcome> {
        ChargeOutcome::ALL.into_iter().find(|o| o.as_str() == name)
    }

    /// Whether the charge is decided for good: it goes to the charges
    /// archive and is never sent again.
    pub fn is_final(self) -> bool {
        !matches!(self, ChargeOutcome::Pending | ChargeOutcome::Failed)
    }

    /// The outcome of a charge just planned: nothing to collect (a ride
    /// under a reached cap) is decided at once and never sent; anything
    /// else waits for its first attempt.
    pub fn when_planned(amount_cents: Cents) -> ChargeOutcome {
        if amount_cents.is_zero() { ChargeOutcome::NothingDue } else { ChargeOutcome::Pending }
    }
}

/// Who pays a rider-day's charges, as the money store knows the card when
/// a charge is about to go out for the first time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Payer {
    /// No account has this card.
    NoAccount,
    /// The card's account, what it owes now, and how much of that a
    /// payment still waiting for its answer may already have paid.
    Account {
        /// What the card owes now, in cents.
        arrears_cents: Cents,
        /// Arrears payments sent whose answer has not come (outcome unknown), in cents: they may
        /// already have paid this much of `arrears_cents`.
        arrears_payment_out_cents: Cents,
    },
}

/// What to do with a charge before its first request goes out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FirstSend {
    /// Send it.
    Send,
    /// Decide it `no_account`: nobody to send it to.
    NoAccount,
    /// A credit while the card owes: `netted` (negative) is set against
    /// the arrears and decided `netted`; `rest` (negative, or zero) still
    /// goes out as a credit of its own ([`rest_of`]). They add up to the
    /// credit.
    Net {
        /// The part set against the arrears, in cents (negative).
        netted: Cents,
        /// The part still sent as a credit, in cents (negative, or zero when the arrears take it all).
        rest: Cents,
    },
}

/// Decides [`FirstSend`] for a charge of `amount_cents` that was never
/// claimed (so never sent: a charge once sent may have been paid, and only
/// its gateway answer decides it; a card with no account never had an
/// agreement, so its charges were never sent whatever their claims). A
/// credit goes to the rider's arrears first: the rider is not paid while
/// owing. Only what a payment still out would leave owed is netted: that
/// payment was sized before the credit, and netting the whole would
/// collect the credit twice once it succeeds (a payment that then fails
/// leaves the rider owing, as any decline does).
pub fn first_send(amount_cents: Cents, payer: Payer) -> FirstSend {
    match payer {
        Payer::NoAccount => FirstSend::NoAccount,
        Payer::Account { arrears_cents, arrears_payment_out_cents }
            if amount_cents.is_negative()
                && (arrears_cents - arrears_payment_out_cents.max(Cents::ZERO)).is_positive() =>
        {
            let nettable = arrears_cents - arrears_payment_out_cents.max(Cents::ZERO);
            let netted = amount_cents.max(-nettable);
            let rest = amount_cents - netted;
            debug_assert!(netted.is_negative() && !rest.is_positive() && netted + rest == amount_cents);
            FirstSend::Net { netted, rest }
        }
        Payer::Account { .. } => FirstSend::Send,
    }
}

/// The id of what is left of a credit after part of it was netted: derived
/// from the credit's own id, so it is the same however often the split is
/// tried.
pub fn rest_of(day: RiderDay, credit: &ChargeId) -> ChargeId {
    charge_id(day, ChargeKind::Adjustment, &[b"rest-of".as_slice(), credit].concat())
}

/// The outcomes that are not [`final`](ChargeOutcome::is_final), as an SQL
/// list for `outcome IN …` in the money store's queries (a test holds the
/// two together).
pub const UNDECIDED_OUTCOMES_SQL: &str = "('pending', 'failed')";

/// A charge as it is kept: what it prices and what came of it. The outbox
/// reads its rows into this, and the charges archive writes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChargeRecord {
    /// Derived from the rider, the day and what it prices; the gateway's idempotency key.
    pub charge_id: ChargeId,
    /// The rider's card.
    pub card_id: u64,
    /// The service day of the rides it prices (the charges archive's partition).
    pub service_date: NaiveDate,
    /// What it is for, as it was when the charge was made.
    pub kind: ChargeKind,
    /// Negative for a credit (an adjustment that lowered the day's price).
    pub amount_cents: Cents,
    /// ISO 4217 code of `amount_cents`, e.g. "CNY".
    pub currency: String,
    /// The scans it prices, all of its own service day; each tap is in exactly one charge.
    pub scan_ids: Vec<[u8; 16]>,
    /// What came of it so far.
    pub outcome: ChargeOutcome,
    /// Requests made to the payment gateway so far.
    pub attempts: u32,
    /// When it was priced (Unix ms).
    pub created_at: UnixMillis,
    /// When its outcome came (Unix ms); `None` while undecided.
    pub decided_at: Option<UnixMillis>,
    /// The payment gateway's transaction id, once it succeeded.
    pub gateway_txn_id: Option<String>,
}

/// One rider's service day: the unit that is priced and capped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RiderDay {
    /// The rider's card.
    pub card_id: u64,
    /// The service day, which runs past midnight to the configured start hour, not the calendar date.
    pub service_date: NaiveDate,
}

/// A charge of the day, already written or about to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Charge {
    /// Derived from the rider-day, the kind and the ride's first tap (or the adjustment's number),
    /// so pricing the same taps again derives the same id; the gateway's idempotency key.
    pub id: ChargeId,
    /// What it is for; never rewritten once the charge may have been sent.
    pub kind: ChargeKind,
    /// The first tap of the ride it prices; `None` for an adjustment.
    pub ride_key: Option<[u8; 16]>,
    /// In cents; negative only for an adjustment that credits the rider.
    pub amount_cents: Cents,
    /// The taps this charge prices: each tap of the day is in exactly one.
    pub scan_ids: Vec<[u8; 16]>,
}

/// The charges that bring `issued` (every charge already written for the
/// day) to what `priced` says the day costs.
pub fn plan_charges(day: RiderDay, priced: &PricedDay, issued: &[Charge]) -> Vec<Charge> {
    let total = priced.charged;
    let keys: HashSet<[u8; 16]> = issued.iter().filter_map(|c| c.ride_key).collect();
    let is_new = |ride: &&PricedRide| ride.scan_ids.first().is_some_and(|key| !keys.contains(key));
    // An incomplete trip is charged its whole maximum fare on its own tap,
    // whatever was charged before it arrived (it is outside the cap, so it
    // takes nothing from another ride): the tap the rider left open carries
    // the blame. What earlier charges over-asked goes back in the
    // adjustment below.
    let new_max_fares = priced.rides.iter().filter(is_new).filter(|r| !r.kind.capped());
    let mut charged: Cents = issued.iter().map(|c| c.amount_cents).chain(new_max_fares.map(|r| r.charged)).sum();
    let mut covered: HashSet<[u8; 16]> = issued.iter().flat_map(|c| c.scan_ids.iter().copied()).collect();
    let mut planned = Vec::new();
    for ride in priced.rides.iter().filter(is_new) {
        let Some(&key) = ride.scan_ids.first() else { continue };
        let (kind, amount) = if ride.kind.capped() {
            let room = (total - charged).max(Cents::ZERO);
            let amount = ride.charged.min(room);
            charged += amount;
            (ChargeKind::Ride, amount)
        } else {
            (ChargeKind::MaxFare, ride.charged)
        };
        // A tap an earlier charge priced (an exit charged alone before its
        // entry arrived) stays with that charge.
        let scan_ids = ride.scan_ids.iter().copied().filter(|id| covered.insert(*id)).collect();
        planned.push(Charge {
            id: charge_id(day, kind, &key),
            kind,
            ride_key: Some(key),
            amount_cents: amount,
            scan_ids,
        });
    }
    let uncovered: Vec<[u8; 16]> =
        priced.rides.iter().flat_map(|r| &r.scan_ids).filter(|id| !covered.contains(*id)).copied().collect();
    if charged != total || !uncovered.is_empty() {
        let sequence = issued.iter().filter(|c| c.kind == ChargeKind::Adjustment).count() as u64;
        planned.push(Charge {
            id: charge_id(day, ChargeKind::Adjustment, &sequence.to_be_bytes()),
            kind: ChargeKind::Adjustment,
            ride_key: None,
            amount_cents: total - charged,
            scan_ids: uncovered,
        });
    }
    assert_charges_cover_the_day(priced, issued, &planned, (total, charged));
    planned
}

/// The pair `plan_charges` promises, checked where it is made: every
/// priced tap is in exactly one charge, and the day's charges add up to
/// its price (unless the amounts were so far out of range that adding
/// them saturated, which fares bounded by the config never are).
fn assert_charges_cover_the_day(
    priced: &PricedDay,
    issued: &[Charge],
    planned: &[Charge],
    (total, charged): (Cents, Cents),
) {
    let mut covered = HashSet::new();
    for id in issued.iter().chain(planned).flat_map(|c| &c.scan_ids) {
        let first = covered.insert(*id);
        assert!(first || !planned.iter().any(|c| c.scan_ids.contains(id)), "a planned charge repeats tap {id:02x?}");
    }
    for id in priced.rides.iter().flat_map(|r| &r.scan_ids) {
        assert!(covered.contains(id), "tap {id:02x?} is in no charge");
    }
    let sum = issued.iter().chain(planned).try_fold(Cents::ZERO, |sum, c| sum.checked_add(c.amount_cents));
    if let (Some(sum), Some(_)) = (sum, total.checked_sub(charged)) {
        assert_eq!(sum, total, "the day's charges add up to {sum}, its price to {total}");
    }
}

/// SHA-256 over the rider-day, the kind and what is charged; the first 16
/// bytes. Fields are fixed-width or length-prefixed, so no two charges
/// share an encoding.
pub fn charge_id(day: RiderDay, kind: ChargeKind, what: &[u8]) -> ChargeId {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(b"farestream.charge.v1");
    ctx.update(&day.card_id.to_be_bytes());
    ctx.update(&days_since_epoch(day.service_date).to_be_bytes());
    for field in [kind.as_str().as_bytes(), what] {
        ctx.update(&(field.len() as u64).to_be_bytes());
        ctx.update(field);
    }
    let mut id = [0u8; 16];
    id.copy_from_slice(&ctx.finish().as_ref()[..16]);
    id
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_undecided_sql_list_names_exactly_the_outcomes_that_are_not_final() {
        let named: Vec<&str> =
            UNDECIDED_OUTCOMES_SQL.trim_matches(['(', ')']).split(", ").map(|n| n.trim_matches('\'')).collect();
        let undecided: Vec<&str> = ChargeOutcome::ALL.iter().filter(|o| !o.is_final()).map(|o| o.as_str()).collect();
        assert_eq!(named, undecided);
    }

    #[test]
    fn outcomes_read_back_from_their_names() {
        for outcome in ChargeOutcome::ALL {
            assert_eq!(ChargeOutcome::parse(outcome.as_str()), Some(outcome));
        }
        let names: HashSet<&str> = ChargeOutcome::ALL.iter().map(|o| o.as_str()).collect();
        assert_eq!(names.len(), ChargeOutcome::ALL.len(), "one name each");
        assert_eq!(ChargeOutcome::parse(""), None);
        assert!(!ChargeOutcome::Failed.is_final() && ChargeOutcome::Netted.is_final());
    }

    /// A card that owes `arrears_cents` with a payment of `out_cents` out.
    fn paying(arrears_cents: i64, out_cents: i64) -> Payer {
        Payer::Account { arrears_cents: Cents::new(arrears_cents), arrears_payment_out_cents: Cents::new(out_cents) }
    }

    fn net(netted: i64, rest: i64) -> FirstSend {
        FirstSend::Net { netted: Cents::new(netted), rest: Cents::new(rest) }
    }

    #[test]
    fn a_credit_goes_to_the_arrears_first() {
        let c = Cents::new;
        let owes = |arrears: i64| paying(arrears, 0);
        assert_eq!(first_send(c(-300), owes(500)), net(-300, 0));
        assert_eq!(first_send(c(-600), owes(500)), net(-500, -100));
        assert_eq!(first_send(c(-600), owes(0)), FirstSend::Send);
        assert_eq!(first_send(c(300), owes(500)), FirstSend::Send, "a debit is never netted");
        assert_eq!(first_send(c(300), Payer::NoAccount), FirstSend::NoAccount);
        assert_eq!(first_send(c(-300), Payer::NoAccount), FirstSend::NoAccount);
        let paying_all = paying(500, 500);
        assert_eq!(first_send(c(-300), paying_all), FirstSend::Send, "the payment out may have paid it all");
        let paying_some = paying(800, 500);
        assert_eq!(first_send(c(-400), paying_some), net(-300, -100));
        assert_eq!(first_send(c(300), paying_some), FirstSend::Send);
        assert_eq!(first_send(c(i64::MIN), owes(i64::MAX)), net(-i64::MAX, -1));
        let day = RiderDay { card_id: 7, service_date: NaiveDate::from_ymd_opt(2026, 3, 2).unwrap() };
        let credit = charge_id(day, ChargeKind::Adjustment, &0u64.to_be_bytes());
        assert_eq!(rest_of(day, &credit), rest_of(day, &credit));
        assert_ne!(rest_of(day, &credit), credit);
    }

    proptest::proptest! {
        #[test]
        fn netting_never_pays_a_rider_who_owes_and_keeps_the_amount(
            amount in proptest::prelude::any::<i64>(),
            arrears in 0i64..=i64::MAX,
            out in 0i64..=i64::MAX,
        ) {
            let owed_after_payment = arrears.saturating_sub(out).max(0);
            match first_send(Cents::new(amount), paying(arrears, out)) {
                FirstSend::Net { netted, rest } => {
                    let (netted, rest) = (netted.get(), rest.get());
                    proptest::prop_assert!(amount < 0 && owed_after_payment > 0);
                    proptest::prop_assert_eq!(netted + rest, amount);
                    proptest::prop_assert!(netted < 0 && -netted <= owed_after_payment && rest <= 0);
                    proptest::prop_assert!(rest == 0 || -netted == owed_after_payment, "the rest is paid only once nothing is owed");
                }
                FirstSend::Send => proptest::prop_assert!(amount >= 0 || owed_after_payment == 0),
                FirstSend::NoAccount => proptest::prop_assert!(false),
            }
        }
    }

    use std::collections::BTreeMap;

    use super::*;
    use crate::fares::{DayEdges, FareTable, Tap};
    use crate::scan::TapKind;

    const MINUTE: i64 = 60_000;
    const WINDOW: i64 = 180 * MINUTE;

    fn table() -> FareTable {
        FareTable {
            currency: "CNY".into(),
            bus_route_fares: BTreeMap::new(),
            bus_default_fare: Some(Cents::new(200)),
            metro_station_zones: [("a".to_string(), 1), ("c".to_string(), 3)].into(),
            metro_base_fare: Cents::new(300),
            metro_fare_per_zone: Cents::new(100),
            max_fare: Cents::new(900),
            metro_exit_window_ms: WINDOW,
            daily_cap: Cents::new(1_000),
        }
    }

    fn day() -> RiderDay {
        RiderDay { card_id: 7, service_date: NaiveDate::from_ymd_opt(2026, 11, 26).expect("date") }
    }

    fn tap(n: u8, minute: i64, kind: TapKind, stop: &str) -> Tap {
        Tap { scan_id: [n; 16], scanned_at: minute * MINUTE, kind, route_id: "r".into(), stop_id: stop.into() }
    }

    /// What the shell does: price what is known at `now`, write the plan.
    fn pass(known: &[Tap], now: UnixMillis, issued: &mut Vec<Charge>) -> Vec<Charge> {
        let planned = plan_charges(day(), &table().price_day_as_of(known, &DayEdges::NONE, now), issued);
        issued.extend(planned.iter().cloned());
        planned
    }

    /// Each charge's kind and amount, in cents.
    fn amounts(charges: &[Charge]) -> Vec<(ChargeKind, i64)> {
        charges.iter().map(|c| (c.kind, c.amount_cents.get())).collect()
    }

    #[test]
    fn pricing_the_same_taps_again_plans_nothing() {
        let taps = [tap(1, 0, TapKind::Single, "x"), tap(2, 5, TapKind::Single, "y")];
        let mut issued = Vec::new();
        assert_eq!(amounts(&pass(&taps, 10 * MINUTE, &mut issued)), [(ChargeKind::Ride, 200), (ChargeKind::Ride, 200)]);
        assert!(pass(&taps, 20 * MINUTE, &mut issued).is_empty());
        assert_ne!(issued[0].id, issued[1].id);
    }

    #[test]
    fn an_entry_is_charged_when_its_exit_comes_or_its_window_closes() {
        let entry = tap(1, 0, TapKind::Entry, "a");
        let mut issued = Vec::new();
        assert!(pass(std::slice::from_ref(&entry), WINDOW, &mut issued).is_empty(), "the exit may still come");
        let charged = pass(std::slice::from_ref(&entry), WINDOW + 1, &mut issued);
        assert_eq!(amounts(&charged), [(ChargeKind::MaxFare, 900)]);
        // The exit was uploaded late: the trip costs 500, so 400 comes back.
        let exit = tap(2, 30, TapKind::Exit, "c");
        let corrected = pass(&[entry, exit], 10 * WINDOW, &mut issued);
        assert_eq!(amounts(&corrected), [(ChargeKind::Adjustment, -400)]);
        assert_eq!(corrected[0].scan_ids, vec![[2; 16]], "the exit is priced by the adjustment");
    }

    #[test]
    fn an_incomplete_trip_carries_its_own_maximum_fare_whatever_came_first() {
        // The rider entered at 0 and never tapped out, then rode 10 to 30.
        // The exit's validator uploaded first: alone, it was an exit with
        // no entry, charged the maximum fare.
        let (open, entry, exit) =
            (tap(1, 0, TapKind::Entry, "a"), tap(2, 10, TapKind::Entry, "a"), tap(3, 30, TapKind::Exit, "c"));
        let mut issued = Vec::new();
        assert_eq!(amounts(&pass(std::slice::from_ref(&exit), 40 * MINUTE, &mut issued)), [(ChargeKind::MaxFare, 900)]);
        let later = pass(&[open, entry, exit], 10 * WINDOW, &mut issued);
        // The entry left open pays the maximum fare, not the trip's exit;
        // the exit's maximum fare comes back less the trip's 500.
        assert_eq!(
            amounts(&later),
            [(ChargeKind::MaxFare, 900), (ChargeKind::Ride, 0), (ChargeKind::Adjustment, -400)]
        );
        assert_eq!((later[0].scan_ids.clone(), later[1].scan_ids.clone()), (vec![[1; 16]], vec![[2; 16]]));
        assert_eq!(issued.iter().map(|c| c.amount_cents).sum::<Cents>(), Cents::new(900 + 500));
    }

    #[test]
    fn a_late_ride_into_a_capped_day_costs_nothing_more() {
        let later: Vec<Tap> = (0..5).map(|n| tap(n + 10, 60 + i64::from(n), TapKind::Single, "x")).collect();
        let mut issued = Vec::new();
        let first = pass(&later, 100 * MINUTE, &mut issued);
        assert_eq!(first.iter().map(|c| c.amount_cents.get()).collect::<Vec<_>>(), [200, 200, 200, 200, 200]);
        let mut all = later.clone();
        all.push(tap(1, 0, TapKind::Single, "x"));
        assert_eq!(amounts(&pass(&all, 100 * MINUTE, &mut issued)), [(ChargeKind::Ride, 0)]);
    }

    /// The pricer's shell over two service days split at minute 1 440.
    #[derive(Default)]
    struct TwoDays {
        taps: [Vec<Tap>; 2],
        issued: [Vec<Charge>; 2],
        open_closes_at: [Option<UnixMillis>; 2],
    }

    impl TwoDays {
        fn day_of(tap: &Tap) -> usize {
            usize::from(tap.scanned_at >= 1_440 * MINUTE)
        }

        fn knows(&self, tap: &Tap) -> bool {
            self.taps[Self::day_of(tap)].iter().any(|t| t.scan_id == tap.scan_id)
        }

        fn edges(&self, d: usize) -> DayEdges {
            match d {
                0 => DayEdges::between(&[], &self.taps[1]),
                _ => DayEdges::between(&self.taps[0], &[]),
            }
        }

        fn pass(&mut self, new: Vec<Tap>, now: UnixMillis) {
            let mut days = [false; 2];
            for tap in &new {
                self.taps[Self::day_of(tap)].push(tap.clone());
            }
            for tap in &new {
                let d = Self::day_of(tap);
                days[d] = true;
                let (before, after) = table().neighbours_touched(tap, &self.edges(d));
                if before && d == 1 {
                    days[0] = true;
                }
                if after && d == 0 {
                    days[1] = true;
                }
            }
            for (d, touched) in days.into_iter().enumerate() {
                if touched || self.open_closes_at[d].is_some_and(|closes| closes <= now) {
                    self.reprice(d, now);
                }
            }
        }

        fn reprice(&mut self, d: usize, now: UnixMillis) {
            let t = table();
            let priced = t.price_day_as_of(&self.taps[d], &self.edges(d), now);
            let rider_day = RiderDay { card_id: 7, service_date: day().service_date + chrono::Days::new(d as u64) };
            let planned = plan_charges(rider_day, &priced, &self.issued[d]);
            self.issued[d].extend(planned);
            self.open_closes_at[d] = priced
                .open_entry
                .and_then(|id| self.taps[d].iter().find(|t| t.scan_id == id))
                .map(|e| e.scanned_at + WINDOW + 1);
        }
    }

    /// A reference written apart from `price_day`: one stream of taps in
    /// order, an entry open until an exit in its window ends it (bus taps
    /// between do not), each ride on the day it began, the cap per day.
    fn continuous_price(t: &FareTable, taps: &[Tap]) -> Cents {
        let mut under_cap = [Cents::ZERO; 2];
        let mut outside_cap = [Cents::ZERO; 2];
        let (bus, max_fare) = (Cents::new(200), Cents::new(900));
        let zone = |stop: &str| t.metro_station_zones.get(stop).copied();
        let mut open: Option<&Tap> = None;
        for tap in taps {
            if let Some(entry) = open.filter(|e| tap.scanned_at - e.scanned_at > WINDOW) {
                outside_cap[TwoDays::day_of(entry)] += max_fare;
                open = None;
            }
            let d = TwoDays::day_of(tap);
            match tap.kind {
                TapKind::Single => under_cap[d] += bus,
                TapKind::Entry => {
                    if let Some(earlier) = open.replace(tap) {
                        outside_cap[TwoDays::day_of(earlier)] += max_fare;
                    }
                }
                TapKind::Exit => match open.take() {
                    Some(entry) => {
                        under_cap[TwoDays::day_of(entry)] += match (zone(&entry.stop_id), zone(&tap.stop_id)) {
                            (Some(a), Some(b)) => Cents::new(300) + Cents::new(100).times(u64::from(a.abs_diff(b))),
                            _ => max_fare,
                        }
                    }
                    None => outside_cap[d] += max_fare,
                },
            }
        }
        if let Some(entry) = open {
            outside_cap[TwoDays::day_of(entry)] += max_fare;
        }
        (0..2).map(|d| under_cap[d].min(t.daily_cap) + outside_cap[d]).sum()
    }

    /// The properties' input: taps from (minute, kind, stop) triples, the
    /// order they arrive in, and the times of the pricing passes, sorted.
    #[allow(clippy::type_complexity)]
    fn generated(taps: &[(i64, u8, usize)], order: &[u64], passes: &[i64]) -> (Vec<Tap>, Vec<(u64, Tap)>, Vec<i64>) {
        let kinds = [TapKind::Entry, TapKind::Exit, TapKind::Single];
        let stops = ["a", "c", "nowhere"];
        let taps: Vec<Tap> = taps
            .iter()
            .enumerate()
            .map(|(i, &(minute, kind, stop))| tap(i as u8, minute, kinds[usize::from(kind)], stops[stop]))
            .collect();
        let mut arrival: Vec<(u64, Tap)> =
            taps.iter().cloned().zip(order.iter().copied()).map(|(t, o)| (o, t)).collect();
        arrival.sort_by_key(|(o, t)| (*o, t.scan_id));
        let mut now_times: Vec<i64> = passes.iter().map(|m| m * MINUTE).collect();
        now_times.sort_unstable();
        (taps, arrival, now_times)
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 256, ..Default::default() })]

        /// However the day's taps arrive, in however many passes, its
        /// charges end at exactly the day's price, each tap in exactly one
        /// charge, no id twice.
        #[test]
        fn any_arrival_order_charges_exactly_the_days_price(
            taps in proptest::collection::vec((0i64..1_440, 0u8..3, 0usize..3), 0..20),
            order in proptest::collection::vec(proptest::prelude::any::<u64>(), 20),
            passes in proptest::collection::vec(0i64..1_700, 0..6),
        ) {
            let (taps, arrival, now_times) = generated(&taps, &order, &passes);
            let mut issued = Vec::new();
            for (n, now) in now_times.iter().enumerate() {
                let known = arrival.len() * (n + 1) / (now_times.len() + 1);
                let known: Vec<Tap> = arrival[..known].iter().map(|(_, t)| t.clone()).collect();
                pass(&known, *now, &mut issued);
            }
            pass(&taps, UnixMillis::MAX, &mut issued);
            let total: Cents = issued.iter().map(|c| c.amount_cents).sum();
            proptest::prop_assert_eq!(total, table().price_day(&taps, &DayEdges::NONE).charged);
            let mut priced: Vec<[u8; 16]> = issued.iter().flat_map(|c| c.scan_ids.clone()).collect();
            priced.sort_unstable();
            let mut every: Vec<[u8; 16]> = taps.iter().map(|t| t.scan_id).collect();
            every.sort_unstable();
            proptest::prop_assert_eq!(priced, every, "each tap in exactly one charge");
            let ids: HashSet<ChargeId> = issued.iter().map(|c| c.id).collect();
            proptest::prop_assert_eq!(ids.len(), issued.len());
            let mut max_fares = issued.iter().filter(|c| c.kind == ChargeKind::MaxFare);
            proptest::prop_assert!(max_fares.all(|c| c.amount_cents == Cents::new(900)), "a maximum fare is whole: {:?}", amounts(&issued));
        }

        /// The same across the service-day boundary, the way the pricer
        /// does it: each pass adds the taps that arrived, prices their days
        /// and the neighbours those taps touch, and the days whose open
        /// entry's window has closed. Whatever the order, the two days'
        /// charges end at exactly their final prices, a trip across the
        /// boundary costs one fare, and each tap is in exactly one charge of
        /// its own day.
        #[test]
        fn any_arrival_order_across_the_boundary_charges_each_day_exactly(
            taps in proptest::collection::vec((1_200i64..1_680, 0u8..3, 0usize..3), 0..16),
            order in proptest::collection::vec(proptest::prelude::any::<u64>(), 16),
            passes in proptest::collection::vec(1_200i64..2_000, 0..6),
        ) {
            let (taps, arrival, mut now_times) = generated(&taps, &order, &passes);
            now_times.push(UnixMillis::MAX);
            let mut shell = TwoDays::default();
            for (n, now) in now_times.iter().enumerate() {
                let known = if *now == UnixMillis::MAX { arrival.len() } else { arrival.len() * (n + 1) / now_times.len() };
                let new: Vec<Tap> = arrival[..known].iter().map(|(_, t)| t.clone()).filter(|t| !shell.knows(t)).collect();
                shell.pass(new, *now);
            }
            let t = table();
            let mut total = Cents::ZERO;
            for d in 0..2 {
                let final_price = t.price_day(&shell.taps[d], &shell.edges(d)).charged;
                let charged: Cents = shell.issued[d].iter().map(|c| c.amount_cents).sum();
                proptest::prop_assert_eq!(charged, final_price, "day {}", d);
                total += charged;
                let mut listed: Vec<[u8; 16]> = shell.issued[d].iter().flat_map(|c| c.scan_ids.clone()).collect();
                listed.sort_unstable();
                let mut own: Vec<[u8; 16]> = shell.taps[d].iter().map(|t| t.scan_id).collect();
                own.sort_unstable();
                proptest::prop_assert_eq!(listed, own, "each tap in exactly one charge of its day");
                let mut max_fares = shell.issued[d].iter().filter(|c| c.kind == ChargeKind::MaxFare);
                proptest::prop_assert!(max_fares.all(|c| c.amount_cents == Cents::new(900)), "a maximum fare is whole");
            }
            // As one continuous stream (each ride on the day it began, the
            // cap per day), which is what a trip across the boundary costs.
            let mut all = taps.clone();
            all.sort_by_key(Tap::price_order);
            let continuous = continuous_price(&t, &all);
            proptest::prop_assert_eq!(total, continuous);
        }
    }
}
