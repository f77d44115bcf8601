//! Money: an amount in the currency's minor unit, called *cents*
//! everywhere (code, config, columns, the API) whatever the currency
//! calls it (fen for the shipped table's CNY). Signed: a credit, an
//! adjustment that lowers a day's price, is negative.
//!
//! Arithmetic saturates instead of overflowing. No amount this system
//! handles comes near `i64::MAX` cents (the config bounds every fare, a day
//! prices a bounded number of taps), so a saturated sum only ever comes
//! from hostile input, and there it must not panic; the settlement's
//! checks (the day's charges add up to its price) then report it.

use std::fmt;
use std::iter::Sum;
use std::ops::{Add, AddAssign, Neg, Sub, SubAssign};

/// An amount of money in the currency's minor unit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cents(i64);

impl Cents {
    /// Nothing.
    pub const ZERO: Cents = Cents(0);
    /// The most there is; a price no cap limits.
    pub const MAX: Cents = Cents(i64::MAX);
    /// The least there is (only ever met in tests at the extremes).
    pub const MIN: Cents = Cents(i64::MIN);

    /// `cents` of the minor unit.
    pub const fn new(cents: i64) -> Cents {
        Cents(cents)
    }

    /// An unsigned amount (a fare from the config, a gateway's amount),
    /// saturating at [`Cents::MAX`].
    pub fn from_unsigned(cents: u64) -> Cents {
        Cents(i64::try_from(cents).unwrap_or(i64::MAX))
    }

    /// The number of cents: for a column, a message or a JSON body.
    pub const fn get(self) -> i64 {
        self.0
    }

    /// The amount without its sign, as the payment gateway is sent it.
    pub const fn unsigned_abs(self) -> u64 {
        self.0.unsigned_abs()
    }

    /// Whether it is a credit.
    pub const fn is_negative(self) -> bool {
        self.0 < 0
    }

    /// Whether it is more than nothing.
    pub const fn is_positive(self) -> bool {
        self.0 > 0
    }

    /// The sum, or `None` past the range (for an assertion that must not
    /// mistake a saturated sum for a real one).
    pub fn checked_add(self, other: Cents) -> Option<Cents> {
        self.0.checked_add(other.0).map(Cents)
    }

    /// The difference, or `None` past the range.
    pub fn checked_sub(self, other: Cents) -> Option<Cents> {
        self.0.checked_sub(other.0).map(Cents)
    }

    /// Whether it is nothing.
    pub const fn is_zero(self) -> bool {
        self.0 == 0
    }

    /// `count` times this amount (fare per zone times zones crossed).
    pub fn times(self, count: u64) -> Cents {
        Cents(self.0.saturating_mul(i64::try_from(count).unwrap_or(i64::MAX)))
    }
}

impl Add for Cents {
    type Output = Cents;
    fn add(self, other: Cents) -> Cents {
        Cents(self.0.saturating_add(other.0))
    }
}

impl Sub for Cents {
    type Output = Cents;
    fn sub(self, other: Cents) -> Cents {
        Cents(self.0.saturating_sub(other.0))
    }
}

impl Neg for Cents {
    type Output = Cents;
    fn neg(self) -> Cents {
        Cents(self.0.saturating_neg())
    }
}

impl AddAssign for Cents {
    fn add_assign(&mut self, other: Cents) {
        *self = *self + other;
    }
}

impl SubAssign for Cents {
    fn sub_assign(&mut self, other: Cents) {
        *self = *self - other;
    }
}

impl Sum for Cents {
    fn sum<I: Iterator<Item = Cents>>(amounts: I) -> Cents {
        amounts.fold(Cents::ZERO, Add::add)
    }
}

impl<'a> Sum<&'a Cents> for Cents {
    fn sum<I: Iterator<Item = &'a Cents>>(amounts: I) -> Cents {
        amounts.copied().sum()
    }
}

/// For people to read: `-1234567` cents is `-12 345.67`, the minor unit
/// being a hundredth.
impl fmt::Display for Cents {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.0 < 0 { "-" } else { "" };
        let abs = self.0.unsigned_abs();
        f.pad(&format!("{sign}{}.{:02}", group_digits(abs / 100), abs % 100))
    }
}

/// A count for people to read: `1234567` is `1 234 567`.
pub fn group_digits(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(' ');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_print_with_two_decimals_and_grouped_units_at_their_extremes() {
        assert_eq!(Cents::new(-1_234_567).to_string(), "-12 345.67");
        assert_eq!(Cents::ZERO.to_string(), "0.00");
        assert_eq!(Cents::new(5).to_string(), "0.05");
        assert_eq!(format!("{:>8}", Cents::new(5)), "    0.05", "a width pads it, as a report column needs");
        assert_eq!(Cents::new(-50).to_string(), "-0.50");
        assert_eq!(Cents::new(123_456_789).to_string(), "1 234 567.89");
        assert_eq!(Cents::new(-100_000).to_string(), "-1 000.00");
        assert_eq!(Cents::MAX.to_string(), "92 233 720 368 547 758.07");
        assert_eq!(Cents::MIN.to_string(), "-92 233 720 368 547 758.08");
        assert_eq!(group_digits(0), "0");
        assert_eq!((group_digits(999), group_digits(1_000)), ("999".into(), "1 000".into()));
        assert_eq!(group_digits(u64::MAX), "18 446 744 073 709 551 615");
    }

    #[test]
    fn arithmetic_saturates_instead_of_panicking() {
        assert_eq!(Cents::MAX + Cents::new(1), Cents::MAX);
        assert_eq!(Cents::MIN - Cents::new(1), Cents::MIN);
        assert_eq!(-Cents::MIN, Cents::MAX);
        assert_eq!([Cents::MAX, Cents::MAX].iter().sum::<Cents>(), Cents::MAX);
        assert_eq!(Cents::new(300).times(u64::MAX), Cents::MAX);
        assert_eq!(Cents::new(-300).times(u64::MAX), Cents::MIN);
        assert_eq!(Cents::from_unsigned(u64::MAX), Cents::MAX);
        assert_eq!(Cents::new(-5).unsigned_abs(), 5);
        assert_eq!(Cents::MIN.unsigned_abs(), 1u64 << 63);
    }
}
